"""The frontend's body parser: jiter where it can, and exactly json.loads's result and errors everywhere."""

from __future__ import annotations

import json

import pydantic_core
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from client.frontend.jsonbody import JSONRoute, loads

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_same_value_as_json_loads(value, ensure_ascii) -> None:
    body = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    assert repr(loads(body)) == repr(json.loads(body))


@pytest.mark.parametrize("body", [
    b'{"a":1,"a":2}', b'{"n": 123456789012345678901234567890}', b'{"f": 1e400}', b'{"f": NaN}', b'[-Infinity]',
    b'{"s": "\\ud800"}', b"[" * 300 + b"]" * 300, b'\xef\xbb\xbf{"a":1}', b'{"f": -0.0}', b' {"a":1}\n'],
    ids=["duplicate-key", "big-int", "overflow", "nan", "-inf", "lone-surrogate", "deep", "bom", "-0.0", "spaces"])
def test_what_only_the_standard_library_accepts_is_still_accepted(body) -> None:
    assert repr(loads(body)) == repr(json.loads(body))


@pytest.mark.parametrize("body", [b'{"a":1} x', b'"\xff"', b"{", b""])
def test_errors_are_the_standard_library_errors(body) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(body)
    with pytest.raises(type(expected.value)):
        loads(body)


class Body(BaseModel):
    x: int


def test_fastapi_routes_parse_with_it_and_map_errors_as_before(monkeypatch) -> None:
    parsed = []
    monkeypatch.setattr(pydantic_core, "from_json", lambda body, _parse=pydantic_core.from_json: parsed.append(body)
                        or _parse(body))
    app, fast_routes, seen = FastAPI(), APIRouter(route_class=JSONRoute), []

    @app.post("/plain")
    async def plain(body: Body) -> dict:
        return {"x": body.x}

    @fast_routes.post("/fast")
    async def fast(body: Body) -> dict:
        seen.append(body.x)
        return {"x": body.x}

    app.include_router(fast_routes)
    client = TestClient(app)
    for path in ("/plain", "/fast"):
        assert client.post(path, content=b'{"x": 3}', headers={"content-type": "application/json"}).json() == {"x": 3}
    assert seen == [3] and parsed == [b'{"x": 3}']  # the plain route parsed with json.loads
    bad = {path: client.post(path, content=b'{"x": 3', headers={"content-type": "application/json"})
           for path in ("/plain", "/fast")}
    assert bad["/fast"].status_code == bad["/plain"].status_code == 422
    assert bad["/fast"].json() == bad["/plain"].json()

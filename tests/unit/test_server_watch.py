"""The shutdown watch: where Triton's readiness URL is, and when a drain is started."""

import http.server
import threading

import pytest

from backend.server_watch import ServerWatch, probe, ready_url_from_argv


@pytest.mark.parametrize("argv, url", [
    (["tritonserver", "--model-repository", "m"], "http://127.0.0.1:8000/v2/health/ready"),
    (["/opt/bin/tritonserver", "--http-port=9100"], "http://127.0.0.1:9100/v2/health/ready"),
    (["tritonserver", "--http-port", "9101", "--http-address", "10.0.0.5"],
     "http://10.0.0.5:9101/v2/health/ready"),
    (["tritonserver", "--http-address=::1"], "http://[::1]:8000/v2/health/ready"),
    (["tritonserver", "--allow-http=false"], None),
    (["tritonserver", "--allow-http", "0", "--http-port=1"], None),
])
def test_ready_url_from_tritonserver_options(argv, url):
    assert ready_url_from_argv(argv) == url


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_probe_reads_ready_not_ready_and_gone():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v2/health/ready"
    _Health.status = 200
    assert probe(url) is True
    _Health.status = 400  # Triton's answer while not ready
    assert probe(url) is False
    server.shutdown()
    server.server_close()
    assert probe(url) is False  # nothing listens any more


def _run_watch(answers):
    calls = []
    stopped = threading.Event()
    replies = iter(answers)
    watch = ServerWatch("http://x", lambda: (calls.append(1), stopped.set()), interval_s=0.001,
                        probe_fn=lambda _: next(replies, None))
    watch.start()
    stopped.wait(2)
    watch.close()
    return calls


def test_watch_reports_a_ready_to_not_ready_change_once():
    assert _run_watch([True, None, True, False, False]) == [1]


def test_watch_ignores_not_ready_before_the_server_was_ready():
    # Loading: not ready, then unclear answers; never ready, so no drain.
    assert _run_watch([False, False, None, None]) == []


def test_watch_counts_an_unreachable_endpoint_as_stopping_once_requests_were_served():
    # Triton 2.51 closes its HTTP endpoint at once on SIGTERM: a stop can come before any "ready".
    calls = []
    stopped = threading.Event()
    served = threading.Event()
    replies = iter([False, False, None, False])

    def probe_fn(_):
        reply = next(replies, False)
        if reply is None:
            served.set()  # a request arrives between two polls
        return reply

    watch = ServerWatch("http://x", lambda: (calls.append(1), stopped.set()), interval_s=0.001,
                        served=served.is_set, probe_fn=probe_fn)
    watch.start()
    assert stopped.wait(2)
    watch.close()
    assert calls == [1]

"""`python -m client.frontend --triton-url localhost:8001 --port 9000`: serve the OpenAI-compatible API."""

from __future__ import annotations

import logging

import uvicorn

from client.frontend.app import create_app
from client.frontend.config import parse_args


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run uvicorn until interrupted."""
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()

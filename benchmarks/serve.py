"""Run the websocket server under test: ``python serve.py moi|original PORT``.

Both mount a websocket at ``/moi-ws/`` speaking moi's protocol; the user
comes from the ``user`` query argument instead of a secure cookie, so that a
load generator can open a thousand of them without logging in.  Redis comes
from ``MOI_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import tornado.web
from original_server import OriginalHandler

from moi.websocket import MOIMessageHandler


class BenchHandler(MOIMessageHandler):
    """moi's handler, the user named by the query."""

    def get_current_user(self) -> str | None:
        return self.get_argument("user", None)


async def main(kind: str, port: int) -> None:
    handler = {"moi": BenchHandler, "original": OriginalHandler}[kind]
    app = tornado.web.Application([(r"/moi-ws/", handler)])
    app.listen(port, address="127.0.0.1", backlog=2048)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

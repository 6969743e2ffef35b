"""The physical limit on this machine: a bare aiohttp server that reads the body and answers 200.

Run as ``python -m bench.baseline --port P``, with the same event loop and access-log setting as
``pinwatch serve`` (the access log is off there too), so the only difference is pinwatch's work.
"""

from __future__ import annotations

import argparse

from aiohttp import web

# bot.webhook.MAX_BODY_BYTES, repeated so that the baseline imports nothing of pinwatch (W5).
MAX_BODY_BYTES = 3 * 1024 * 1024


async def handle_webhook(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app() -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/webhook", handle_webhook)
    app.router.add_get("/readyz", handle_health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()

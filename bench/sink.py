"""A Slack Web API that accepts every post (at once, or after --delay seconds, as a Slack far
away would) and keeps nothing but a count.

W1, W2, W5 and W6 point pinwatch here: its outbox then drains as fast as pinwatch can post, which
is the most work its dispatcher can put on the event loop beside the webhook path. (The recording
FakeSlack of tests/ would keep 100,000 messages in memory; W3 and W4 use it, in the bench process.)
Run as ``python -m bench.sink --port P``; ``GET /count`` answers how many messages were posted.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

# [messages posted, calls answered with a ts]
COUNTS: web.AppKey[list[int]] = web.AppKey("counts")
DELAY: web.AppKey[float] = web.AppKey("delay")


async def handle_method(request: web.Request) -> web.Response:
    method = request.match_info["method"]
    params: dict[str, object] = {}
    if request.content_type == "application/json":
        params = await request.json()
    else:
        params = dict(await request.post())
    if method in ("chat.postMessage", "chat.update"):
        if (delay := request.app[DELAY]) > 0:
            await asyncio.sleep(delay)
        counts = request.app[COUNTS]
        counts[1] += 1
        seq = counts[1]
        if method == "chat.postMessage":
            counts[0] += 1
        ts = f"{1_700_000_000 + seq // 1_000_000}.{seq % 1_000_000:06d}"
        channel = str(params.get("channel") or "C0BENCHSINK")
        return web.json_response({"ok": True, "channel": channel, "ts": ts})
    if method == "chat.getPermalink":
        return web.json_response({"ok": True, "permalink": "https://sink.test/p1"})
    return web.json_response({"ok": True})


async def handle_count(request: web.Request) -> web.Response:
    return web.json_response({"posted": request.app[COUNTS][0]})


def build_app(*, delay: float = 0.0) -> web.Application:
    app = web.Application()
    app[COUNTS] = [0, 0]
    app[DELAY] = delay
    app.router.add_post("/api/{method}", handle_method)
    app.router.add_get("/count", handle_count)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds before each post's answer"
    )
    args = parser.parse_args()
    web.run_app(build_app(delay=args.delay), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()

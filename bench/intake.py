"""``python -m bench.intake [--rounds N]``: the event loop's CPU per delivery in the intake's
group commit on SQLite, in µs.

What a flood's deliveries cost the event loop between the webhook handing over their events
and the webhook resuming: routing them, building and encoding their rows, and the alerts made
of the ids the commit returns, with the loop's own work on the way. SQLite's own work runs on
the store's threads and is not counted. Each round commits ``--batch`` W1 deliveries together
(as concurrent webhooks do) into a real ``SqliteStore`` routing with the bench's 20-team
routing file, ``--commits`` times; the figure is the round with the least CPU time on the
event loop's thread (``time.thread_time``), divided by its deliveries, so that other work on
the machine counts as little as it can. Python work on the store's threads (building the rows
SQLite returns) holds the GIL against the loop without being counted: a change that moves work
there would read as a gain here.

To time another checkout, copy this file and ``bench/commit_pages.py`` into its ``bench/`` and
run it from that checkout's directory (``python -m`` puts the current directory first on the
path); the first line printed names the ``bot`` package timed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path

from bench.commit_pages import commit_together, routed_store
from bench.payloads import security_bodies
from bot.webhook import parse_delivery


async def measure(workdir: Path, *, rounds: int, commits: int, batch: int) -> float:
    """µs of the event loop's thread CPU per delivery, in the cheapest round."""
    store, _ = await routed_store(workdir)
    per_round = commits * batch
    bodies = security_bodies((rounds + 1) * per_round, tag="IN")
    events = [parse_delivery(body.body).events for body in bodies]
    best = float("inf")
    try:
        for start in range(0, len(events), per_round):
            deliveries = events[start : start + per_round]
            cpu = time.thread_time_ns()
            for at in range(0, per_round, batch):
                await commit_together(store, deliveries[at : at + batch], time.time())
            if start:  # the first round warms the caches up
                best = min(best, time.thread_time_ns() - cpu)
    finally:
        await store.close()
    return best / per_round / 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--commits", type=int, default=20, help="commits per round (default 20)")
    parser.add_argument("--batch", type=int, default=64, help="deliveries per commit (64)")
    args = parser.parse_args()
    if min(args.rounds, args.commits, args.batch) < 1:
        parser.error("--rounds, --commits and --batch must each be 1 or more")
    with tempfile.TemporaryDirectory(prefix="pinwatch-intake-") as workdir:
        gc.disable()  # a collection landing in one round would only add noise
        try:
            per_delivery = asyncio.run(
                measure(Path(workdir), rounds=args.rounds, commits=args.commits, batch=args.batch)
            )
        finally:
            gc.enable()
    print(
        f"bot from {Path(parse_delivery.__code__.co_filename).parent}; best of {args.rounds}"
        f" rounds of {args.commits} commits of {args.batch} deliveries"
    )
    print(f"event loop CPU per delivery: {per_delivery:.1f} µs")


if __name__ == "__main__":
    main()

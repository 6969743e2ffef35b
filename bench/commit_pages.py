"""What one intake commit writes on SQLite: the pages each group commit adds to the WAL, by the
table or index they belong to, for a few batch sizes (``python -m bench.commit_pages``).

A WAL commit writes every page the transaction changed, whole: a batch of new alerts touches
the table's last pages and, in each index, the leaf pages its keys land on. The store is the
real one (``SqliteStore`` routing with the bench's 20-team routing file, as ``serve`` does),
filled first with ``--prefill`` alerts, and each batch is ``batch`` W1 deliveries committed
together, as concurrent webhooks are. Each delivery has a Meta time of its own, one second after
the one before, as a flood's new events do (a redelivery keeps its old time: its key lands
among older keys).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import struct
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import servers
from bench.payloads import security_bodies
from bot.config import LiveConfig, load_config
from bot.events import SecurityEvent
from bot.metrics import Metrics
from bot.router import Router
from bot.store.sqlite import SqliteStore
from bot.webhook import parse_delivery

WAL_HEADER = 32
FRAME_HEADER = 24
# The store's writer checkpoints the WAL past 1,000 pages: each size is measured on this many
# commits after emptying it, which stays under that up to about 200 pages a commit.
COMMITS = 5


def _frames(wal: Path, page_size: int) -> list[int]:
    """The page number of each frame written since the WAL last restarted: a frame whose salts
    differ from the header's is left over from before a checkpoint (the file is reused, not
    truncated), and a commit that ran past the checkpoint threshold is an error."""
    data = wal.read_bytes()
    salts = data[16:24]
    frame = FRAME_HEADER + page_size
    offsets = range(WAL_HEADER, len(data) - frame + 1, frame)
    if any(data[offset + 8 : offset + 16] != salts for offset in offsets):
        raise SystemExit(
            "the WAL was checkpointed between the commits measured: use a smaller --batch"
        )
    return [struct.unpack_from(">I", data, offset)[0] for offset in offsets]


def _owners(path: Path) -> dict[int, str]:
    """Which table or index each page of the database belongs to (SQLite's dbstat)."""
    with sqlite3.connect(path) as db:
        return {page: name for name, page in db.execute("SELECT name, pageno FROM dbstat")}


def _checkpoint(path: Path) -> None:
    with sqlite3.connect(path) as db:
        (busy, _, _) = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise SystemExit("the WAL could not be emptied before measuring")


async def commit_together(
    store: SqliteStore, deliveries: list[list[SecurityEvent]], at: float
) -> None:
    """The deliveries in one group commit: all handed over before the first commit starts."""
    await asyncio.gather(*(store.add_events(events, received_at=at) for events in deliveries))


async def routed_store(workdir: Path) -> tuple[SqliteStore, Path]:
    """A new store in `workdir` that routes at intake with the bench's routing file, as
    ``serve`` does, and the database's path."""
    path = workdir / "pinwatch.db"
    config = workdir / "config.yaml"
    config.write_text(servers.routing_file(path))
    store = await SqliteStore.open(path)
    store.route_with(
        Router(
            config=LiveConfig(load_config(config), loaded_at=0.0),
            metrics=Metrics(meta_secrets=1),
            windows=store,
        )
    )
    return store, path


async def measure(workdir: Path, *, prefill: int, batches: list[int]) -> list[str]:
    store, path = await routed_store(workdir)
    needed = prefill + COMMITS * sum(batches)
    events = [parse_delivery(body.body).events for body in security_bodies(needed, tag="CP")]
    lines = []
    try:
        for start in range(0, prefill, 500):
            await commit_together(store, events[start : min(prefill, start + 500)], time.time())
        taken = prefill
        with sqlite3.connect(path) as db:
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
        for batch in batches:
            _checkpoint(path)
            started = time.perf_counter()
            for _ in range(COMMITS):
                await commit_together(store, events[taken : taken + batch], time.time())
                taken += batch
            elapsed = (time.perf_counter() - started) / COMMITS
            pages = _frames(Path(f"{path}-wal"), page_size)
            by_owner = Counter(_owners(path).get(page, "(freelist)") for page in pages)
            per_commit = len(pages) / COMMITS
            top = ", ".join(
                f"{name} {count / COMMITS:.0f}" for name, count in by_owner.most_common(8)
            )
            lines.append(
                f"batch of {batch}: {per_commit:.0f} pages per commit"
                f" ({per_commit * page_size / 1024 / batch:.1f} KiB per delivery),"
                f" {elapsed * 1000:.1f} ms per commit; by owner: {top}"
            )
    finally:
        await store.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--prefill", type=int, default=20_000, help="alerts stored first")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[8, 32, 64], help="deliveries per commit"
    )
    args = parser.parse_args()
    if args.prefill < 0 or any(batch < 1 for batch in args.batch):
        parser.error("--prefill must be 0 or more and each --batch 1 or more")
    with tempfile.TemporaryDirectory(prefix="pinwatch-commit-pages-") as workdir:
        os.environ.pop("DATABASE_URL", None)
        lines = asyncio.run(measure(Path(workdir), prefill=args.prefill, batches=args.batch))
    print(f"SQLite {sqlite3.sqlite_version}, {args.prefill:,} alerts stored first")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()

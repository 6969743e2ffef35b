"""Making the store fail from outside the app, on either backend, as a full disk would."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

from bot import keys
from tests.conftest import Pinwatch
from tests.fake_slack import RecordedCall


class StoreFailure:
    """pinwatch's writes fail while this is on, as they would on a full disk or a failing
    server: on SQLite another process holds the write lock ('database is locked'); on
    PostgreSQL a trigger refuses every write of an alert or a seen signature."""

    def __init__(self, pinwatch: Pinwatch) -> None:
        self._pinwatch = pinwatch
        self._sqlite: sqlite3.Connection | None = None

    async def start(self, _call: RecordedCall | None = None) -> None:
        if (url := self._pinwatch.database_url) is None:
            # In a thread: waiting for the write lock must not stop the event loop, whose own
            # write transaction (awaiting the loop between statements) holds it meanwhile.
            self._sqlite = await asyncio.to_thread(_hold_write_lock, store_path(self._pinwatch))
            return
        db = await asyncpg.connect(url)
        try:
            await db.execute(
                """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'No space left on device'; END $$;
                   CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON alerts
                   FOR EACH ROW EXECUTE FUNCTION refuse();
                   CREATE TRIGGER refuse BEFORE INSERT ON slack_signatures
                   FOR EACH ROW EXECUTE FUNCTION refuse();"""
            )
        finally:
            await db.close()

    async def stop(self) -> None:
        if self._sqlite is not None:
            await asyncio.to_thread(_release, self._sqlite)
            return
        assert self._pinwatch.database_url is not None
        db = await asyncpg.connect(self._pinwatch.database_url)
        try:
            await db.execute(
                "DROP TRIGGER refuse ON alerts; DROP TRIGGER refuse ON slack_signatures;"
                " DROP FUNCTION refuse()"
            )
        finally:
            await db.close()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def _release(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK")
    conn.close()


def store_path(pinwatch: Pinwatch) -> Path:
    return Path(pinwatch.app[keys.CONFIG].config.store.path)

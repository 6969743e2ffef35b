"""Making the store fail from outside the app, on either backend, as a full disk would."""

from __future__ import annotations

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
            self._sqlite = sqlite3.connect(store_path(self._pinwatch), isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
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
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
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


def store_path(pinwatch: Pinwatch) -> Path:
    return Path(pinwatch.app[keys.CONFIG].config.store.path)

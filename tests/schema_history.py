"""Stores as earlier pinwatch versions left them: each migration's undo, per backend, so that a
test can take a store back to any schema version and check the upgrade from it. A migration
added to a backend adds its undo here."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.conftest import Pinwatch
from tests.store_failure import store_path

# Version N's undo takes the schema from N back to N - 1.
SQLITE_UNDO = {
    4: "ALTER TABLE alerts DROP COLUMN responders; DROP TABLE slack_signatures;",
    5: "DROP TABLE slack_sends; DROP TABLE slack_channel_ids;",
    6: (
        "DROP INDEX alerts_by_waba; DROP INDEX alerts_unposted;"
        " CREATE INDEX alerts_unposted ON alerts (id) WHERE slack_ts IS NULL;"
        " ALTER TABLE alerts DROP COLUMN field; ALTER TABLE alerts DROP COLUMN severity;"
    ),
    7: "ALTER TABLE alerts DROP COLUMN takeover_at;",
    8: (
        "DROP INDEX alerts_reminders;"
        + "".join(
            f" ALTER TABLE alerts DROP COLUMN {column};"
            for column in (
                "resolved_by",
                "resolved_name",
                "resolved_at",
                "verdict",
                "resolution_note",
                "next_reminder_at",
            )
        )
    ),
    9: (
        "DROP INDEX alerts_by_window; ALTER TABLE alerts DROP COLUMN window_id;"
        " ALTER TABLE alerts DROP COLUMN expected; DROP TABLE expected_windows;"
    ),
    10: (
        "DROP INDEX alerts_pagerduty; ALTER TABLE alerts DROP COLUMN pagerduty_kind;"
        " ALTER TABLE alerts DROP COLUMN pagerduty_state;"
        " ALTER TABLE alerts DROP COLUMN pagerduty_key_env;"
    ),
    11: "DROP INDEX alerts_outbox;",
    12: "UPDATE alerts SET dedup_key = substr(dedup_key, instr(dedup_key, ':') + 1);",
}

POSTGRES_UNDO = {
    3: (
        "DROP INDEX alerts_by_waba; DROP INDEX alerts_unposted;"
        " CREATE INDEX alerts_unposted ON alerts (id) WHERE slack_ts IS NULL;"
        " ALTER TABLE alerts DROP COLUMN field, DROP COLUMN severity;"
    ),
    4: "ALTER TABLE alerts DROP COLUMN takeover_at;",
    5: (
        "DROP INDEX alerts_reminders; ALTER TABLE alerts DROP COLUMN resolved_by,"
        " DROP COLUMN resolved_name, DROP COLUMN resolved_at, DROP COLUMN verdict,"
        " DROP COLUMN resolution_note, DROP COLUMN next_reminder_at;"
    ),
    6: (
        "DROP INDEX alerts_by_window; ALTER TABLE alerts DROP COLUMN window_id,"
        " DROP COLUMN expected; DROP TABLE expected_windows;"
    ),
    7: (
        "DROP INDEX alerts_pagerduty; ALTER TABLE alerts DROP COLUMN pagerduty_kind,"
        " DROP COLUMN pagerduty_state, DROP COLUMN pagerduty_key_env;"
    ),
    8: "DROP INDEX alerts_outbox;",
    9: "UPDATE alerts SET dedup_key = substr(dedup_key, strpos(dedup_key, ':') + 1);",
}


async def downgrade(pinwatch: Pinwatch, *, sqlite: int, postgres: int) -> None:
    """Take the (stopped) pinwatch's store back to the given schema version of its backend."""
    if pinwatch.database_url is None:
        db = sqlite3.connect(store_path(pinwatch), isolation_level=None)
        (current,) = db.execute("PRAGMA user_version").fetchone()
        undo = "".join(SQLITE_UNDO[v] for v in range(current, sqlite, -1))
        db.executescript(f"{undo} PRAGMA user_version = {sqlite};")
        db.close()
        return
    conn = await asyncpg.connect(pinwatch.database_url)
    try:
        current = await conn.fetchval("SELECT version FROM pinwatch_schema")
        undo = "".join(POSTGRES_UNDO[v] for v in range(current, postgres, -1))
        await conn.execute(f"{undo} UPDATE pinwatch_schema SET version = {postgres};")
    finally:
        await conn.close()

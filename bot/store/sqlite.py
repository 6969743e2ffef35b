"""The SQLite backend: one file, one writer, zero set-up (the default)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from bot.catalog import TAKEOVER_SUMMARY
from bot.events import (
    REDELIVERY_HORIZON,
    SECURITY_FIELD,
    Actor,
    Alert,
    EscalationKind,
    EventType,
    PagerDutyState,
    SecurityEvent,
    Verdict,
)
from bot.store.group_commit import (
    GroupCommit,
    PendingInsert,
    assign_batch,
    by_delivery,
    new_ids,
    routed_and_new,
)
from bot.store.interface import (
    COPIED_TABLES,
    AuditEntry,
    IntakeRouter,
    OutboxEntry,
    StoreError,
    Transition,
)
from bot.store.rows import (
    UNROUTED_COLUMNS,
    alert_from_row,
    audit_detail,
    event_value_column,
    expected_detail,
    resolved_action,
    route_columns,
    text_column,
    unrouted_from_row,
    window_from_row,
)
from bot.windows import Target, Window

log = logging.getLogger(__name__)

# Each entry migrates the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        waba_id TEXT NOT NULL,
        phone_number TEXT NOT NULL,
        phone_digits TEXT NOT NULL,
        event TEXT NOT NULL,
        event_time INTEGER,
        requester TEXT,
        value TEXT NOT NULL,
        received_at REAL NOT NULL,
        team TEXT,
        channel TEXT,
        mentions TEXT,
        ack_deadline REAL,
        slack_channel TEXT,
        slack_ts TEXT,
        thread_ts TEXT,
        delivery_note TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        acknowledged_by TEXT,
        acknowledged_name TEXT,
        acknowledged_at REAL,
        escalated_by TEXT,
        escalated_name TEXT,
        escalated_at REAL,
        escalation_kind TEXT,
        verification_off_at REAL
    );
    CREATE INDEX alerts_unposted ON alerts (id) WHERE slack_ts IS NULL;
    CREATE INDEX alerts_awaiting_ack ON alerts (ack_deadline)
        WHERE acknowledged_at IS NULL AND escalated_at IS NULL AND ack_deadline IS NOT NULL;
    CREATE INDEX alerts_by_phone ON alerts (phone_digits, event, id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL REFERENCES alerts (id),
        action TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        actor_name TEXT,
        at REAL NOT NULL,
        detail TEXT
    );
    CREATE INDEX audit_by_alert ON audit (alert_id, id);
    """,
    # 2: an escalation is recorded first and paged by the outbox, so a Slack failure cannot lose it.
    """
    ALTER TABLE alerts ADD COLUMN escalation_channel TEXT;
    ALTER TABLE alerts ADD COLUMN escalation_ts TEXT;
    CREATE INDEX alerts_unpaged ON alerts (id)
        WHERE escalated_at IS NOT NULL AND escalation_ts IS NULL;
    """,
    # 3: storms: alerts grouped into one summary message per channel.
    """
    ALTER TABLE alerts ADD COLUMN grouped INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX alerts_by_channel_time ON alerts (channel, received_at);
    CREATE INDEX alerts_grouped ON alerts (channel, id) WHERE grouped = 1;
    CREATE INDEX alerts_by_message ON alerts (slack_ts) WHERE grouped = 1;
    """,
    # 4: the responders an alert was routed with, so that editing the routing file never loosens
    # who may act on it (JSON list, or JSON null for anyone; SQL NULL: routed before this); and
    # the Slack signatures already seen, so that a replay is refused across restarts.
    """
    ALTER TABLE alerts ADD COLUMN responders TEXT;
    CREATE TABLE slack_signatures (
        digest TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    CREATE INDEX slack_signatures_by_expiry ON slack_signatures (expires_at);
    """,
    # 5: a Slack post under way, recorded before the call: one cut off by a crash or a timeout
    # is looked for in the channel (by its message metadata) instead of being sent again.
    """
    CREATE TABLE slack_sends (
        key TEXT NOT NULL,
        channel TEXT NOT NULL,
        started_at REAL NOT NULL,
        PRIMARY KEY (key, channel)
    );
    CREATE TABLE slack_channel_ids (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL
    );
    """,
    # 6: account-level events beside security ones: the webhook field each came in, and the
    # severity it was routed with ('off': stored and counted, never posted; NULL: routed before
    # this, or not yet). Off alerts never wait for Slack, so no outbox read walks past them;
    # a WABA's recent events are found by WABA (the takeover chain looks for them).
    """
    ALTER TABLE alerts ADD COLUMN field TEXT NOT NULL DEFAULT 'security';
    ALTER TABLE alerts ADD COLUMN severity TEXT;
    DROP INDEX alerts_unposted;
    CREATE INDEX alerts_unposted ON alerts (id) WHERE slack_ts IS NULL AND severity IS NOT 'off';
    CREATE INDEX alerts_by_waba ON alerts (waba_id, event, id);
    """,
    # 7: a completed reset request that a re-registration or partner change followed: escalated
    # once as a possible takeover.
    """
    ALTER TABLE alerts ADD COLUMN takeover_at REAL;
    """,
    # 8: how an incident ended (who resolved it, when, the verdict and a note), and when an
    # acknowledged, unresolved alert is next reminded of in its thread.
    """
    ALTER TABLE alerts ADD COLUMN resolved_by TEXT;
    ALTER TABLE alerts ADD COLUMN resolved_name TEXT;
    ALTER TABLE alerts ADD COLUMN resolved_at REAL;
    ALTER TABLE alerts ADD COLUMN verdict TEXT;
    ALTER TABLE alerts ADD COLUMN resolution_note TEXT;
    ALTER TABLE alerts ADD COLUMN next_reminder_at REAL;
    CREATE INDEX alerts_reminders ON alerts (next_reminder_at)
        WHERE next_reminder_at IS NOT NULL AND resolved_at IS NULL;
    """,
    # 9: announced expected changes (`/pinwatch expect`): a window counts once its announcement
    # is in Slack (announced_ts); an alert routed inside one keeps its id and what it said.
    """
    CREATE TABLE expected_windows (
        id INTEGER PRIMARY KEY,
        target_kind TEXT NOT NULL,
        target TEXT NOT NULL,
        events TEXT NOT NULL,
        reason TEXT NOT NULL,
        team TEXT,
        channel TEXT NOT NULL,
        opened_by TEXT NOT NULL,
        opened_name TEXT,
        opened_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        announced_channel TEXT,
        announced_ts TEXT,
        cancelled_by TEXT,
        cancelled_name TEXT,
        cancelled_at REAL
    );
    CREATE INDEX expected_windows_by_expiry ON expected_windows (expires_at)
        WHERE announced_ts IS NOT NULL;
    ALTER TABLE alerts ADD COLUMN window_id INTEGER;
    ALTER TABLE alerts ADD COLUMN expected TEXT;
    CREATE INDEX alerts_by_window ON alerts (window_id, event) WHERE window_id IS NOT NULL;
    """,
    # 10: what PagerDuty was last told of an alert's escalation (its kind) and what it has of it
    # (triggered, acknowledged, resolved, refused; none: the team pages no PagerDuty).
    """
    ALTER TABLE alerts ADD COLUMN pagerduty_kind TEXT;
    ALTER TABLE alerts ADD COLUMN pagerduty_state TEXT;
    ALTER TABLE alerts ADD COLUMN pagerduty_key_env TEXT;
    -- Escalations from before are history: none is sent to PagerDuty on upgrade.
    UPDATE alerts SET pagerduty_kind = escalation_kind, pagerduty_state = 'none'
        WHERE escalation_kind IS NOT NULL;
    CREATE INDEX alerts_pagerduty ON alerts (id) WHERE escalation_kind IS NOT NULL
        AND (pagerduty_kind IS NOT escalation_kind
             OR pagerduty_state IN ('triggered', 'acknowledged'));
    """,
    # 11: the outbox read channel by channel, so that a flood in one never hides another's.
    """
    CREATE INDEX alerts_outbox ON alerts (channel, id)
        WHERE slack_ts IS NULL AND severity IS NOT 'off';
    """,
    # 12: dedup keys lead with Meta's time (events.dedup_order), so that new keys are inserted
    # at the end of their index; a key given up (`key:id`) stays given up.
    """
    UPDATE alerts SET dedup_key =
        CASE WHEN event_time IS NULL THEN '-' ELSE printf('%019d', event_time) END
        || ':' || dedup_key;
    """,
)

# A request resolved as nothing happened (a false alarm, or in PagerDuty with no verdict) is
# closed: what follows it stands on its own, and is escalated in its own right. One resolved as
# expected (or already as a takeover) goes on carrying its story.
_STILL_A_ROOT = "(resolved_at IS NULL OR verdict IN ('expected_change', 'confirmed_takeover'))"

# What waits for Slack: not posted yet, and not routed to silence by the `alerts:` map.
_WAITING = "slack_ts IS NULL AND severity IS NOT 'off'"

# The oldest waiting alerts of each channel not skipped: the channels that have any are found
# by skipping through the alerts_outbox index (one probe each), then each gives its own oldest,
# or its oldest alone (SQLite's LIMIT cannot depend on the channel, hence two branches).
_OUTBOX = f"""
    WITH RECURSIVE waiting(channel) AS (
        SELECT min(channel) FROM alerts WHERE {_WAITING} AND channel IS NOT NULL
        UNION ALL
        SELECT (SELECT min(channel) FROM alerts WHERE {_WAITING} AND channel > waiting.channel)
        FROM waiting WHERE waiting.channel IS NOT NULL
    ),
    asked(channel, oldest_only) AS (
        SELECT channel, channel IN (SELECT value FROM json_each(?3)) FROM waiting
        WHERE channel NOT IN (SELECT value FROM json_each(?1))
    )
    SELECT id, alerts.channel, received_at, event FROM asked JOIN alerts
        ON alerts.id IN (
            SELECT id FROM alerts WHERE {_WAITING} AND channel = asked.channel
            ORDER BY id LIMIT ?2
        )
    WHERE NOT asked.oldest_only
    UNION ALL
    SELECT id, alerts.channel, received_at, event FROM asked JOIN alerts
        ON alerts.id = (
            SELECT min(id) FROM alerts WHERE {_WAITING} AND channel = asked.channel
        )
    WHERE asked.oldest_only
    ORDER BY id
"""

# The second line repeats the alerts_pagerduty index's condition, which the rest implies: SQLite
# uses a partial index only when the query states its condition, else it scans every alert.
_PAGERDUTY_DUE = """
    escalation_kind IS NOT NULL AND slack_ts IS NOT NULL
    AND (pagerduty_kind IS NOT escalation_kind OR pagerduty_state IN ('triggered', 'acknowledged'))
    AND (pagerduty_kind IS NOT escalation_kind
         OR (escalation_kind <> 'confirmed'
             AND pagerduty_state IN ('triggered', 'acknowledged')
             AND (resolved_at >= escalated_at
                  OR (pagerduty_state = 'triggered' AND acknowledged_at > escalated_at))))
"""

# `limit` rows per team, not in all: a team whose lane waits (a Retry-After, an outage of its
# integration) must not hide every other team's escalations behind its own.
_PAGERDUTY_DUE_BY_TEAM = f"""
    SELECT * FROM (
        SELECT *, row_number() OVER (PARTITION BY coalesce(team, '') ORDER BY id) AS team_rank
        FROM alerts WHERE {_PAGERDUTY_DUE}
    ) AS due WHERE team_rank <= ? ORDER BY id
"""

# One row per element of a JSON array of rows, in the array's order (so ids follow arrival); a
# key already stored, or met earlier in the batch, is skipped. `WHERE true` lets the upsert parse.
_INSERT_EVENTS = """
    INSERT INTO alerts (dedup_key, waba_id, phone_number, phone_digits, event, event_time,
                        requester, value, received_at, field,
                        team, channel, mentions, responders, ack_deadline, severity, window_id,
                        expected)
    SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
           value ->> 6, value ->> 7, value ->> 8, value ->> 9,
           value ->> 10, value ->> 11, value ->> 12, value ->> 13, value ->> 14, value ->> 15,
           value ->> 16, value ->> 17
    FROM json_each(?) WHERE true ORDER BY key
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id, dedup_key
"""


# A batch's rows as one JSON array for _INSERT_EVENTS, several times faster than json.dumps.
_BATCH = msgspec.json.Encoder()

# `->>` came in SQLite 3.38 and `RETURNING` in 3.35 (Debian 12's Python has 3.40).
SQLITE_NEEDED = (3, 38, 0)


class Writer(Enum):
    """Who waits on a write transaction."""

    INTAKE = "intake"  # Meta, for its 200
    PEOPLE = "people"  # someone who clicked, and Slack's 3 seconds
    OUTBOX = "outbox"  # nobody right now: the dispatcher's bookkeeping


class _WriteTurns:
    """One writer at a time (SQLite has one). The turn goes round the kinds of writer that
    wait, first come first served within each: a flood of deliveries cannot hold back a click
    or the outbox's bookkeeping by more than one transaction of each other kind, however long
    it lasts (intake batches all that queued meanwhile into its next commit)."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: dict[Writer, deque[asyncio.Future[None]]] = {w: deque() for w in Writer}
        self._last = Writer.OUTBOX

    @asynccontextmanager
    async def turn(self, writer: Writer) -> AsyncIterator[None]:
        if self._busy or any(self._waiting.values()):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting[writer].append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on()  # granted as it was cancelled: hand the turn on
                else:
                    self._waiting[writer].remove(waiter)
                raise
        else:
            self._busy = True
        self._last = writer
        try:
            yield
        finally:
            self._pass_on()

    def _pass_on(self) -> None:
        order = list(Writer)
        after = order.index(self._last) + 1
        for writer in order[after:] + order[:after]:
            queue = self._waiting[writer]
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # _busy stays True: the turn goes to the waiter
                    return
        self._busy = False


class SqliteStore:
    """Two SQLite connections, each with its own thread: one writer, whose transactions take
    turns so they never interleave, and one reader, so that the outbox's reads never queue in
    front of a commit Meta is waiting for (WAL lets them run side by side)."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._db = db
        self._reader = reader
        self._turns = _WriteTurns()
        self._leases: dict[str, tuple[str, float]] = {}  # name → holder, monotonic expiry
        self._intake = GroupCommit(self._insert_batch, lambda: self._turns.turn(Writer.INTAKE))
        self._router: IntakeRouter | None = None
        # Every announced window, read once and again after each change to one: one process
        # serves a SQLite store (README), and the intake routes each batch inside them. Never
        # pruned, like the table: windows are announced by people, a few a day.
        self._announced: list[Window] | None = None
        self._windows_generation = 0  # a read that began before a change must not be kept

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout: float = 5.0) -> SqliteStore:
        if sqlite3.sqlite_version_info < SQLITE_NEEDED:
            needed = ".".join(map(str, SQLITE_NEEDED))
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: pinwatch needs {needed} or later"
                " (its intake uses ->> and RETURNING); use a newer Python build or PostgreSQL"
            )
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from exc
        db.row_factory = sqlite3.Row
        try:
            # WAL lets readers run beside the writer; FULL makes each commit survive power loss.
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            # The dedup index takes random keys: a bigger page cache keeps inserts off the disk
            # as the store grows to millions of alerts.
            await db.execute("PRAGMA cache_size=-32768")
            await _migrate(db)
            reader = await aiosqlite.connect(path)
            reader.row_factory = sqlite3.Row
            await reader.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            await db.close()
            raise StoreError(f"cannot use the store at {path}: {exc}") from exc
        return cls(db, reader)

    async def close(self) -> None:
        await self._intake.drain()
        await self._reader.close()
        await self._db.close()

    @asynccontextmanager
    async def _transaction(self, writer: Writer) -> AsyncIterator[aiosqlite.Connection]:
        async with self._turns.turn(writer), self._committed() as db:
            yield db

    @asynccontextmanager
    async def _changing_windows(self, writer: Writer) -> AsyncIterator[aiosqlite.Connection]:
        """A transaction that may change announced windows: the intake's copy is dropped after
        it whatever happened, since a commit can complete even when its task is cancelled."""
        try:
            async with self._transaction(writer) as db:
                yield db
        finally:
            self._windows_generation += 1
            self._announced = None

    @asynccontextmanager
    async def _committed(self) -> AsyncIterator[aiosqlite.Connection]:
        """Commit what the block wrote, or roll it back; the caller holds the write turn.
        SQLite failing (disk full, locked, I/O) is a StoreError to the caller."""
        try:
            yield self._db
            await self._db.commit()
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                await self._db.rollback()
            if isinstance(exc, sqlite3.OperationalError):  # locked, full, I/O, read-only
                raise StoreError(f"store write failed: {exc}") from exc
            raise

    # --- intake ---------------------------------------------------------------------------

    async def add_events(
        self, events: Sequence[SecurityEvent], *, received_at: float
    ) -> list[int | None]:
        """Commit the events, then return each one's new alert id, or None for a duplicate.

        Concurrent callers share one transaction (group commit): each still returns only once
        the commit that holds its events is durable, but the fsync is paid once per batch.
        """
        if not events:
            return []
        return await self._intake.add(events, received_at)

    async def _insert_batch(self, batch: list[PendingInsert]) -> list[list[int | None]]:
        incoming, assigned = await assign_batch(self._router, batch)
        keys = [event.dedup_key for event, _ in incoming]
        rows = [
            (
                key,
                text_column(event.waba_id),
                text_column(event.phone_number),
                event.phone_digits,
                text_column(event.event),
                event.time,
                text_column(event.requester),
                event_value_column(event),
                received_at,
                text_column(event.field),
                *route_columns(assignment),
            )
            for key, (event, received_at), assignment in zip(keys, incoming, assigned, strict=True)
        ]
        # A change without a time of its own is a duplicate only within Meta's redelivery
        # horizon: an older alert with its key gives the key up (renamed to stay unique).
        expiring = [
            (key, received_at - REDELIVERY_HORIZON)
            for key, (event, received_at) in zip(keys, incoming, strict=True)
            if event.time is None
        ]
        # The group commit holds the intake's write turn while this runs.
        async with self._committed() as db:
            if expiring:
                await db.executemany(
                    "UPDATE alerts SET dedup_key = dedup_key || ':' || id"
                    " WHERE dedup_key = ? AND received_at < ?",
                    expiring,
                )
            # The whole batch is one parameter and one statement: one trip to the thread. The
            # encoder refuses a text SQLite cannot store (a lone surrogate), as binding it would.
            inserted = await _fetch_all(db, _INSERT_EVENTS, (_BATCH.encode(rows).decode(),))
            ids = new_ids(keys, {key: alert_id for alert_id, key in inserted})
            routed = routed_and_new(incoming, assigned, ids)
            await self._audit_expected(db, routed)
        if self._router is not None and routed:
            self._router.stored(routed)
        return by_delivery(batch, ids)

    # --- reads ----------------------------------------------------------------------------

    async def get(self, alert_id: int) -> Alert | None:
        row = await _fetch_one(self._reader, "SELECT * FROM alerts WHERE id = ?", (alert_id,))
        return alert_from_row(row) if row else None

    async def get_many(self, alert_ids: Sequence[int]) -> list[Alert]:
        rows = await _fetch_all(
            self._reader,
            "SELECT * FROM alerts WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(list(alert_ids)),),
        )
        return [alert_from_row(row) for row in rows]

    async def unrouted(self, *, limit: int = 500) -> list[Alert]:
        """Alerts not yet in Slack and not yet routed, oldest first."""
        rows = await _fetch_all(
            self._reader,
            f"SELECT {UNROUTED_COLUMNS} FROM alerts WHERE {_WAITING} AND channel IS NULL"
            " ORDER BY id LIMIT ?",
            (limit,),
        )
        return [unrouted_from_row(row) for row in rows]

    async def outbox(
        self,
        *,
        per_channel: int = 500,
        skip: Collection[str] = (),
        oldest_only: Collection[str] = (),
    ) -> list[OutboxEntry]:
        """Routed alerts not yet in Slack, oldest first: just what scheduling needs, since a
        backlog is read again on every pass (each job reads its whole alert when it runs)."""
        params = (json.dumps(sorted(skip)), per_channel, json.dumps(sorted(oldest_only)))
        rows = await _fetch_all(self._reader, _OUTBOX, params)
        return [OutboxEntry(*row) for row in rows]

    async def root_for(self, follow_up: Alert, *, since: float) -> Alert | None:
        scope, scoped = _root_scope(follow_up)
        row = await _fetch_one(
            self._reader,
            f"""SELECT * FROM alerts
               WHERE {scope} AND event = ? AND id < ?
                 AND waba_id = ? AND team IS ? AND channel = ? AND severity IS NOT 'off'
                 AND coalesce(event_time, received_at) >= ? AND {_STILL_A_ROOT}
               ORDER BY verification_off_at IS NULL, id DESC LIMIT 1""",
            (
                *scoped,
                EventType.PIN_RESET_REQUEST.value,
                follow_up.id,
                follow_up.event.waba_id,
                follow_up.team,
                follow_up.channel,
                since,
            ),
        )
        return alert_from_row(row) if row else None

    async def due_for_escalation(self, now: float, *, limit: int = 100) -> list[Alert]:
        rows = await _fetch_all(
            self._reader,
            """SELECT * FROM alerts
               WHERE acknowledged_at IS NULL AND escalated_at IS NULL
                 AND ack_deadline IS NOT NULL AND ack_deadline <= ?
                 AND slack_ts IS NOT NULL AND thread_ts IS NULL AND resolved_at IS NULL
               ORDER BY ack_deadline LIMIT ?""",
            (now, limit),
        )
        return [alert_from_row(row) for row in rows]

    async def due_reminders(self, now: float, *, limit: int = 100) -> list[Alert]:
        rows = await _fetch_all(
            self._reader,
            """SELECT * FROM alerts
               WHERE next_reminder_at IS NOT NULL AND resolved_at IS NULL
                 AND next_reminder_at <= ?
               ORDER BY next_reminder_at LIMIT ?""",
            (now, limit),
        )
        return [alert_from_row(row) for row in rows]

    async def pagerduty_due(self, *, limit: int = 100) -> list[Alert]:
        rows = await _fetch_all(self._reader, _PAGERDUTY_DUE_BY_TEAM, (limit,))
        return [alert_from_row(row) for row in rows]

    async def unpaged_escalations(self, *, limit: int = 100) -> list[Alert]:
        """Escalated alerts whose page has not reached Slack yet."""
        rows = await _fetch_all(
            self._reader,
            """SELECT * FROM alerts WHERE escalated_at IS NOT NULL AND escalation_ts IS NULL
               ORDER BY id LIMIT ?""",
            (limit,),
        )
        return [alert_from_row(row) for row in rows]

    async def received_since(
        self, channel: str, since: float, *, after: int = 0
    ) -> list[tuple[int, float]]:
        """(id, received_at) of the alerts routed to a channel since a time: storm detection."""
        if after:
            # What came since the last read: a range of ids (the rowid), whatever the channel.
            # The unary + keeps the planner off the channel indexes, which would walk the window.
            sql = (
                "SELECT id, received_at FROM alerts WHERE id > ? AND +channel = ?"
                " AND +received_at >= ? AND severity IS NOT 'off' ORDER BY id"
            )
            params: tuple[Any, ...] = (after, channel, since)
        else:
            sql = (
                "SELECT id, received_at FROM alerts WHERE channel = ? AND received_at >= ?"
                " AND severity IS NOT 'off' ORDER BY id"
            )
            params = (channel, since)
        return [(row[0], row[1]) for row in await _fetch_all(self._reader, sql, params)]

    async def open_summary(self, channel: str) -> tuple[str, str, int, float] | None:
        """The newest storm summary for a routed channel: Slack channel, ts, rows, last receipt."""
        newest = await _fetch_one(
            self._reader,
            "SELECT slack_channel, slack_ts FROM alerts WHERE channel = ? AND grouped = 1"
            " ORDER BY id DESC LIMIT 1",
            (channel,),
        )
        if newest is None:
            return None
        row = await _fetch_one(
            self._reader,
            "SELECT count(*), max(received_at) FROM alerts"
            " WHERE slack_ts = ? AND slack_channel = ? AND grouped = 1",
            (newest[1], newest[0]),
        )
        assert row is not None
        return newest[0], newest[1], row[0], row[1]

    async def alerts_in_summary(self, slack_channel: str, ts: str) -> list[Alert]:
        rows = await _fetch_all(
            self._reader,
            "SELECT * FROM alerts WHERE slack_ts = ? AND slack_channel = ? AND grouped = 1"
            " ORDER BY id",
            (ts, slack_channel),
        )
        return [alert_from_row(row) for row in rows]

    async def audit_log(self, alert_id: int) -> list[AuditEntry]:
        rows = await _fetch_all(
            self._reader, "SELECT * FROM audit WHERE alert_id = ? ORDER BY id", (alert_id,)
        )
        return [
            AuditEntry(
                alert_id=row["alert_id"],
                action=row["action"],
                actor=Actor(user_id=row["actor_id"], name=row["actor_name"], at=row["at"]),
                detail=row["detail"],
            )
            for row in rows
        ]

    async def count_unposted(self) -> tuple[int, float | None]:
        """How many alerts wait for Slack, and when the oldest of them arrived."""
        row = await _fetch_one(
            self._reader, f"SELECT count(*), min(received_at) FROM alerts WHERE {_WAITING}"
        )
        return (row[0], row[1]) if row else (0, None)

    # --- transitions ----------------------------------------------------------------------

    async def _audit_all(
        self,
        db: aiosqlite.Connection,
        alert_ids: Sequence[int],
        action: str,
        actor: Actor,
        detail: str | None,
    ) -> None:
        await db.executemany(
            "INSERT INTO audit (alert_id, action, actor_id, actor_name, at, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(a, action, actor.user_id, actor.name, actor.at, detail) for a in alert_ids],
        )

    async def _audit_expected(self, db: aiosqlite.Connection, routed: Sequence[Alert]) -> None:
        """Who announced the window each alert was routed inside, in the commit routing it."""
        for alert in routed:
            if (expected := alert.expected) is not None:
                await self._audit_all(
                    db, [alert.id], "expected", expected.announced_by, expected_detail(alert)
                )

    async def set_routes(self, routed: Sequence[Alert]) -> list[Alert]:
        """One commit for all; only rows that store unrouted alerts take a route."""
        kept = []
        async with self._transaction(Writer.OUTBOX) as db:
            for alert in routed:
                async with db.execute(
                    "UPDATE alerts SET team = ?, channel = ?, mentions = ?, responders = ?,"
                    " ack_deadline = ?, severity = ?, window_id = ?, expected = ?"
                    " WHERE id = ? AND channel IS NULL",
                    (*route_columns(alert), alert.id),
                ) as cursor:
                    if cursor.rowcount == 1:
                        kept.append(alert)
            await self._audit_expected(db, kept)
        return kept

    async def first_sight(self, digest: str, *, expires_at: float, now: float) -> bool:
        """Remember a Slack request signature until it expires: False if it was seen before."""
        async with self._transaction(Writer.PEOPLE) as db:
            await db.execute("DELETE FROM slack_signatures WHERE expires_at < ?", (now,))
            async with db.execute(
                "INSERT INTO slack_signatures (digest, expires_at) VALUES (?, ?)"
                " ON CONFLICT (digest) DO NOTHING",
                (digest, expires_at),
            ) as cursor:
                return cursor.rowcount == 1

    async def mark_posted(
        self,
        alert_id: int,
        *,
        slack_channel: str,
        ts: str,
        thread_ts: str | None,
        note: str | None,
        actor: Actor,
        send: str,
    ) -> None:
        async with self._transaction(Writer.OUTBOX) as db:
            await db.execute(
                "UPDATE alerts SET slack_channel = ?, slack_ts = ?, thread_ts = ?,"
                " delivery_note = ?, last_error = NULL WHERE id = ?",
                (slack_channel, ts, thread_ts, note, alert_id),
            )
            await self._audit_all(db, [alert_id], "posted", actor, f"{slack_channel} {ts}")
            await db.execute("DELETE FROM slack_sends WHERE key = ?", (send,))

    async def mark_grouped(
        self,
        alert_ids: Sequence[int],
        *,
        slack_channel: str,
        ts: str,
        actor: Actor,
        send: str | None,
    ) -> None:
        async with self._transaction(Writer.OUTBOX) as db:
            await db.executemany(
                "UPDATE alerts SET slack_channel = ?, slack_ts = ?, grouped = 1, last_error = NULL"
                " WHERE id = ?",
                [(slack_channel, ts, alert_id) for alert_id in alert_ids],
            )
            await self._audit_all(db, alert_ids, "posted", actor, f"{slack_channel} {ts} (storm)")
            if send is not None:
                await db.execute("DELETE FROM slack_sends WHERE key = ?", (send,))

    async def mark_paged(
        self,
        paged: Sequence[tuple[int, EscalationKind]],
        *,
        channel: str,
        ts: str,
        actor: Actor,
        send: str | None,
    ) -> None:
        async with self._transaction(Writer.OUTBOX) as db:
            done = await _updated_each(
                db,
                "UPDATE alerts SET escalation_channel = ?, escalation_ts = ?"
                " WHERE id = ? AND escalation_kind = ?",
                [(alert_id, (channel, ts, alert_id, kind.value)) for alert_id, kind in paged],
            )
            await self._audit_all(db, done, "paged", actor, f"{channel} {ts}")
            if send is not None:
                await db.execute("DELETE FROM slack_sends WHERE key = ?", (send,))

    async def mark_pagerduty(
        self,
        alert_id: int,
        *,
        kind: EscalationKind,
        state: PagerDutyState,
        was: tuple[EscalationKind | None, PagerDutyState | None],
        actor: Actor,
        detail: str | None = None,
        key_env: str | None = None,
    ) -> bool:
        async with self._transaction(Writer.OUTBOX) as db:
            async with db.execute(
                "UPDATE alerts SET pagerduty_kind = ?, pagerduty_state = ?,"
                " pagerduty_key_env = coalesce(?, pagerduty_key_env)"
                " WHERE id = ? AND pagerduty_kind IS ? AND pagerduty_state IS ?",
                (
                    kind.value,
                    state.value,
                    key_env,
                    alert_id,
                    *(v.value if v else None for v in was),
                ),
            ) as cursor:
                changed = cursor.rowcount == 1
            if changed and state is not PagerDutyState.NONE:
                await self._audit_all(
                    db, [alert_id], f"pagerduty {state.value} ({kind.value})", actor, detail
                )
        return changed

    async def mark_reminded(
        self,
        reminded: Sequence[tuple[int, float]],
        *,
        next_at: float,
        actor: Actor,
        send: str,
    ) -> None:
        async with self._transaction(Writer.OUTBOX) as db:
            done = await _updated_each(
                db,
                "UPDATE alerts SET next_reminder_at = ?"
                " WHERE id = ? AND next_reminder_at = ? AND resolved_at IS NULL",
                [(alert_id, (next_at, alert_id, due)) for alert_id, due in reminded],
            )
            await self._audit_all(db, done, "reminded", actor, None)
            await db.execute("DELETE FROM slack_sends WHERE key = ?", (send,))

    async def begin_send(self, key: str, *, channel: str, at: float) -> list[tuple[str, float]]:
        async with self._transaction(Writer.OUTBOX) as db:
            rows = await _fetch_all(
                db, "SELECT channel, started_at FROM slack_sends WHERE key = ?", (key,)
            )
            earlier = [(row[0], row[1]) for row in rows]
            await db.execute(
                "INSERT INTO slack_sends (key, channel, started_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key, channel) DO NOTHING",
                (key, channel, at),
            )
        return earlier

    async def channel_id(self, name: str) -> str | None:
        row = await _fetch_one(
            self._reader, "SELECT id FROM slack_channel_ids WHERE name = ?", (name,)
        )
        return str(row[0]) if row else None

    async def remember_channel_id(self, name: str, channel_id: str) -> None:
        async with self._transaction(Writer.OUTBOX) as db:
            await db.execute(
                "INSERT INTO slack_channel_ids (name, id) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET id = excluded.id",
                (name, channel_id),
            )

    async def is_empty(self) -> bool:
        for table in COPIED_TABLES:
            rows = await _fetch_all(self._reader, f"SELECT 1 FROM {table} LIMIT 1")
            if rows:
                return False
        return True

    async def export_tables(self) -> dict[str, list[dict[str, Any]]]:
        # One read transaction: one snapshot of every table, even with a writer at work.
        try:
            await self._reader.execute("BEGIN")
            try:
                tables = {}
                for table in COPIED_TABLES:
                    rows = await _fetch_all(self._reader, f"SELECT * FROM {table}")
                    tables[table] = [dict(row) for row in rows]
                return tables
            finally:
                await self._reader.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from exc

    async def import_tables(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        try:
            async with self._changing_windows(Writer.OUTBOX) as db:
                for table in COPIED_TABLES:
                    if rows := tables.get(table):
                        columns = list(rows[0])
                        await db.executemany(
                            f"INSERT INTO {table} ({', '.join(columns)})"
                            f" VALUES ({', '.join('?' for _ in columns)})",
                            [tuple(row[c] for c in columns) for row in rows],
                        )
        except sqlite3.Error as exc:  # e.g. a key already there: not a store to copy into
            raise StoreError(f"store write failed: {exc}") from exc

    def on_change(
        self, wake: Callable[[], None], *, new_alerts: Callable[[], None] | None = None
    ) -> None:
        """One process writes a SQLite store, and it wakes its own dispatcher."""

    def route_with(self, router: IntakeRouter) -> None:
        self._router = router

    # --- announced windows ----------------------------------------------------------------

    async def add_window(
        self,
        *,
        target: Target,
        events: Sequence[str],
        reason: str,
        team: str | None,
        channel: str,
        opened_by: Actor,
        until: float,
    ) -> Window:
        async with (
            self._transaction(Writer.PEOPLE) as db,
            db.execute(
                "INSERT INTO expected_windows (target_kind, target, events, reason, team,"
                " channel, opened_by, opened_name, opened_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    target.kind.value,
                    target.value,
                    json.dumps(list(events)),
                    reason,
                    team,
                    channel,
                    opened_by.user_id,
                    opened_by.name,
                    opened_by.at,
                    until,
                ),
            ) as cursor,
        ):
            window_id = cursor.lastrowid
        assert window_id is not None
        window = await self.window(window_id)
        assert window is not None
        return window

    async def window(self, window_id: int) -> Window | None:
        row = await _fetch_one(
            self._reader, "SELECT * FROM expected_windows WHERE id = ?", (window_id,)
        )
        return window_from_row(row) if row else None

    async def announce_window(self, window_id: int, *, channel: str, ts: str) -> Window | None:
        async with self._changing_windows(Writer.PEOPLE) as db:
            await db.execute(
                "UPDATE expected_windows SET announced_channel = ?, announced_ts = ?"
                " WHERE id = ? AND announced_ts IS NULL",
                (channel, ts, window_id),
            )
        return await self.window(window_id)

    async def drop_window(self, window_id: int) -> None:
        async with self._transaction(Writer.PEOPLE) as db:
            await db.execute(
                "DELETE FROM expected_windows WHERE id = ? AND announced_ts IS NULL", (window_id,)
            )

    async def windows_between(self, since: float, until: float) -> list[Window]:
        """From memory: a trip to the reader's thread in every intake commit queued behind the
        dispatcher's reads in a storm (bench/README.md, issue 14's fourth sitting)."""
        announced = self._announced
        if announced is None:
            generation = self._windows_generation
            rows = await _fetch_all(
                self._reader,
                "SELECT * FROM expected_windows WHERE announced_ts IS NOT NULL ORDER BY id",
            )
            announced = [window_from_row(row) for row in rows]
            if generation == self._windows_generation:
                self._announced = announced
        return [w for w in announced if w.until > since and w.opened_at <= until]

    async def open_windows(self, now: float) -> list[Window]:
        rows = await _fetch_all(
            self._reader,
            "SELECT * FROM expected_windows WHERE announced_ts IS NOT NULL"
            " AND cancelled_at IS NULL AND expires_at > ? ORDER BY id",
            (now,),
        )
        return [window_from_row(row) for row in rows]

    async def cancel_window(self, window_id: int, actor: Actor) -> tuple[Window | None, bool]:
        async with (
            self._changing_windows(Writer.PEOPLE) as db,
            db.execute(
                "UPDATE expected_windows SET cancelled_by = ?, cancelled_name = ?,"
                " cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL AND expires_at > ?"
                " AND announced_ts IS NOT NULL",
                (actor.user_id, actor.name, actor.at, window_id, actor.at),
            ) as cursor,
        ):
            changed = cursor.rowcount == 1
        return await self.window(window_id), changed

    async def unresolved(
        self, teams: Sequence[str], *, with_defaults: bool, limit: int
    ) -> tuple[list[Alert], int]:
        marks = ", ".join("?" for _ in teams) or "NULL"
        where = (
            f"slack_ts IS NOT NULL AND thread_ts IS NULL AND resolved_at IS NULL"
            f" AND severity IS NOT 'off' AND (team IN ({marks})"
            + (" OR team IS NULL)" if with_defaults else ")")
        )
        rows = await _fetch_all(
            self._reader,
            f"SELECT * FROM alerts WHERE {where} ORDER BY id DESC LIMIT ?",
            (*teams, limit),
        )
        alerts = [alert_from_row(row) for row in rows]
        row = await _fetch_one(self._reader, f"SELECT count(*) FROM alerts WHERE {where}", teams)
        return alerts, row[0] if row else 0

    async def requests_in_windows(self, window_ids: Sequence[int]) -> set[tuple[int, str]]:
        if not window_ids:
            return set()
        marks = ", ".join("?" for _ in window_ids)
        rows = await _fetch_all(
            self._reader,
            f"SELECT window_id, phone_digits FROM alerts WHERE window_id IN ({marks})"
            " AND event = ? AND field = ?",
            (*window_ids, EventType.PIN_RESET_REQUEST.value, SECURITY_FIELD),
        )
        return {(row[0], row[1]) for row in rows}

    # A SQLite store belongs to one process, so its lanes' leases are that process's own.
    async def acquire_lease(self, name: str, *, holder: str, ttl: float) -> bool:
        now = time.monotonic()
        current = self._leases.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[name] = (holder, now + ttl)
        return True

    async def release_lease(self, name: str, *, holder: str, hold: float = 0.0) -> None:
        if (current := self._leases.get(name)) is not None and current[0] == holder:
            if hold > 0:
                self._leases[name] = ("", time.monotonic() + hold)  # no holder is named ""
            else:
                del self._leases[name]

    async def holds_lease(self, name: str, *, holder: str) -> bool:
        current = self._leases.get(name)
        return current is not None and current[0] == holder and current[1] > time.monotonic()

    async def end_send(self, key: str, *, channel: str) -> None:
        async with self._transaction(Writer.OUTBOX) as db:
            await db.execute(
                "DELETE FROM slack_sends WHERE key = ? AND channel = ?", (key, channel)
            )

    async def mark_attempt_failed(self, alert_id: int, error: str) -> None:
        async with self._transaction(Writer.OUTBOX) as db:
            await db.execute(
                "UPDATE alerts SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error, alert_id),
            )

    async def mark_verification_off(self, alert_id: int, actor: Actor) -> Transition:
        return await self._transition(
            alert_id,
            "verification_off",
            actor,
            "UPDATE alerts SET verification_off_at = ?"
            " WHERE id = ? AND verification_off_at IS NULL",
            (actor.at, alert_id),
        )

    async def mark_takeover(self, alert_id: int, actor: Actor) -> Transition:
        return await self._transition(
            alert_id,
            f"escalated ({EscalationKind.TAKEOVER.value})",
            actor,
            "UPDATE alerts SET takeover_at = ?, escalated_by = ?, escalated_name = ?,"
            " escalated_at = ?, escalation_kind = ?, escalation_channel = NULL,"
            " escalation_ts = NULL"
            " WHERE id = ? AND takeover_at IS NULL AND verification_off_at IS NOT NULL",
            (
                actor.at,
                actor.user_id,
                actor.name,
                actor.at,
                EscalationKind.TAKEOVER.value,
                alert_id,
            ),
            TAKEOVER_SUMMARY,
        )

    async def add_audit(self, alert_id: int, action: str, actor: Actor, detail: str | None) -> None:
        async with self._transaction(Writer.PEOPLE) as db:
            await self._audit_all(db, [alert_id], action, actor, detail)

    async def acknowledge(
        self,
        alert_id: int,
        actor: Actor,
        *,
        detail: str | None = None,
        remind_at: float | None = None,
    ) -> Transition:
        return await self._transition(
            alert_id,
            "acknowledged",
            actor,
            "UPDATE alerts SET acknowledged_by = ?, acknowledged_name = ?, acknowledged_at = ?,"
            " next_reminder_at = ?"
            " WHERE id = ? AND acknowledged_at IS NULL AND resolved_at IS NULL",
            (actor.user_id, actor.name, actor.at, remind_at, alert_id),
            detail,
        )

    async def escalate(
        self, alert_id: int, actor: Actor, kind: EscalationKind, *, detail: str | None = None
    ) -> Transition:
        return await self._transition(
            alert_id,
            f"escalated ({kind.value})",
            actor,
            "UPDATE alerts SET escalated_by = ?, escalated_name = ?, escalated_at = ?,"
            " escalation_kind = ? WHERE id = ? AND escalated_at IS NULL AND resolved_at IS NULL",
            (actor.user_id, actor.name, actor.at, kind.value, alert_id),
            detail,
        )

    async def resolve(
        self,
        alert_id: int,
        actor: Actor,
        verdict: Verdict | None,
        *,
        note: str | None,
        detail: str | None = None,
    ) -> Transition:
        async with self._transaction(Writer.PEOPLE) as db:
            async with db.execute(
                "UPDATE alerts SET resolved_by = ?, resolved_name = ?, resolved_at = ?,"
                " verdict = ?, resolution_note = ?, next_reminder_at = NULL"
                " WHERE id = ? AND resolved_at IS NULL",
                (actor.user_id, actor.name, actor.at, verdict and verdict.value, note, alert_id),
            ) as cursor:
                changed = cursor.rowcount == 1
            if changed:
                await self._audit_all(
                    db, [alert_id], resolved_action(verdict), actor, audit_detail(note, detail)
                )
                if verdict is Verdict.CONFIRMED_TAKEOVER:
                    # Paged again, whatever was paged before: the outbox sends it.
                    await db.execute(_RE_ESCALATE, _re_escalation(actor, alert_id))
                    await self._audit_all(
                        db, [alert_id], f"escalated ({EscalationKind.CONFIRMED.value})", actor, None
                    )
        alert = await self.get(alert_id)
        if alert is None:
            raise StoreError(f"alert {alert_id} does not exist")
        return Transition(alert=alert, changed=changed)

    async def _transition(
        self,
        alert_id: int,
        action: str,
        actor: Actor,
        sql: str,
        params: tuple[Any, ...],
        detail: str | None = None,
    ) -> Transition:
        """A guarded UPDATE and its audit row in one transaction: racing clicks change it once."""
        async with self._transaction(Writer.PEOPLE) as db:
            async with db.execute(sql, params) as cursor:
                changed = cursor.rowcount == 1
            if changed:
                await self._audit_all(db, [alert_id], action, actor, detail)
        alert = await self.get(alert_id)
        if alert is None:
            raise StoreError(f"alert {alert_id} does not exist")
        return Transition(alert=alert, changed=changed)


async def _updated_each(
    db: aiosqlite.Connection, sql: str, updates: Sequence[tuple[int, tuple[Any, ...]]]
) -> list[int]:
    """Run a guarded UPDATE for each alert: the ids of those it changed (the guard held)."""
    done = []
    for alert_id, params in updates:
        async with db.execute(sql, params) as cursor:
            if cursor.rowcount == 1:
                done.append(alert_id)
    return done


_RE_ESCALATE = (
    "UPDATE alerts SET escalated_by = ?, escalated_name = ?, escalated_at = ?,"
    " escalation_kind = ?, escalation_channel = NULL, escalation_ts = NULL WHERE id = ?"
)


def _re_escalation(actor: Actor, alert_id: int) -> tuple[Any, ...]:
    return (actor.user_id, actor.name, actor.at, EscalationKind.CONFIRMED.value, alert_id)


def _root_scope(follow_up: Alert) -> tuple[str, tuple[str, ...]]:
    """A success completes a pending request for its own number; a takeover event follows any
    request of the WABA."""
    if follow_up.event.field == SECURITY_FIELD:
        return "phone_digits = ? AND verification_off_at IS NULL", (follow_up.event.phone_digits,)
    return "1 = 1", ()


async def _fetch_all(
    conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> list[sqlite3.Row]:
    """One trip to the connection's thread: a cursor read row by row costs a trip per chunk and
    one more to close, and each trip waits for the GIL while the event loop is busy."""
    return list(await conn.execute_fetchall(sql, params))


async def _fetch_one(
    conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()
) -> sqlite3.Row | None:
    rows = await _fetch_all(conn, sql, params)
    return rows[0] if rows else None


async def _migrate(db: aiosqlite.Connection) -> None:
    row = await _fetch_one(db, "PRAGMA user_version")
    version = row[0] if row else 0
    if version > len(MIGRATIONS):
        raise StoreError(
            f"the store has schema version {version}, newer than this pinwatch knows"
            f" ({len(MIGRATIONS)}): upgrade pinwatch"
        )
    for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await db.executescript(f"BEGIN; {script}; PRAGMA user_version = {target}; COMMIT;")
        log.info("store: schema migrated to version %d", target)

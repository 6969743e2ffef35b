"""The PostgreSQL backend (asyncpg): one database shared by every replica of pinwatch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any, TypeAlias

import asyncpg
from yarl import URL

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
        id BIGSERIAL PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        waba_id TEXT NOT NULL,
        phone_number TEXT NOT NULL,
        phone_digits TEXT NOT NULL,
        event TEXT NOT NULL,
        event_time BIGINT,
        requester TEXT,
        value TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        team TEXT,
        channel TEXT,
        mentions TEXT,
        responders TEXT,
        ack_deadline DOUBLE PRECISION,
        slack_channel TEXT,
        slack_ts TEXT,
        thread_ts TEXT,
        delivery_note TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        acknowledged_by TEXT,
        acknowledged_name TEXT,
        acknowledged_at DOUBLE PRECISION,
        escalated_by TEXT,
        escalated_name TEXT,
        escalated_at DOUBLE PRECISION,
        escalation_kind TEXT,
        verification_off_at DOUBLE PRECISION,
        escalation_channel TEXT,
        escalation_ts TEXT,
        grouped BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX alerts_unposted ON alerts (id) WHERE slack_ts IS NULL;
    CREATE INDEX alerts_awaiting_ack ON alerts (ack_deadline)
        WHERE acknowledged_at IS NULL AND escalated_at IS NULL AND ack_deadline IS NOT NULL;
    CREATE INDEX alerts_by_phone ON alerts (phone_digits, event, id);
    CREATE INDEX alerts_unpaged ON alerts (id)
        WHERE escalated_at IS NOT NULL AND escalation_ts IS NULL;
    CREATE INDEX alerts_by_channel_time ON alerts (channel, received_at);
    CREATE INDEX alerts_grouped ON alerts (channel, id) WHERE grouped;
    CREATE INDEX alerts_by_message ON alerts (slack_ts) WHERE grouped;
    CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        alert_id BIGINT NOT NULL REFERENCES alerts (id),
        action TEXT NOT NULL,
        actor_id TEXT NOT NULL,
        actor_name TEXT,
        at DOUBLE PRECISION NOT NULL,
        detail TEXT
    );
    CREATE INDEX audit_by_alert ON audit (alert_id, id);
    CREATE TABLE slack_signatures (
        digest TEXT PRIMARY KEY,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX slack_signatures_by_expiry ON slack_signatures (expires_at);
    """,
    # 2: a Slack post under way, recorded before the call: one cut off by a crash or a timeout
    # is looked for in the channel (by its message metadata) instead of being sent again.
    """
    CREATE TABLE slack_sends (
        key TEXT NOT NULL,
        channel TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (key, channel)
    );
    CREATE TABLE slack_channel_ids (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL
    );
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    """,
    # 3: account-level events beside security ones: the webhook field each came in, and the
    # severity it was routed with ('off': stored and counted, never posted; NULL: routed before
    # this, or not yet). Off alerts never wait for Slack, so no outbox read walks past them;
    # a WABA's recent events are found by WABA (the takeover chain looks for them).
    """
    ALTER TABLE alerts ADD COLUMN field TEXT NOT NULL DEFAULT 'security';
    ALTER TABLE alerts ADD COLUMN severity TEXT;
    DROP INDEX alerts_unposted;
    CREATE INDEX alerts_unposted ON alerts (id)
        WHERE slack_ts IS NULL AND severity IS DISTINCT FROM 'off';
    CREATE INDEX alerts_by_waba ON alerts (waba_id, event, id);
    """,
    # 4: a completed reset request that a re-registration or partner change followed: escalated
    # once as a possible takeover.
    """
    ALTER TABLE alerts ADD COLUMN takeover_at DOUBLE PRECISION;
    """,
    # 5: how an incident ended (who resolved it, when, the verdict and a note), and when an
    # acknowledged, unresolved alert is next reminded of in its thread.
    """
    ALTER TABLE alerts ADD COLUMN resolved_by TEXT;
    ALTER TABLE alerts ADD COLUMN resolved_name TEXT;
    ALTER TABLE alerts ADD COLUMN resolved_at DOUBLE PRECISION;
    ALTER TABLE alerts ADD COLUMN verdict TEXT;
    ALTER TABLE alerts ADD COLUMN resolution_note TEXT;
    ALTER TABLE alerts ADD COLUMN next_reminder_at DOUBLE PRECISION;
    CREATE INDEX alerts_reminders ON alerts (next_reminder_at)
        WHERE next_reminder_at IS NOT NULL AND resolved_at IS NULL;
    """,
    # 6: announced expected changes (`/pinwatch expect`): a window counts once its announcement
    # is in Slack (announced_ts); an alert routed inside one keeps its id and what it said.
    """
    CREATE TABLE expected_windows (
        id BIGSERIAL PRIMARY KEY,
        target_kind TEXT NOT NULL,
        target TEXT NOT NULL,
        events TEXT NOT NULL,
        reason TEXT NOT NULL,
        team TEXT,
        channel TEXT NOT NULL,
        opened_by TEXT NOT NULL,
        opened_name TEXT,
        opened_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        announced_channel TEXT,
        announced_ts TEXT,
        cancelled_by TEXT,
        cancelled_name TEXT,
        cancelled_at DOUBLE PRECISION
    );
    CREATE INDEX expected_windows_by_expiry ON expected_windows (expires_at)
        WHERE announced_ts IS NOT NULL;
    ALTER TABLE alerts ADD COLUMN window_id BIGINT;
    ALTER TABLE alerts ADD COLUMN expected TEXT;
    CREATE INDEX alerts_by_window ON alerts (window_id, event) WHERE window_id IS NOT NULL;
    """,
    # 7: what PagerDuty was last told of an alert's escalation (its kind) and what it has of it
    # (triggered, acknowledged, resolved, refused; none: the team pages no PagerDuty).
    """
    ALTER TABLE alerts ADD COLUMN pagerduty_kind TEXT;
    ALTER TABLE alerts ADD COLUMN pagerduty_state TEXT;
    ALTER TABLE alerts ADD COLUMN pagerduty_key_env TEXT;
    -- Escalations from before are history: none is sent to PagerDuty on upgrade.
    UPDATE alerts SET pagerduty_kind = escalation_kind, pagerduty_state = 'none'
        WHERE escalation_kind IS NOT NULL;
    CREATE INDEX alerts_pagerduty ON alerts (id) WHERE escalation_kind IS NOT NULL
        AND (pagerduty_kind IS DISTINCT FROM escalation_kind
             OR pagerduty_state IN ('triggered', 'acknowledged'));
    """,
    # 8: the outbox read channel by channel, so that a flood in one never hides another's.
    """
    CREATE INDEX alerts_outbox ON alerts (channel, id)
        WHERE slack_ts IS NULL AND severity IS DISTINCT FROM 'off';
    """,
    # 9: dedup keys lead with Meta's time (events.dedup_order), so that new keys are inserted
    # at the end of their index; a key given up (`key:id`) stays given up. A replica still on
    # an older version meanwhile keys by the digest alone: a redelivery it takes is stored again.
    # lpad matches Python's f"{time:019d}" for every time the intake keeps (0 to 2**63 - 1).
    """
    UPDATE alerts SET dedup_key =
        CASE WHEN event_time IS NULL THEN '-' ELSE lpad(event_time::text, 19, '0') END
        || ':' || dedup_key;
    """,
)

# What waits for Slack: not posted yet, and not routed to silence by the `alerts:` map.
_WAITING = "slack_ts IS NULL AND severity IS DISTINCT FROM 'off'"

# The oldest waiting alerts of each channel not skipped: the channels that have any are found
# by skipping through the alerts_outbox index (one probe each), then each gives its own oldest.
_OUTBOX = f"""
    WITH RECURSIVE waiting(channel) AS (
        (SELECT channel FROM alerts WHERE {_WAITING} AND channel IS NOT NULL
         ORDER BY channel LIMIT 1)
        UNION ALL
        SELECT (SELECT channel FROM alerts WHERE {_WAITING} AND channel > waiting.channel
                ORDER BY channel LIMIT 1)
        FROM waiting WHERE waiting.channel IS NOT NULL
    )
    SELECT oldest.* FROM waiting CROSS JOIN LATERAL (
        SELECT id, channel, received_at, event FROM alerts
        WHERE {_WAITING} AND channel = waiting.channel ORDER BY id
        LIMIT CASE WHEN waiting.channel = ANY($3::text[]) THEN 1 ELSE $2 END
    ) AS oldest
    WHERE waiting.channel <> ALL($1::text[])
    ORDER BY oldest.id
"""

# The second line repeats the alerts_pagerduty index's condition, which the rest implies: stated,
# it lets the planner read the partial index instead of every alert.
_PAGERDUTY_DUE = """
    escalation_kind IS NOT NULL AND slack_ts IS NOT NULL
    AND (pagerduty_kind IS DISTINCT FROM escalation_kind
         OR pagerduty_state IN ('triggered', 'acknowledged'))
    AND (pagerduty_kind IS DISTINCT FROM escalation_kind
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
    ) AS due WHERE team_rank <= $1 ORDER BY id
"""

# Replicas starting at once on an empty database take turns on this lock: one migrates.
_MIGRATION_LOCK = 0x70696E7761746368  # "pinwatch"

# What the pool lends: a proxy with the connection's methods (generic in the stubs only).
_Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

# asyncpg raises these for a server that refuses, fails or is gone.
_BACKEND_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
DEADLOCK_ATTEMPTS = 3  # a deadlock aborts one side; its retry meets committed rows


# libpq, and so asyncpg, take a password in the URL's query too.
SECRET_QUERY_KEYS = ("password", "passfile")


def redacted(url: str) -> str:
    """The URL as it may appear in a message: never with its password."""
    parsed = URL(url)
    if parsed.password:
        parsed = parsed.with_password("***")
    hidden = {k: "***" for k in SECRET_QUERY_KEYS if k in parsed.query}
    return str(parsed.update_query(hidden) if hidden else parsed)


_BOOLEAN_COLUMNS = frozenset({"grouped"})


def _plain(value: Any) -> Any:
    """A value as SQLite keeps it: booleans as 0 and 1."""
    return int(value) if isinstance(value, bool) else value


def _column_value(column: str, value: Any) -> Any:
    """A copied value as PostgreSQL takes it (SQLite may hold a NUL its text cannot)."""
    if column in _BOOLEAN_COLUMNS:
        return bool(value)
    return text_column(value) if isinstance(value, str) else value


def _changed(status: str) -> int:
    """asyncpg answers 'UPDATE 1' or 'INSERT 0 1': the count is the last word."""
    return int(status.rsplit(" ", 1)[-1])


# Sent on commit when there is new work for the outbox: every replica's dispatcher wakes.
OUTBOX_CHANNEL = "pinwatch_outbox"
# The payload of the intake's notifications: new alerts, and nothing else to look at.
NEW_ALERTS = "alerts"
LISTEN_RETRY = 5.0


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], url: str) -> None:
        self._pool = pool
        self._url = url
        self._listener: asyncio.Task[None] | None = None
        # No write turns here: PostgreSQL takes concurrent writers; batching is what pays.
        self._intake = GroupCommit(self._insert_batch, contextlib.nullcontext)
        self._router: IntakeRouter | None = None

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(dsn=url, min_size=1, max_size=10)
        except (*_BACKEND_ERRORS, ValueError) as exc:
            raise StoreError(
                f"cannot open the store at {redacted(url)}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            async with pool.acquire() as db:
                await _migrate(db)
        except _BACKEND_ERRORS as exc:
            await pool.close()
            raise StoreError(f"cannot use the store at {redacted(url)}: {exc}") from exc
        return cls(pool, url)

    async def close(self) -> None:
        await self._intake.drain()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._pool.close()

    async def is_empty(self) -> bool:
        async with self._connection() as db:
            for table in COPIED_TABLES:
                if await db.fetchval(f"SELECT EXISTS (SELECT FROM {table})"):
                    return False
        return True

    async def export_tables(self) -> dict[str, list[dict[str, Any]]]:
        async with (
            self._connection() as db,
            db.transaction(isolation="repeatable_read", readonly=True),
        ):
            return {
                table: [
                    {k: _plain(v) for k, v in row.items()}
                    for row in await db.fetch(f"SELECT * FROM {table}")
                ]
                for table in COPIED_TABLES
            }

    async def import_tables(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        async with self._transaction() as db:
            for table in COPIED_TABLES:
                if not (rows := tables.get(table)):
                    continue
                columns = list(rows[0])
                records = [tuple(_column_value(c, row[c]) for c in columns) for row in rows]
                await db.copy_records_to_table(table, records=records, columns=columns)
                if "id" in columns:  # the next new row takes the id after the copied ones
                    await db.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                        f" (SELECT max(id) FROM {table}))"
                    )

    def route_with(self, router: IntakeRouter) -> None:
        self._router = router

    def on_change(
        self, wake: Callable[[], None], *, new_alerts: Callable[[], None] | None = None
    ) -> None:
        """Call `wake` when any replica commits work for the outbox (LISTEN/NOTIFY, on a
        connection of its own), or `new_alerts` for the intake's notifications. Polling stays
        the fallback: behind a pooler that drops notifications, or while this connection is
        down, work waits for the next poll."""

        def notified(_db: object, _pid: int, _channel: str, payload: object) -> None:
            if payload == NEW_ALERTS and new_alerts is not None:
                new_alerts()
            else:
                wake()

        self._listener = asyncio.create_task(self._listen(wake, notified), name="store listener")

    async def _listen(
        self, wake: Callable[[], None], notified: Callable[[object, int, str, object], None]
    ) -> None:
        while True:
            lost = asyncio.Event()
            try:
                db = await asyncpg.connect(self._url)
            except (*_BACKEND_ERRORS, ValueError) as exc:
                log.warning("store: cannot listen for new work, polling only: %s", exc)
                await asyncio.sleep(LISTEN_RETRY)
                continue
            try:
                db.add_termination_listener(lambda _connection, lost=lost: lost.set())
                await db.add_listener(OUTBOX_CHANNEL, notified)
                wake()  # whatever was committed while nobody listened
                await lost.wait()
                log.warning("store: the listening connection closed; listening again")
            except _BACKEND_ERRORS as exc:
                log.warning("store: listening for new work failed, polling meanwhile: %s", exc)
            finally:
                with contextlib.suppress(*_BACKEND_ERRORS):
                    await db.close()
            await asyncio.sleep(LISTEN_RETRY)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        try:
            async with self._pool.acquire() as db:
                yield db
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"store: {type(exc).__name__}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Connection]:
        async with self._connection() as db, db.transaction():
            yield db

    async def _alerts(self, sql: str, *args: Any) -> list[Alert]:
        async with self._connection() as db:
            return [alert_from_row(row) for row in await db.fetch(sql, *args)]

    # --- intake ---------------------------------------------------------------------------

    async def add_events(
        self, events: Sequence[SecurityEvent], *, received_at: float
    ) -> list[int | None]:
        """Concurrent callers share one transaction (group commit), as on SQLite: one round
        trip and one commit for a batch of deliveries, not four and one per delivery."""
        if not events:
            return []
        return await self._intake.add(events, received_at)

    async def _insert_batch(self, batch: list[PendingInsert]) -> list[list[int | None]]:
        """A batch inserts in arrival order (ids keep a channel's order), so two replicas
        committing the same changes in other orders can deadlock: PostgreSQL aborts one of
        them, which then finds the other's rows and inserts only what is still new."""
        for _ in range(DEADLOCK_ATTEMPTS - 1):
            try:
                return await self._insert_batch_once(batch)
            except StoreError as exc:
                if not isinstance(exc.__cause__, asyncpg.DeadlockDetectedError):
                    raise
                log.warning("store: intake deadlocked with another replica; trying again")
        return await self._insert_batch_once(batch)

    async def _insert_batch_once(self, batch: list[PendingInsert]) -> list[list[int | None]]:
        incoming, assigned = await assign_batch(self._router, batch)
        keys = [event.dedup_key for event, _ in incoming]
        # A change without a time of its own is a duplicate only within Meta's redelivery
        # horizon: an older alert with its key gives the key up (renamed to stay unique).
        expiring = [
            (key, received_at - REDELIVERY_HORIZON)
            for key, (event, received_at) in zip(keys, incoming, strict=True)
            if event.time is None
        ]
        columns = list(
            zip(
                *(
                    (
                        key,
                        text_column(event.waba_id),
                        text_column(event.phone_number),
                        event.phone_digits,
                        text_column(event.event),
                        event.time,
                        text_column(event.requester),
                        event_value_column(event),
                        text_column(event.field),
                        received_at,
                        *route_columns(assignment),
                    )
                    for key, (event, received_at), assignment in zip(
                        keys, incoming, assigned, strict=True
                    )
                ),
                strict=True,
            )
        )
        # One statement is a transaction of its own: a batch with nothing else to write (no key
        # given up, no alert inside a window to audit) is one round trip, without BEGIN and COMMIT.
        alone = not expiring and all(a is None or a.expected is None for a in assigned)
        async with self._connection() if alone else self._transaction() as db:
            if expiring:
                expiring_keys, before = zip(*expiring, strict=True)
                await db.execute(
                    "UPDATE alerts SET dedup_key = dedup_key || ':' || id"
                    " FROM unnest($1::text[], $2::float8[]) AS x (k, before)"
                    " WHERE dedup_key = x.k AND received_at < x.before",
                    list(expiring_keys),
                    list(before),
                )
            rows = await db.fetch(
                """WITH fresh AS (
                       INSERT INTO alerts (dedup_key, waba_id, phone_number, phone_digits, event,
                                           event_time, requester, value, field, received_at,
                                           team, channel, mentions, responders, ack_deadline,
                                           severity, window_id, expected)
                       SELECT k, w, p, d, e, t, r, v, f, at, tm, ch, mn, rs, dl, sv, wi, ex
                       FROM (
                           SELECT DISTINCT ON (k) *
                           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                       $5::text[], $6::bigint[], $7::text[], $8::text[],
                                       $9::text[], $10::float8[], $11::text[], $12::text[],
                                       $13::text[], $14::text[], $15::float8[], $16::text[],
                                       $17::bigint[], $18::text[])
                                WITH ORDINALITY AS x (k, w, p, d, e, t, r, v, f, at,
                                                      tm, ch, mn, rs, dl, sv, wi, ex, n)
                           ORDER BY k, n
                       ) AS fresh
                       -- Known keys are left out before they reach the sequence: a redelivery
                       -- takes no id, so ids stay dense but for races between replicas.
                       WHERE NOT EXISTS (SELECT FROM alerts WHERE dedup_key = k)
                       ORDER BY n
                       ON CONFLICT (dedup_key) DO NOTHING
                       RETURNING id, dedup_key
                   ), woken AS (
                       -- In the same round trip: the other replicas wake for the new alerts.
                       SELECT pg_notify($19, $20) FROM (SELECT 1 FROM fresh LIMIT 1) AS any_new
                   )
                   SELECT id, dedup_key FROM fresh, (SELECT count(*) FROM woken) AS w""",
                *columns,
                OUTBOX_CHANNEL,
                NEW_ALERTS,
            )
            ids = new_ids(keys, {row["dedup_key"]: row["id"] for row in rows})
            routed = routed_and_new(incoming, assigned, ids)
            await self._audit_expected(db, routed)
        if self._router is not None and routed:
            self._router.stored(routed)
        return by_delivery(batch, ids)

    # --- reads ----------------------------------------------------------------------------

    async def get(self, alert_id: int) -> Alert | None:
        found = await self._alerts("SELECT * FROM alerts WHERE id = $1", alert_id)
        return found[0] if found else None

    async def get_many(self, alert_ids: Sequence[int]) -> list[Alert]:
        return await self._alerts(
            "SELECT * FROM alerts WHERE id = ANY($1::bigint[]) ORDER BY id", list(alert_ids)
        )

    async def unrouted(self, *, limit: int = 500) -> list[Alert]:
        async with self._connection() as db:
            rows = await db.fetch(
                f"SELECT {UNROUTED_COLUMNS} FROM alerts WHERE {_WAITING} AND channel IS NULL"
                " ORDER BY id LIMIT $1",
                limit,
            )
        return [unrouted_from_row(row) for row in rows]

    async def outbox(
        self,
        *,
        per_channel: int = 500,
        skip: Collection[str] = (),
        oldest_only: Collection[str] = (),
    ) -> list[OutboxEntry]:
        async with self._connection() as db:
            rows = await db.fetch(_OUTBOX, sorted(skip), per_channel, sorted(oldest_only))
        return [OutboxEntry(*row) for row in rows]

    async def root_for(self, follow_up: Alert, *, since: float) -> Alert | None:
        # A success completes a pending request for its own number; a takeover event follows
        # any request of the WABA.
        success = follow_up.event.field == SECURITY_FIELD
        found = await self._alerts(
            """SELECT * FROM alerts
               WHERE ($1 OR (phone_digits = $2 AND verification_off_at IS NULL))
                 AND event = $3 AND id < $4
                 AND waba_id = $5 AND team IS NOT DISTINCT FROM $6 AND channel = $7
                 AND severity IS DISTINCT FROM 'off' AND coalesce(event_time, received_at) >= $8
                 AND (resolved_at IS NULL OR verdict IN ('expected_change', 'confirmed_takeover'))
               ORDER BY verification_off_at IS NULL, id DESC LIMIT 1""",
            not success,
            follow_up.event.phone_digits,
            EventType.PIN_RESET_REQUEST.value,
            follow_up.id,
            text_column(follow_up.event.waba_id),
            follow_up.team,
            follow_up.channel,
            since,
        )
        return found[0] if found else None

    async def due_for_escalation(self, now: float, *, limit: int = 100) -> list[Alert]:
        return await self._alerts(
            """SELECT * FROM alerts
               WHERE acknowledged_at IS NULL AND escalated_at IS NULL
                 AND ack_deadline IS NOT NULL AND ack_deadline <= $1
                 AND slack_ts IS NOT NULL AND thread_ts IS NULL AND resolved_at IS NULL
               ORDER BY ack_deadline LIMIT $2""",
            now,
            limit,
        )

    async def due_reminders(self, now: float, *, limit: int = 100) -> list[Alert]:
        return await self._alerts(
            """SELECT * FROM alerts
               WHERE next_reminder_at IS NOT NULL AND resolved_at IS NULL
                 AND next_reminder_at <= $1
               ORDER BY next_reminder_at LIMIT $2""",
            now,
            limit,
        )

    async def pagerduty_due(self, *, limit: int = 100) -> list[Alert]:
        return await self._alerts(_PAGERDUTY_DUE_BY_TEAM, limit)

    async def unpaged_escalations(self, *, limit: int = 100) -> list[Alert]:
        return await self._alerts(
            "SELECT * FROM alerts WHERE escalated_at IS NOT NULL AND escalation_ts IS NULL"
            " ORDER BY id LIMIT $1",
            limit,
        )

    async def received_since(
        self, channel: str, since: float, *, after: int = 0
    ) -> list[tuple[int, float]]:
        async with self._connection() as db:
            rows = await db.fetch(
                "SELECT id, received_at FROM alerts WHERE channel = $1 AND received_at >= $2"
                " AND id > $3 AND severity IS DISTINCT FROM 'off' ORDER BY id",
                channel,
                since,
                after,
            )
        return [(row[0], row[1]) for row in rows]

    async def open_summary(self, channel: str) -> tuple[str, str, int, float] | None:
        async with self._connection() as db:
            newest = await db.fetchrow(
                "SELECT slack_channel, slack_ts FROM alerts WHERE channel = $1 AND grouped"
                " ORDER BY id DESC LIMIT 1",
                channel,
            )
            if newest is None:
                return None
            row = await db.fetchrow(
                "SELECT count(*), max(received_at) FROM alerts"
                " WHERE slack_ts = $1 AND slack_channel = $2 AND grouped",
                newest[1],
                newest[0],
            )
        assert row is not None
        return newest[0], newest[1], row[0], row[1]

    async def alerts_in_summary(self, slack_channel: str, ts: str) -> list[Alert]:
        return await self._alerts(
            "SELECT * FROM alerts WHERE slack_ts = $1 AND slack_channel = $2 AND grouped"
            " ORDER BY id",
            ts,
            slack_channel,
        )

    async def audit_log(self, alert_id: int) -> list[AuditEntry]:
        async with self._connection() as db:
            rows = await db.fetch("SELECT * FROM audit WHERE alert_id = $1 ORDER BY id", alert_id)
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
        async with self._connection() as db:
            row = await db.fetchrow(
                f"SELECT count(*), min(received_at) FROM alerts WHERE {_WAITING}"
            )
        return (row[0], row[1]) if row else (0, None)

    # --- writes ---------------------------------------------------------------------------

    @classmethod
    async def _audit_expected(cls, db: _Connection, routed: Sequence[Alert]) -> None:
        """Who announced the window each alert was routed inside, in the commit routing it."""
        for alert in routed:
            if (expected := alert.expected) is not None:
                await cls._audit(
                    db, [alert.id], "expected", expected.announced_by, expected_detail(alert)
                )

    @staticmethod
    async def _audit(
        db: _Connection,
        alert_ids: Sequence[int],
        action: str,
        actor: Actor,
        detail: str | None,
    ) -> None:
        await db.executemany(
            "INSERT INTO audit (alert_id, action, actor_id, actor_name, at, detail)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (
                    alert_id,
                    action,
                    actor.user_id,
                    text_column(actor.name),
                    actor.at,
                    text_column(detail),
                )
                for alert_id in alert_ids
            ],
        )

    async def set_routes(self, routed: Sequence[Alert]) -> list[Alert]:
        kept = []
        async with self._transaction() as db:
            for alert in routed:
                if await db.fetchval(
                    "UPDATE alerts SET team = $1, channel = $2, mentions = $3, responders = $4,"
                    " ack_deadline = $5, severity = $6, window_id = $7, expected = $8"
                    " WHERE id = $9 AND channel IS NULL RETURNING id",
                    *route_columns(alert),
                    alert.id,
                ):
                    kept.append(alert)
            await self._audit_expected(db, kept)
        return kept

    async def first_sight(self, digest: str, *, expires_at: float, now: float) -> bool:
        async with self._transaction() as db:
            await db.execute("DELETE FROM slack_signatures WHERE expires_at < $1", now)
            status = await db.execute(
                "INSERT INTO slack_signatures (digest, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (digest) DO NOTHING",
                digest,
                expires_at,
            )
        return _changed(status) == 1

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
        async with self._transaction() as db:
            await db.execute(
                "UPDATE alerts SET slack_channel = $1, slack_ts = $2, thread_ts = $3,"
                " delivery_note = $4, last_error = NULL WHERE id = $5",
                slack_channel,
                ts,
                thread_ts,
                note,
                alert_id,
            )
            await self._audit(db, [alert_id], "posted", actor, f"{slack_channel} {ts}")
            await db.execute("DELETE FROM slack_sends WHERE key = $1", send)

    async def mark_grouped(
        self,
        alert_ids: Sequence[int],
        *,
        slack_channel: str,
        ts: str,
        actor: Actor,
        send: str | None,
    ) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE alerts SET slack_channel = $1, slack_ts = $2, grouped = TRUE,"
                " last_error = NULL WHERE id = ANY($3::bigint[])",
                slack_channel,
                ts,
                list(alert_ids),
            )
            await self._audit(db, alert_ids, "posted", actor, f"{slack_channel} {ts} (storm)")
            if send is not None:
                await db.execute("DELETE FROM slack_sends WHERE key = $1", send)

    async def mark_paged(
        self,
        paged: Sequence[tuple[int, EscalationKind]],
        *,
        channel: str,
        ts: str,
        actor: Actor,
        send: str | None,
    ) -> None:
        async with self._transaction() as db:
            # Only the escalation that was paged: one re-armed meanwhile waits for its own page.
            done = await db.fetch(
                "UPDATE alerts SET escalation_channel = $1, escalation_ts = $2"
                " FROM unnest($3::bigint[], $4::text[]) AS paged (id, kind)"
                " WHERE alerts.id = paged.id AND alerts.escalation_kind = paged.kind"
                " RETURNING alerts.id",
                channel,
                ts,
                [alert_id for alert_id, _ in paged],
                [kind.value for _, kind in paged],
            )
            await self._audit(db, [row[0] for row in done], "paged", actor, f"{channel} {ts}")
            if send is not None:
                await db.execute("DELETE FROM slack_sends WHERE key = $1", send)

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
        async with self._transaction() as db:
            changed = (
                _changed(
                    await db.execute(
                        "UPDATE alerts SET pagerduty_kind = $1, pagerduty_state = $2,"
                        " pagerduty_key_env = coalesce($6, pagerduty_key_env)"
                        " WHERE id = $3 AND pagerduty_kind IS NOT DISTINCT FROM $4"
                        " AND pagerduty_state IS NOT DISTINCT FROM $5",
                        kind.value,
                        state.value,
                        alert_id,
                        *(v.value if v else None for v in was),
                        key_env,
                    )
                )
                == 1
            )
            if changed and state is not PagerDutyState.NONE:
                await self._audit(
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
        async with self._transaction() as db:
            # Only reminders still due as read: another replica's reminder, or a resolution,
            # since then wins.
            done = await db.fetch(
                "UPDATE alerts SET next_reminder_at = $1"
                " FROM unnest($2::bigint[], $3::double precision[]) AS due (id, at)"
                " WHERE alerts.id = due.id AND alerts.next_reminder_at = due.at"
                " AND alerts.resolved_at IS NULL RETURNING alerts.id",
                next_at,
                [alert_id for alert_id, _ in reminded],
                [at for _, at in reminded],
            )
            await self._audit(db, [row[0] for row in done], "reminded", actor, None)
            await db.execute("DELETE FROM slack_sends WHERE key = $1", send)

    async def begin_send(self, key: str, *, channel: str, at: float) -> list[tuple[str, float]]:
        async with self._transaction() as db:
            earlier = await db.fetch(
                "SELECT channel, started_at FROM slack_sends WHERE key = $1 FOR UPDATE", key
            )
            await db.execute(
                "INSERT INTO slack_sends (key, channel, started_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (key, channel) DO NOTHING",
                key,
                channel,
                at,
            )
        return [(row[0], row[1]) for row in earlier]

    async def channel_id(self, name: str) -> str | None:
        async with self._connection() as db:
            found = await db.fetchval("SELECT id FROM slack_channel_ids WHERE name = $1", name)
        return str(found) if found is not None else None

    async def remember_channel_id(self, name: str, channel_id: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO slack_channel_ids (name, id) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET id = excluded.id",
                name,
                channel_id,
            )

    # Lease times are the database's own clock: replicas' clocks need not agree.
    async def acquire_lease(self, name: str, *, holder: str, ttl: float) -> bool:
        async with self._transaction() as db:
            status = await db.execute(
                """INSERT INTO leases (name, holder, expires_at)
                   VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
                   ON CONFLICT (name) DO UPDATE
                   SET holder = excluded.holder, expires_at = excluded.expires_at
                   WHERE leases.holder = excluded.holder
                      OR leases.expires_at < clock_timestamp()""",
                name,
                holder,
                ttl,
            )
        return _changed(status) == 1

    async def release_lease(self, name: str, *, holder: str, hold: float = 0.0) -> None:
        async with self._transaction() as db:
            if hold <= 0:
                await db.execute("DELETE FROM leases WHERE name = $1 AND holder = $2", name, holder)
                return
            # Held by no one until the time runs out: no replica's holder name is empty.
            await db.execute(
                "UPDATE leases SET holder = '',"
                " expires_at = clock_timestamp() + make_interval(secs => $3)"
                " WHERE name = $1 AND holder = $2",
                name,
                holder,
                hold,
            )

    async def holds_lease(self, name: str, *, holder: str) -> bool:
        async with self._connection() as db:
            held = await db.fetchval(
                "SELECT true FROM leases"
                " WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()",
                name,
                holder,
            )
        return held is True

    async def end_send(self, key: str, *, channel: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM slack_sends WHERE key = $1 AND channel = $2", key, channel
            )

    async def mark_attempt_failed(self, alert_id: int, error: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE alerts SET attempts = attempts + 1, last_error = $1 WHERE id = $2",
                text_column(error),
                alert_id,
            )

    async def add_audit(self, alert_id: int, action: str, actor: Actor, detail: str | None) -> None:
        async with self._transaction() as db:
            await self._audit(db, [alert_id], action, actor, detail)

    async def mark_verification_off(self, alert_id: int, actor: Actor) -> Transition:
        return await self._transition(
            alert_id,
            "verification_off",
            actor,
            None,
            "UPDATE alerts SET verification_off_at = $1"
            " WHERE id = $2 AND verification_off_at IS NULL",
            actor.at,
            alert_id,
        )

    async def mark_takeover(self, alert_id: int, actor: Actor) -> Transition:
        return await self._transition(
            alert_id,
            f"escalated ({EscalationKind.TAKEOVER.value})",
            actor,
            TAKEOVER_SUMMARY,
            "UPDATE alerts SET takeover_at = $1, escalated_by = $2, escalated_name = $3,"
            " escalated_at = $1, escalation_kind = $4, escalation_channel = NULL,"
            " escalation_ts = NULL"
            " WHERE id = $5 AND takeover_at IS NULL AND verification_off_at IS NOT NULL",
            actor.at,
            actor.user_id,
            actor.name,
            EscalationKind.TAKEOVER.value,
            alert_id,
        )

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
            detail,
            "UPDATE alerts SET acknowledged_by = $1, acknowledged_name = $2, acknowledged_at = $3,"
            " next_reminder_at = $4"
            " WHERE id = $5 AND acknowledged_at IS NULL AND resolved_at IS NULL",
            actor.user_id,
            text_column(actor.name),
            actor.at,
            remind_at,
            alert_id,
        )

    async def escalate(
        self, alert_id: int, actor: Actor, kind: EscalationKind, *, detail: str | None = None
    ) -> Transition:
        return await self._transition(
            alert_id,
            f"escalated ({kind.value})",
            actor,
            detail,
            "UPDATE alerts SET escalated_by = $1, escalated_name = $2, escalated_at = $3,"
            " escalation_kind = $4"
            " WHERE id = $5 AND escalated_at IS NULL AND resolved_at IS NULL",
            actor.user_id,
            text_column(actor.name),
            actor.at,
            kind.value,
            alert_id,
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
        async with self._transaction() as db:
            changed = (
                _changed(
                    await db.execute(
                        "UPDATE alerts SET resolved_by = $1, resolved_name = $2, resolved_at = $3,"
                        " verdict = $4, resolution_note = $5, next_reminder_at = NULL"
                        " WHERE id = $6 AND resolved_at IS NULL",
                        actor.user_id,
                        text_column(actor.name),
                        actor.at,
                        verdict and verdict.value,
                        text_column(note),
                        alert_id,
                    )
                )
                == 1
            )
            if changed:
                await self._audit(
                    db, [alert_id], resolved_action(verdict), actor, audit_detail(note, detail)
                )
                if verdict is Verdict.CONFIRMED_TAKEOVER:
                    # Paged again, whatever was paged before: the outbox sends it.
                    await db.execute(
                        "UPDATE alerts SET escalated_by = $1, escalated_name = $2,"
                        " escalated_at = $3, escalation_kind = $4, escalation_channel = NULL,"
                        " escalation_ts = NULL WHERE id = $5",
                        actor.user_id,
                        text_column(actor.name),
                        actor.at,
                        EscalationKind.CONFIRMED.value,
                        alert_id,
                    )
                    await self._audit(
                        db, [alert_id], f"escalated ({EscalationKind.CONFIRMED.value})", actor, None
                    )
                await db.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
        alert = await self.get(alert_id)
        if alert is None:
            raise StoreError(f"alert {alert_id} does not exist")
        return Transition(alert=alert, changed=changed)

    async def _transition(
        self, alert_id: int, action: str, actor: Actor, detail: str | None, sql: str, *args: Any
    ) -> Transition:
        """A guarded UPDATE and its audit row in one transaction: racing clicks (on any
        replica) change it once."""
        async with self._transaction() as db:
            changed = _changed(await db.execute(sql, *args)) == 1
            if changed:
                await self._audit(db, [alert_id], action, actor, detail)
                # An escalation is paged through the outbox, by whichever replica leads.
                await db.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
        alert = await self.get(alert_id)
        if alert is None:
            raise StoreError(f"alert {alert_id} does not exist")
        return Transition(alert=alert, changed=changed)

    # --- announced windows ------------------------------------------------------------------

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
        async with self._connection() as db:
            row = await db.fetchrow(
                "INSERT INTO expected_windows (target_kind, target, events, reason, team,"
                " channel, opened_by, opened_name, opened_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *",
                target.kind.value,
                target.value,
                json.dumps(list(events)),
                text_column(reason),
                team,
                channel,
                opened_by.user_id,
                text_column(opened_by.name),
                opened_by.at,
                until,
            )
        assert row is not None
        return window_from_row(row)

    async def window(self, window_id: int) -> Window | None:
        async with self._connection() as db:
            row = await db.fetchrow("SELECT * FROM expected_windows WHERE id = $1", window_id)
        return window_from_row(row) if row else None

    async def announce_window(self, window_id: int, *, channel: str, ts: str) -> Window | None:
        async with self._connection() as db:
            await db.execute(
                "UPDATE expected_windows SET announced_channel = $1, announced_ts = $2"
                " WHERE id = $3 AND announced_ts IS NULL",
                channel,
                ts,
                window_id,
            )
        return await self.window(window_id)

    async def drop_window(self, window_id: int) -> None:
        async with self._connection() as db:
            await db.execute(
                "DELETE FROM expected_windows WHERE id = $1 AND announced_ts IS NULL", window_id
            )

    async def windows_between(self, since: float, until: float) -> list[Window]:
        async with self._connection() as db:
            rows = await db.fetch(
                "SELECT * FROM expected_windows WHERE announced_ts IS NOT NULL"
                " AND expires_at > $1 AND opened_at <= $2 ORDER BY id",
                since,
                until,
            )
        return [window_from_row(row) for row in rows]

    async def open_windows(self, now: float) -> list[Window]:
        async with self._connection() as db:
            rows = await db.fetch(
                "SELECT * FROM expected_windows WHERE announced_ts IS NOT NULL"
                " AND cancelled_at IS NULL AND expires_at > $1 ORDER BY id",
                now,
            )
        return [window_from_row(row) for row in rows]

    async def cancel_window(self, window_id: int, actor: Actor) -> tuple[Window | None, bool]:
        async with self._connection() as db:
            status = await db.execute(
                "UPDATE expected_windows SET cancelled_by = $1, cancelled_name = $2,"
                " cancelled_at = $3 WHERE id = $4 AND cancelled_at IS NULL AND expires_at > $3"
                " AND announced_ts IS NOT NULL",
                actor.user_id,
                text_column(actor.name),
                actor.at,
                window_id,
            )
        return await self.window(window_id), _changed(status) == 1

    async def unresolved(
        self, teams: Sequence[str], *, with_defaults: bool, limit: int
    ) -> tuple[list[Alert], int]:
        where = (
            "slack_ts IS NOT NULL AND thread_ts IS NULL AND resolved_at IS NULL"
            " AND severity IS DISTINCT FROM 'off' AND (team = ANY($1::text[])"
            + (" OR team IS NULL)" if with_defaults else ")")
        )
        async with self._connection() as db:
            rows = await db.fetch(
                f"SELECT * FROM alerts WHERE {where} ORDER BY id DESC LIMIT $2", list(teams), limit
            )
            count = await db.fetchval(f"SELECT count(*) FROM alerts WHERE {where}", list(teams))
        return [alert_from_row(row) for row in rows], int(count or 0)

    async def requests_in_windows(self, window_ids: Sequence[int]) -> set[tuple[int, str]]:
        if not window_ids:
            return set()
        async with self._connection() as db:
            rows = await db.fetch(
                "SELECT window_id, phone_digits FROM alerts WHERE window_id = ANY($1::bigint[])"
                " AND event = $2 AND field = $3",
                list(window_ids),
                EventType.PIN_RESET_REQUEST.value,
                SECURITY_FIELD,
            )
        return {(row[0], row[1]) for row in rows}


async def _migrate(db: _Connection) -> None:
    await db.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS pinwatch_schema (version INTEGER NOT NULL);"
            " INSERT INTO pinwatch_schema SELECT 0 WHERE NOT EXISTS (SELECT FROM pinwatch_schema)"
        )
        version = await db.fetchval("SELECT version FROM pinwatch_schema")
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the store has schema version {version}, newer than this pinwatch knows"
                f" ({len(MIGRATIONS)}): upgrade pinwatch"
            )
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            async with db.transaction():
                await db.execute(script)
                await db.execute("UPDATE pinwatch_schema SET version = $1", target)
            log.info("store: schema migrated to version %d", target)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

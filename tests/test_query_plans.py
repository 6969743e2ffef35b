"""What the dispatcher reads on every pass must be found through an index: a pass runs up to a
hundred times a second in a flood, and a query that walks every stored alert makes each pass
cost the size of the store (W6's million alerts)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.store.sqlite import SqliteStore


async def test_every_query_of_a_dispatcher_pass_uses_an_index(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "pinwatch.db")
    statements: list[str] = []
    await store._reader.set_trace_callback(statements.append)
    try:
        await store.unrouted()
        await store.outbox()
        await store.outbox(skip={"#support"}, oldest_only={"#payments"})
        await store.due_for_escalation(1.0)
        await store.due_reminders(1.0)
        await store.pagerduty_due()
        await store.unpaged_escalations()
        await store.received_since("#payments", 1.0)
        await store.received_since("#payments", 1.0, after=10)
        await store.open_summary("#payments")
    finally:
        await store.close()
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) >= 10
    with sqlite3.connect(tmp_path / "pinwatch.db") as db:
        for sql in reads:
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]
            scans = [step for step in plan if step == "SCAN alerts"]
            assert not scans, f"{sql}\nreads every alert: {plan}"
            if "channel IS NULL" in sql:  # the few unrouted, not the whole backlog walked
                assert plan == ["SEARCH alerts USING INDEX alerts_outbox (channel=?)"], plan
            if "id > 10" in sql:  # storm accounting's read of what came since the last pass
                assert plan == ["SEARCH alerts USING INTEGER PRIMARY KEY (rowid>?)"], plan

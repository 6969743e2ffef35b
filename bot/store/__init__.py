"""Durable state behind one interface: deduplicated events, the Slack outbox, transitions and
their audit. SQLite by default; PostgreSQL when DATABASE_URL names one."""

from __future__ import annotations

from pathlib import Path

from bot.store.interface import AuditEntry, OutboxEntry, Store, StoreError, Transition
from bot.store.sqlite import SqliteStore

__all__ = ["AuditEntry", "OutboxEntry", "Store", "StoreError", "Transition", "open_store"]


async def open_store(path: str | Path, *, busy_timeout: float = 5.0) -> Store:
    return await SqliteStore.open(path, busy_timeout=busy_timeout)

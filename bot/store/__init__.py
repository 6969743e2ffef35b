"""Durable state behind one interface: deduplicated events, the Slack outbox, transitions and
their audit. SQLite by default; PostgreSQL when DATABASE_URL names one."""

from __future__ import annotations

from pathlib import Path

from bot.store.interface import AuditEntry, OutboxEntry, Store, StoreError, Transition
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SqliteStore

__all__ = ["AuditEntry", "OutboxEntry", "Store", "StoreError", "Transition", "open_store"]


def is_database_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


async def open_store(target: str | Path, *, busy_timeout: float = 5.0) -> Store:
    """A postgresql:// URL opens PostgreSQL; anything else is a SQLite file's path."""
    if is_database_url(target):
        return await PostgresStore.open(str(target))
    return await SqliteStore.open(target, busy_timeout=busy_timeout)

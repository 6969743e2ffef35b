"""`pinwatch store copy`: a whole store from one backend (or file) to another."""

from __future__ import annotations

from bot.store.interface import Store, StoreError


class TargetNotEmpty(StoreError):
    pass


async def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Every row of every table that holds state (alerts, their Slack messages, transitions,
    audit, seen signatures, posts under way), read from one snapshot and written in one
    transaction, ids kept; how many rows went, per table. A target that holds anything is
    refused: merging two stores could give two alerts one id."""
    if not await target.is_empty():
        raise TargetNotEmpty("the target store is not empty: copy into a new one")
    tables = await source.export_tables()
    await target.import_tables(tables)
    return {table: len(rows) for table, rows in tables.items()}

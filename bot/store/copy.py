"""`pinwatch store copy`: a whole store from one backend (or file) to another."""

from __future__ import annotations

from bot.store.interface import COPIED_TABLES, Store, StoreError


class TargetNotEmpty(StoreError):
    pass


async def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Every row of every table that holds state (alerts, their Slack messages, transitions,
    audit, seen signatures, posts under way), ids kept; how many rows went, per table. A target
    that already holds alerts is refused: merging two stores could give two alerts one id."""
    if not await target.is_empty():
        raise TargetNotEmpty("the target store is not empty: copy into a new one")
    copied = {}
    for table in COPIED_TABLES:
        rows = await source.export_rows(table)
        await target.import_rows(table, rows)
        copied[table] = len(rows)
    return copied

"""Group commit for the intake, on either backend: deliveries that arrive while a commit is under
way share the next one, so a flood pays one durable commit per batch, not one per delivery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from bot.events import Alert, Assignment, Incoming, SecurityEvent
from bot.store.interface import IntakeRouter, StoreError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PendingInsert:
    events: Sequence[SecurityEvent]
    received_at: float
    done: asyncio.Future[list[int | None]]


async def assign_batch(
    router: IntakeRouter | None, batch: list[PendingInsert]
) -> tuple[list[Incoming], Sequence[Assignment | None]]:
    """The batch's events, each with when it was received, and where routing placed them: a
    routing bug must not refuse deliveries, so what cannot be routed (None) is stored unrouted,
    for the dispatcher to try again. A failing store fails the batch."""
    incoming = [(event, item.received_at) for item in batch for event in item.events]
    if router is None:
        return incoming, [None] * len(incoming)
    return incoming, await router.assign(incoming)


def new_ids(keys: Sequence[str], inserted: dict[str, int]) -> list[int | None]:
    """Each alert's id as inserted, or None; a key that occurs twice in one batch is new only
    the first time."""
    return [inserted.pop(key, None) for key in keys]


def routed_and_new(
    incoming: Sequence[Incoming],
    assigned: Sequence[Assignment | None],
    ids: Sequence[int | None],
) -> list[Alert]:
    """The alerts of a batch that were both routed and new, each with the id it was given."""
    return [
        assignment.new_alert(alert_id, event, received_at)
        for (event, received_at), assignment, alert_id in zip(incoming, assigned, ids, strict=True)
        if alert_id is not None and assignment is not None
    ]


def by_delivery(batch: list[PendingInsert], flat: list[int | None]) -> list[list[int | None]]:
    """A batch's ids (one per event, in order) split back into its deliveries'."""
    result, start = [], 0
    for item in batch:
        result.append(flat[start : start + len(item.events)])
        start += len(item.events)
    return result


# Commits a batch in one transaction: per delivery, each event's new alert id or None.
InsertBatch = Callable[[list[PendingInsert]], Awaitable[list[list[int | None]]]]


class GroupCommit:
    def __init__(
        self, insert_batch: InsertBatch, turn: Callable[[], AbstractAsyncContextManager[None]]
    ) -> None:
        self._insert_batch = insert_batch
        self._turn = turn  # waited for before a batch is taken: what queues meanwhile joins it
        self._queued: list[PendingInsert] = []
        self._flusher: asyncio.Task[None] | None = None

    async def add(self, events: Sequence[SecurityEvent], received_at: float) -> list[int | None]:
        """Returns only once the commit that holds these events is durable."""
        done: asyncio.Future[list[int | None]] = asyncio.get_running_loop().create_future()
        self._queued.append(PendingInsert(events, received_at, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_queued())
        return await done

    async def drain(self) -> None:
        """Wait for what was queued to be committed (or refused), e.g. before closing."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush_queued(self) -> None:
        while self._queued:
            async with self._turn():
                batch, self._queued = self._queued, []
                try:
                    results = await self._insert_batch(batch)
                except StoreError:
                    # The store itself is failing: each delivery alone would wait and fail the
                    # same way. Meta gets its 503 now and retries.
                    log.exception("store: committing %d deliveries failed", len(batch))
                    for item in batch:
                        _fail(item)
                    continue
                except Exception:
                    await self._insert_one_by_one(batch)
                    continue
            for item, result in zip(batch, results, strict=True):
                _succeed(item, result)

    async def _insert_one_by_one(self, batch: list[PendingInsert]) -> None:
        """One bad delivery must not fail the others it shared a commit with."""
        for item in batch:
            try:
                [result] = await self._insert_batch([item])
            except Exception:
                log.exception("store: committing a delivery failed")
                _fail(item)
            else:
                _succeed(item, result)


def _succeed(item: PendingInsert, result: list[int | None]) -> None:
    if not item.done.done():
        item.done.set_result(result)


def _fail(item: PendingInsert) -> None:
    if not item.done.done():
        item.done.set_exception(StoreError("commit failed"))

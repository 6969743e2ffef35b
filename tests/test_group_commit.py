"""The group commit, on both backends: deliveries that share a commit, and replicas that commit
the same changes at once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from bot.events import REDELIVERY_HORIZON, SecurityEvent
from bot.store import Store, open_store
from tests.conftest import Pinwatch, delivery, security
from tests.test_hostile_input import post_signed


@pytest.mark.parametrize("bad_text", ["a\u0000b", "a\ud800b"], ids=["nul", "lone-surrogate"])
async def test_a_string_the_store_cannot_hold_spoils_no_other_delivery_in_its_commit(
    pinwatch: Pinwatch, bad_text: str
) -> None:
    """JSON allows \\u0000 in a string; PostgreSQL's text does not. Deliveries share a commit."""
    bad = json.dumps(delivery(security("PIN_CHANGED", requester=bad_text))).encode()
    good = [
        json.dumps(delivery(security("PIN_CHANGED", phone=f"1555000{i:04d}"))).encode()
        for i in range(6)
    ]
    bodies = [*good[:3], bad, *good[3:]]
    statuses = await asyncio.gather(*(post_signed(pinwatch, body) for body in bodies))
    print(f"\nstatuses: {statuses}")
    assert [s for b, s in zip(bodies, statuses, strict=True) if b in good] == [200] * len(good)
    assert statuses[3] < 500


async def test_a_nul_in_a_stored_text_is_kept_as_a_replacement_character(
    pinwatch: Pinwatch,
) -> None:
    """Neither backend cuts a text at its NUL (SQLite's JSON functions did): a cut event name
    could read as one pinwatch knows."""
    body = delivery(security("PIN_RESET_REQUEST\u0000junk", requester="mallory\u0000evil"))
    status, _ = await pinwatch.post_webhook(body)
    assert status == 200
    assert await pinwatch.query("SELECT event, requester FROM alerts") == [
        ("PIN_RESET_REQUEST\ufffdjunk", "mallory\ufffdevil")
    ]


def change(phone: str, at: int | None = 1_748_811_473) -> SecurityEvent:
    value = {"display_phone_number": phone, "event": "PIN_CHANGED"}
    return SecurityEvent("102290129340398", phone, "PIN_CHANGED", at, value=value)


async def test_the_same_change_in_deliveries_sharing_a_commit_is_new_once(
    database_url: str | None, tmp_path: Path
) -> None:
    store = await open_store(database_url or tmp_path / "pinwatch.db")
    try:
        a, b = change("15550000001"), change("15550000002")
        results = await asyncio.gather(
            store.add_events([a], received_at=time.time()),
            store.add_events([b, a], received_at=time.time()),
            store.add_events([a, a], received_at=time.time()),
            store.add_events([b], received_at=time.time()),
        )
        print(f"\nresults {results}")
        flat = [i for r in results for i in r]
        assert sorted(i for i in flat if i is not None) == [1, 2]
        assert results[0][0] is not None  # the first of each key is the new one
        assert results[1][0] is not None
    finally:
        await store.close()


async def test_a_timeless_change_older_than_the_horizon_is_new_again_in_a_shared_commit(
    database_url: str | None, tmp_path: Path
) -> None:
    """Each delivery's own received_at decides whether an older alert gives its key up."""
    store = await open_store(database_url or tmp_path / "pinwatch.db")
    try:
        now = time.time()
        old, recent = change("15550000001", None), change("15550000002", None)
        assert await store.add_events([old], received_at=now - REDELIVERY_HORIZON - 60) == [1]
        assert await store.add_events([recent], received_at=now - 60) == [2]
        results = await asyncio.gather(
            store.add_events([old], received_at=now),
            store.add_events([recent], received_at=now),
            store.add_events([old, recent], received_at=now),
        )
        print(f"\nresults {results}")
        assert list(results) == [[3], [None], [None, None]]
    finally:
        await store.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # LISTEN/NOTIFY's own
async def test_a_commit_of_only_known_changes_wakes_no_replica(database_url: str | None) -> None:
    """The NOTIFY in the batch's statement fires only when it inserted something."""
    assert database_url is not None
    committing = await open_store(database_url)
    listening = await open_store(database_url)
    woken = asyncio.Event()
    try:
        listening.on_change(woken.set)
        await asyncio.wait_for(woken.wait(), 10)  # it wakes once on (re)connecting
        woken.clear()
        a, b = change("15550000001"), change("15550000002")
        assert await committing.add_events([a], received_at=time.time()) == [1]
        await asyncio.wait_for(woken.wait(), 5)
        woken.clear()
        await asyncio.gather(*(committing.add_events([a], received_at=time.time()) for _ in "ab"))
        await asyncio.sleep(0.5)
        assert not woken.is_set(), "woken by a commit that added nothing"
        results = await asyncio.gather(
            committing.add_events([a], received_at=time.time()),
            committing.add_events([b], received_at=time.time()),
        )
        assert list(results) == [[None], [2]]
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        await listening.close()
        await committing.close()


async def test_close_commits_what_was_queued(database_url: str | None, tmp_path: Path) -> None:
    target = database_url or tmp_path / "pinwatch.db"
    store = await open_store(target)
    adding = [
        asyncio.ensure_future(store.add_events([change(f"1555000{i:04d}")], received_at=1.0))
        for i in range(20)
    ]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*adding)
    assert sorted(r[0] for r in results if r[0] is not None) == list(range(1, 21))
    reopened = await open_store(target)
    try:
        assert len(await reopened.unrouted()) == 20
    finally:
        await reopened.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # replicas share it
async def test_replicas_committing_the_same_changes_in_opposite_orders_both_succeed(
    database_url: str | None,
) -> None:
    """Meta may redeliver to one replica while another still commits the first attempt; each
    replica's batch holds many deliveries, in its own arrival order."""
    assert database_url is not None
    first, second = await open_store(database_url), await open_store(database_url)
    try:
        for round_ in range(10):
            changes = [change(f"1555{round_:03d}{i:04d}") for i in range(300)]

            async def deliver(store: Store, order: list[SecurityEvent]) -> list[list[int | None]]:
                return await asyncio.gather(
                    *(store.add_events([c], received_at=time.time()) for c in order)
                )

            results = await asyncio.gather(
                deliver(first, changes),
                deliver(second, changes[::-1]),
                return_exceptions=True,
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            assert not failed, f"round {round_}: {failed!r}"
    finally:
        await first.close()
        await second.close()

"""`pinwatch store copy`: moving from SQLite to PostgreSQL (and back) keeps every alert, its
Slack message, its transitions and audit, so nothing alerts twice or can be settled twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.app import build_app
from bot.cli import main
from bot.config import load_config
from bot.events import Actor
from bot.store import open_store
from tests.conftest import (
    REFERENCE_BODY,
    SLACK_SIGNING_SECRET,
    FakeClock,
    Pinwatch,
    StartPinwatch,
    delivery,
    eventually,
    security,
    settings,
    tuning_for,
)
from tests.fake_slack import FakeSlack
from tests.test_operations import metric

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


async def cli(args: list[str]) -> int:
    """The command line, in a thread of its own as from a shell (it runs its own loop)."""
    return await asyncio.to_thread(main, args)


async def sqlite_pinwatch(
    config_path: Path, clock: FakeClock, slack: tuple[FakeSlack, str]
) -> Pinwatch:
    """pinwatch on the routing file's SQLite store, whatever DATABASE_URL the test has."""
    fake, url = slack
    app = build_app(settings(slack_api_url=url), load_config(config_path), tuning=tuning_for(clock))
    client = TestClient(TestServer(app))
    await client.start_server()
    return Pinwatch(client, app, fake, url, clock, config_path, database_url=None)


async def test_a_store_copied_to_postgresql_carries_on_where_sqlite_left_off(
    start_pinwatch: StartPinwatch,
    config_path: Path,
    clock: FakeClock,
    database_url: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert database_url is not None
    on_postgres = await start_pinwatch()  # empty, migrated: the copy's target
    await on_postgres.stop()
    slack = (on_postgres.slack, on_postgres.slack_url)
    on_sqlite = await sqlite_pinwatch(config_path, clock, slack)
    await on_sqlite.post_webhook(REFERENCE_BODY)
    await on_sqlite.wait_posted(1)
    assert await on_sqlite.click("acknowledge", 1, user="U0ALICE") == 200
    await on_sqlite.slack.wait_for_calls("chat.update")
    await on_sqlite.stop()
    sqlite_file = str(config_path.parent / "pinwatch.db")

    assert await cli(["store", "copy", sqlite_file, database_url]) == 0
    printed = capsys.readouterr().out
    assert "1 alerts, 2 audit" in printed
    assert "pinwatch-test-db-password" not in printed

    moved = await start_pinwatch(slack)
    alert = await moved.alert(1)
    assert alert.acknowledged is not None
    assert alert.slack_ts is not None
    # Meta redelivers: still the same change, no second alert.
    assert (await moved.post_webhook(REFERENCE_BODY))[0] == 200
    assert await metric(moved, "pinwatch_webhook_deliveries_total", 'result="duplicate"') == 1
    # A second acknowledgement is refused as before the move.
    assert await moved.click("acknowledge", 1, user="U0CAROL", name="carol") == 200
    await moved.slack.wait_for_calls("chat.postEphemeral")
    [told] = moved.slack.ephemerals
    assert str(told["text"]).startswith("Already acknowledged by <@U0ALICE>")
    # New events take the ids after the copied ones.
    await moved.post_webhook(delivery(security("PIN_CHANGED")))
    assert (await moved.wait_posted(2)).event.event == "PIN_CHANGED"

    # And back: PostgreSQL to a new SQLite file.
    back = str(config_path.parent / "back.db")
    assert await cli(["store", "copy", database_url, back]) == 0
    store = await open_store(back)
    try:
        copied = await store.get(1)
        assert copied is not None
        assert copied.acknowledged == alert.acknowledged
        assert [e.action for e in await store.audit_log(1)] == ["posted", "acknowledged"]
    finally:
        await store.close()


async def test_a_copy_into_a_store_that_holds_alerts_is_refused(
    pinwatch: Pinwatch, database_url: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert database_url is not None
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    source = str(tmp_path / "source.db")
    store = await open_store(source)
    await store.close()
    assert await cli(["store", "copy", source, database_url]) == 1
    assert "not empty" in capsys.readouterr().err
    assert await cli(["store", "copy", str(tmp_path / "missing.db"), database_url]) == 2
    assert await cli(["store", "copy", "mysql://x@y/z", database_url]) == 2


async def sqlite_source_with_nul(pinwatch: Pinwatch, config_path: Path, *, in_alert: bool) -> str:
    """A SQLite store as a real pinwatch left it, with a NUL that Meta or Slack sent: in an
    alert's field (the webhook takes it), or only in an audit row."""
    await pinwatch.stop()  # the PostgreSQL one: its database stays the (empty) target
    on_sqlite = await sqlite_pinwatch(
        config_path, pinwatch.clock, (pinwatch.slack, pinwatch.slack_url)
    )
    body = (
        delivery(security("PIN_RESET_REQUEST", requester="mallory\x00"))
        if in_alert
        else REFERENCE_BODY
    )
    assert (await on_sqlite.post_webhook(body))[0] == 200
    await on_sqlite.wait_posted(1)
    await on_sqlite.store.add_audit(1, "note", Actor("U0ALICE", "al\x00ice", 1.0), "x\x00y")
    await on_sqlite.stop()
    return str(config_path.parent / "pinwatch.db")


async def test_a_sqlite_store_holding_a_nul_can_be_copied_to_postgresql(
    pinwatch: Pinwatch, config_path: Path, database_url: str | None
) -> None:
    # The PostgreSQL store cleans NUL from everything it writes; the copy writes around it.
    assert database_url is not None
    source = await sqlite_source_with_nul(pinwatch, config_path, in_alert=True)
    assert await cli(["store", "copy", source, database_url]) == 0


async def test_a_copy_that_fails_leaves_the_target_empty_to_run_again(
    pinwatch: Pinwatch, config_path: Path, database_url: str | None
) -> None:
    assert database_url is not None
    source = await sqlite_source_with_nul(pinwatch, config_path, in_alert=False)
    target = await asyncpg.connect(database_url)
    try:
        # The target refuses audit rows, which are copied after the alerts.
        await target.execute(
            """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'No space left on device'; END $$;
               CREATE TRIGGER refuse BEFORE INSERT ON audit
               FOR EACH ROW EXECUTE FUNCTION refuse();"""
        )
        assert await cli(["store", "copy", source, database_url]) == 1
        assert await target.fetchval("SELECT count(*) FROM alerts") == 0
        await target.execute("DROP TRIGGER refuse ON audit; DROP FUNCTION refuse()")
        assert await cli(["store", "copy", source, database_url]) == 0
    finally:
        await target.close()


async def test_a_mistyped_database_url_is_refused_not_made_a_sqlite_file(
    pinwatch: Pinwatch,
    config_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = await sqlite_source_with_nul(pinwatch, config_path, in_alert=False)
    monkeypatch.chdir(tmp_path)
    typo = "postgresql:/pinwatch:secret-pw@db.internal/pinwatch"  # one slash short
    code = await cli(["store", "copy", source, typo])
    made = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    assert code == 2, f"exit {code}, made {made}: {capsys.readouterr().out}"
    assert not (tmp_path / "postgresql:").exists()
    assert "secret-pw" not in capsys.readouterr().err


async def test_a_copy_keeps_account_events_their_field_and_severity(
    start_pinwatch: StartPinwatch,
    config_path: Path,
    clock: FakeClock,
    database_url: str | None,
) -> None:
    assert database_url is not None
    on_postgres = await start_pinwatch()
    await on_postgres.stop()
    slack = (on_postgres.slack, on_postgres.slack_url)
    on_sqlite = await sqlite_pinwatch(config_path, clock, slack)
    offboarded = delivery({"field": "account_update", "value": {"event": "ACCOUNT_OFFBOARDED"}})
    terms = delivery(
        {"field": "account_update", "value": {"event": "MM_LITE_TERMS_SIGNED"}}, time=1748811999
    )
    for body in (offboarded, terms):
        assert (await on_sqlite.post_webhook(body))[0] == 200
    await on_sqlite.wait_posted(1)
    await eventually_routed(on_sqlite, 2)
    await on_sqlite.stop()

    assert await cli(["store", "copy", str(config_path.parent / "pinwatch.db"), database_url]) == 0
    moved = await start_pinwatch(slack)
    rows = await moved.query("SELECT id, field, event, severity FROM alerts ORDER BY id")
    assert rows == [
        (1, "account_update", "ACCOUNT_OFFBOARDED", "critical"),
        (2, "account_update", "MM_LITE_TERMS_SIGNED", "off"),
    ]
    assert (await moved.alert(1)).needs_acknowledgement
    # Off stays off on the new store: nothing waits for Slack, and redeliveries stay duplicates.
    assert await moved.store.count_unposted() == (0, None)
    assert (await moved.post_webhook(terms))[0] == 200
    assert await metric(moved, "pinwatch_webhook_deliveries_total", 'result="duplicate"') == 1


async def eventually_routed(pinwatch: Pinwatch, alert_id: int) -> None:
    async def routed() -> bool:
        return (await pinwatch.alert(alert_id)).channel is not None

    await eventually(routed)


async def test_announced_windows_are_copied_with_the_alerts_they_matched(
    start_pinwatch: StartPinwatch, config_path: Path, clock: FakeClock, database_url: str | None
) -> None:
    assert database_url is not None
    on_postgres = await start_pinwatch()
    await on_postgres.stop()
    slack = (on_postgres.slack, on_postgres.slack_url)
    on_sqlite = await sqlite_pinwatch(config_path, clock, slack)
    url = on_sqlite.slack.response_url()
    await on_sqlite.slack.slash_command(
        on_sqlite.client,
        "expect +15550783881 1h rotation",
        secret=SLACK_SIGNING_SECRET,
        response_url=url,
    )
    await on_sqlite.slack.wait_response(url)
    await on_sqlite.post_webhook(delivery(security("PIN_RESET_REQUEST"), time=int(clock())))
    await on_sqlite.wait_posted(1)
    await on_sqlite.stop()

    assert await cli(["store", "copy", str(config_path.parent / "pinwatch.db"), database_url]) == 0
    moved = await start_pinwatch(slack)
    [window] = await moved.store.open_windows(clock())
    assert (window.id, window.reason, window.opened_by.user_id) == (1, "rotation", "U0ALICE")
    assert window.announced
    expected = (await moved.alert(1)).expected
    assert expected is not None
    assert expected.window_id == 1
    # A new window takes the id after the copied one.
    url = moved.slack.response_url()
    await moved.slack.slash_command(
        moved.client,
        "expect 102290129340398 1h more",
        secret=SLACK_SIGNING_SECRET,
        response_url=url,
    )
    [reply] = await moved.slack.wait_response(url)
    assert reply["text"].startswith("Window #2 is open")

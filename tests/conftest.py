"""Shared fixtures: the real pinwatch app on loopback, talking to the fake Slack on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import io
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from yarl import URL

from bot import keys
from bot.app import Tuning, build_app
from bot.config import load_config
from bot.dispatcher import RetryPolicy
from bot.events import Alert
from bot.settings import Settings
from bot.store import Store
from bot.webhook import SIGNATURE_HEADER, sign
from tests.fake_slack import FakeSlack, start_fake_slack
from tests.postgres import fresh_database, throwaway_cluster

META_APP_SECRET = "test-meta-app-secret"
META_VERIFY_TOKEN = "test-verify-token"
SLACK_SIGNING_SECRET = "test-slack-signing-secret"
SLACK_BOT_TOKEN = "xoxb-test-token"
DATA = Path(__file__).parent / "data"
REFERENCE_BODY = (DATA / "security_reset_request.json").read_bytes()  # Meta's own example

TEST_CONFIG = """\
defaults:
  channel: "#wa-security"
  ack_timeout: 15m
  escalation:
    channel: "#security-escalations"
    mention: ["S0SECLEADS"]
teams:
  payments:
    channel: "C0PAYMENTS"
    mention: ["S0PAYSEC"]
    responders: ["S0PAYSEC", "U0ALICE"]
    ack_timeout: 10m
    escalation: {{channel: "#payments-leads", mention: ["U0BOB"]}}
  support:
    channel: "#support-security"
store:
  path: {store}
routes:
  - team: payments
    waba_ids: ["102290129340398"]
    phone_numbers: ["+1 555-078-3881"]
  - team: support
    phone_numbers: ["+44 20 7946 0018"]
"""

# Storm grouping has its own tests; tests that count one message per event turn it off.
NO_STORMS = "  storm:\n    threshold: 1000\n    window: 0.001\n"

SLACK_CHANNELS = {
    "wa-security": "C0WASEC",
    "security-escalations": "C0SECESC",
    "payments-leads": "C0PAYLEADS",
    "support-security": "C0SUPPORT",
}


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0) -> None:
    """Wait until a condition on the store holds (it changes without notifying anyone)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


SLACK_USERGROUPS = {"S0PAYSEC": ["U0CAROL", "U0DAVE"], "S0SECLEADS": ["U0BOB"]}


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def delivery(
    *changes: dict[str, Any], waba: str = "102290129340398", time: int = 1748811473
) -> dict[str, Any]:
    """A webhook body with one entry holding the given changes."""
    return {"object": "whatsapp_business_account", "entry": [entry(*changes, waba=waba, time=time)]}


def entry(
    *changes: dict[str, Any], waba: str = "102290129340398", time: int = 1748811473
) -> dict[str, Any]:
    return {"id": waba, "time": time, "changes": list(changes)}


def security(event: str, phone: str = "15550783881", **extra: str) -> dict[str, Any]:
    return {"field": "security", "value": {"display_phone_number": phone, "event": event, **extra}}


def action_ids(blocks: list[dict[str, Any]]) -> list[str]:
    """The buttons a message shows, in order."""
    return [
        element["action_id"]
        for block in blocks
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def block_actions_body(
    action_id: str,
    alert_id: int,
    *,
    user: str,
    name: str | None,
    alert: Alert,
    trigger: str | None = None,
) -> bytes:
    """A block_actions payload shaped like the one Slack sends (tests/data holds a real one)."""
    payload = json.loads((DATA / "slack_block_actions.json").read_text())
    if trigger is not None:
        payload["trigger_id"] = trigger
    payload["user"] = {"id": user, "username": name or user.lower(), "team_id": "T0FAKE"}
    if name is not None:
        payload["user"]["name"] = name
    payload["container"]["channel_id"] = alert.slack_channel
    payload["container"]["message_ts"] = alert.slack_ts
    payload["channel"]["id"] = alert.slack_channel
    payload["message"]["ts"] = alert.slack_ts
    payload["actions"][0]["action_id"] = action_id
    payload["actions"][0]["value"] = str(alert_id)
    return urlencode({"payload": json.dumps(payload)}).encode()


def view_submission_body(
    view: dict[str, Any], values: dict[str, dict[str, Any]], *, user: str, name: str | None
) -> bytes:
    """A view_submission as POST /slack/actions receives it."""
    payload = view_submission_payload(view, values, user=user, name=name)
    return urlencode({"payload": json.dumps(payload)}).encode()


def view_submission_payload(
    view: dict[str, Any], values: dict[str, dict[str, Any]], *, user: str, name: str | None
) -> dict[str, Any]:
    """A view_submission payload shaped like Slack's, for a view pinwatch opened."""
    payload: dict[str, Any] = json.loads((DATA / "slack_view_submission.json").read_text())
    payload["user"] = {"id": user, "username": name or user.lower(), "team_id": "T0FAKE"}
    if name is not None:
        payload["user"]["name"] = name
    payload["view"].update(
        blocks=view["blocks"],
        callback_id=view.get("callback_id", ""),
        private_metadata=view.get("private_metadata", ""),
        state={"values": values},
    )
    return payload


def verdict_values(verdict: str | None, note: str | None = None) -> dict[str, dict[str, Any]]:
    """The resolve modal's inputs as Slack states them on submission."""
    chosen: dict[str, Any] = {"type": "radio_buttons", "selected_option": None}
    if verdict is not None:
        chosen["selected_option"] = {
            "text": {"type": "plain_text", "text": verdict},
            "value": verdict,
        }
    return {
        "verdict": {"verdict": chosen},
        "note": {"note": {"type": "plain_text_input", "value": note}},
    }


@dataclass
class Pinwatch:
    """The bot under test, its HTTP client, and the fake Slack it posts to."""

    client: TestClient[web.Request, web.Application]
    app: web.Application
    slack: FakeSlack
    slack_url: str
    clock: FakeClock
    config_path: Path
    database_url: str | None  # None: SQLite

    @property
    def store(self) -> Store:
        return self.app[keys.STORE]

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of the store read from outside the app, as an operator would, on either
        backend (portable SQL, no parameters)."""
        if self.database_url is not None:
            db = await asyncpg.connect(self.database_url)
            try:
                return [tuple(row) for row in await db.fetch(sql)]
            finally:
                await db.close()
        path = Path(self.app[keys.CONFIG].config.store.path)
        if not path.exists():
            return []
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute(sql).fetchall()

    async def alert(self, alert_id: int) -> Alert:
        alert = await self.store.get(alert_id)
        assert alert is not None, f"no alert {alert_id} in the store"
        return alert

    async def wait_posted(self, alert_id: int) -> Alert:
        async def posted() -> bool:
            return (await self.alert(alert_id)).slack_ts is not None

        await eventually(posted)
        return await self.alert(alert_id)

    async def click(
        self,
        action: str,
        alert_id: int,
        *,
        user: str = "U0ALICE",
        name: str | None = "alice",
        timestamp: int | None = None,
        secret: str = SLACK_SIGNING_SECRET,
        body: bytes | None = None,
    ) -> int:
        """Press a button on an alert, as Slack posts it: form-encoded, signed, timestamped."""
        alert = await self.alert(alert_id)
        body = body or block_actions_body(
            f"pinwatch.{action}",
            alert_id,
            user=user,
            name=name,
            alert=alert,
            trigger=self.slack.new_trigger(),
        )
        status, _ = await self.post_slack_actions(body, timestamp=timestamp, secret=secret)
        return status

    async def post_slack_actions(
        self, body: bytes, *, timestamp: int | None = None, secret: str = SLACK_SIGNING_SECRET
    ) -> tuple[int, str]:
        """Post a signed interaction as Slack does: form-encoded, signed, timestamped."""
        stamp = str(int(self.clock()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack_signature(secret, stamp, body),
        }
        async with self.client.post("/slack/actions", data=body, headers=headers) as response:
            return response.status, await response.text()

    async def submit_view(
        self,
        view: dict[str, Any],
        values: dict[str, dict[str, Any]],
        *,
        user: str = "U0ALICE",
        name: str | None = "alice",
    ) -> tuple[int, str]:
        """Submit a modal that views.open showed, with the inputs given as Slack states them."""
        body = view_submission_body(view, values, user=user, name=name)
        return await self.post_slack_actions(body)

    async def stop(self) -> None:
        await self.client.close()

    async def post_webhook(
        self,
        payload: dict[str, Any] | bytes,
        *,
        secret: str = META_APP_SECRET,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret.encode(), body)}
        sent.update(headers or {})
        async with self.client.post("/webhook", data=io.BytesIO(body), headers=sent) as response:
            return response.status, await response.text()


def settings(
    *,
    slack_api_url: str,
    bot_token: str | None = SLACK_BOT_TOKEN,
    app_token: str | None = None,
    database_url: str | None = None,
    meta_app_secrets: Sequence[str] = (META_APP_SECRET,),
) -> Settings:
    return Settings(
        database_url=SecretStr(database_url) if database_url else None,
        meta_app_secrets=tuple(map(SecretStr, meta_app_secrets)),
        meta_verify_token=SecretStr(META_VERIFY_TOKEN),
        slack_signing_secret=SecretStr(SLACK_SIGNING_SECRET),
        slack_bot_token=SecretStr(bot_token) if bot_token else None,
        slack_app_token=SecretStr(app_token) if app_token else None,
        slack_api_url=slack_api_url,
    )


TEST_TUNING = Tuning(retry=RetryPolicy(first=0.05, limit=0.2), poll_interval=0.05)

StartPinwatch = Callable[..., Awaitable[Pinwatch]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(TEST_CONFIG.format(store=tmp_path / "pinwatch.db"))
    return path


@pytest.fixture
async def fake_slack(aiohttp_server: Any, clock: FakeClock) -> FakeSlack:
    fake, _ = await start_fake_slack(
        aiohttp_server, channels=SLACK_CHANNELS, usergroups=SLACK_USERGROUPS, clock=clock
    )
    return fake


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[URL]:
    """One throwaway cluster for the whole run; each test gets a database of its own."""
    with throwaway_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """Every test that runs pinwatch runs it on both store backends, so that neither rots.
    None: SQLite, at the routing file's store.path."""
    if request.param == "sqlite":
        yield None
        return
    server: URL = request.getfixturevalue("postgres_server")
    async with fresh_database(server, "pinwatch_test") as url:
        yield url


@pytest.fixture
async def start_pinwatch(
    aiohttp_server: Any, clock: FakeClock, config_path: Path, database_url: str | None
) -> AsyncIterator[StartPinwatch]:
    """Starts pinwatch (again, after a stop, on the same store) against a fake Slack."""
    started: list[TestClient[web.Request, web.Application]] = []

    async def start(
        slack: tuple[FakeSlack, str] | None = None,
        *,
        app_token: str | None = None,
        meta_app_secrets: Sequence[str] = (META_APP_SECRET,),
        **tuning: Any,
    ) -> Pinwatch:
        """`tuning` overrides fields of the tests' Tuning."""
        fake, url = slack or await start_fake_slack(
            aiohttp_server, channels=SLACK_CHANNELS, usergroups=SLACK_USERGROUPS, clock=clock
        )
        app = build_app(
            settings(
                slack_api_url=url,
                app_token=app_token,
                database_url=database_url,
                meta_app_secrets=meta_app_secrets,
            ),
            load_config(config_path),
            tuning=dataclasses.replace(tuning_for(clock), **tuning),
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        started.append(client)
        return Pinwatch(
            client=client,
            app=app,
            slack=fake,
            slack_url=url,
            clock=clock,
            config_path=config_path,
            database_url=database_url,
        )

    yield start
    for client in reversed(started):
        await client.close()


def tuning_for(clock: FakeClock) -> Tuning:
    return Tuning(
        clock=clock,
        retry=TEST_TUNING.retry,
        poll_interval=TEST_TUNING.poll_interval,
        config_poll_interval=0.05,
        storm_update_gap=0.05,
    )


@pytest.fixture
async def pinwatch(start_pinwatch: StartPinwatch) -> Pinwatch:
    return await start_pinwatch()

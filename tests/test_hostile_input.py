"""Hostile input: whatever reaches POST /webhook or POST /slack/actions, never a 5xx.

The inputs are correctly signed so that they get past the signature check into the parsers;
the signature cases come after, and then markup injection through the fields Meta sends.
Hypothesis drives the app from a worker thread: each example is a real HTTP request, run on
the test's event loop, against one app per test.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import keys
from bot.webhook import MAX_FIELD_CHARS, SIGNATURE_HEADER, sign
from tests.conftest import (
    DATA,
    META_APP_SECRET,
    SLACK_SIGNING_SECRET,
    Pinwatch,
    block_actions_body,
    delivery,
    eventually,
    security,
    slack_signature,
)

T = TypeVar("T")
REFERENCE = json.loads((DATA / "security_reset_request.json").read_text())
BLOCK_ACTIONS = json.loads((DATA / "slack_block_actions.json").read_text())
EXAMPLES = 200
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INJECTIONS = ("<!channel>", "<@U0ALICE>", "<https://evil.example|click>", "*bold*")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(2**63 - 2, 2**80)  # past SQLite's 64-bit INTEGER
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "security", "PIN_RESET_REQUEST", "whatsapp_business_account"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@dataclass
class Tally:
    """What one property test threw at the app and how it answered."""

    name: str
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def report(self) -> None:
        tried = sum(self.statuses.values())
        server_errors = sum(n for s, n in self.statuses.items() if s >= 500)
        figures = {"inputs": tried, "5xx": server_errors, "statuses": self.statuses}
        print(f"\nRELIABILITY hostile-{self.name}: {json.dumps(figures, sort_keys=True)}")


class Driver:
    """Runs coroutines on the test's loop from Hypothesis's worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)


async def in_thread(test: Callable[[Driver], None]) -> None:
    await asyncio.to_thread(test, Driver(asyncio.get_running_loop()))


def _as_text(value: Any) -> Any:
    """A change is the same however Meta typed its scalars (1, 1.0 and "1" agree)."""
    if isinstance(value, dict):
        return {str(key): _as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _canonical(value: Any) -> str:
    return json.dumps(_as_text(value), sort_keys=True, ensure_ascii=False)


def _waba(entry_id: Any) -> Any:
    # Meta sends the WABA ID as a string; a number is kept as its text rather than refused,
    # and the stored ID is cut to MAX_FIELD_CHARS (the raw value stays whole).
    return str(_as_text(entry_id))[:MAX_FIELD_CHARS]


def security_changes(body: bytes) -> set[tuple[Any, str]]:
    """(WABA ID, value) of every security change of every entry, read with the json module:
    what the store must hold after a 200, found without pinwatch's own parser."""
    doc = json.loads(body)
    return {
        (_waba(entry["id"]), _canonical(change["value"]))
        for entry in doc["entry"]
        for change in entry.get("changes") or []
        if change["field"] == "security"
    }


StoredChanges = Callable[[], set[tuple[Any, str]]]


@pytest.fixture
def stored_changes(pinwatch: Pinwatch) -> StoredChanges:
    """(WABA ID, value) of every alert in the store, read from outside the app, in a thread and
    loop of their own: the checks call it from hypothesis' thread and from the test's loop."""

    def read() -> set[tuple[Any, str]]:
        query = pinwatch.query("SELECT waba_id, value FROM alerts")
        with ThreadPoolExecutor(1) as outside:
            rows = outside.submit(asyncio.run, query).result()
        return {
            (waba, _canonical(json.loads(value) if isinstance(value, str) else value))
            for waba, value in rows
        }

    return read


async def post_raw(
    pinwatch: Pinwatch, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, float]:
    started = time.monotonic()
    async with pinwatch.client.post("/webhook", data=io.BytesIO(body), headers=headers) as r:
        await r.read()
        return r.status, time.monotonic() - started


async def post_signed(pinwatch: Pinwatch, body: bytes) -> int:
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(META_APP_SECRET.encode(), body),
    }
    status, _ = await post_raw(pinwatch, body, headers)
    return status


async def still_answers(pinwatch: Pinwatch) -> None:
    async with pinwatch.client.get("/healthz") as r:
        assert r.status == 200
    ok = json.dumps(delivery(security("PIN_CHANGED", phone=str(time.monotonic_ns())))).encode()
    assert await post_signed(pinwatch, ok) == 200


def check_webhook_answer(status: int, body: bytes, stored_changes: StoredChanges) -> None:
    """Never a 5xx; a 200 means every security change in the body is in the store."""
    assert status < 500, f"{status} for {body[:300]!r}"
    assert status in (200, 400, 413), status
    if status == 200:
        missing = security_changes(body) - stored_changes()
        assert not missing, f"answered 200 but {len(missing)} security changes are not stored"


def no_logged_crashes(caplog: pytest.LogCaptureFixture) -> None:
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not crashes, [f"{r.name}: {r.getMessage()}" for r in crashes[:5]]


# --- POST /webhook ------------------------------------------------------------------------------


async def test_signed_arbitrary_bytes_never_give_a_5xx(
    pinwatch: Pinwatch, stored_changes: StoredChanges, caplog: pytest.LogCaptureFixture
) -> None:
    tally = Tally("webhook-bytes")

    @HYPOTHESIS
    @given(
        st.binary(max_size=2000)
        | st.text(max_size=500).map(str.encode)
        | json_values.map(lambda v: json.dumps(v).encode())
    )
    def check(driver: Driver, body: bytes) -> None:
        status = driver.run(post_signed(pinwatch, body))
        tally.add(status)
        check_webhook_answer(status, body, stored_changes)

    await in_thread(lambda driver: check(driver))
    tally.report()
    await still_answers(pinwatch)
    no_logged_crashes(caplog)


def paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, root included."""
    found = [at]
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*at, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*at, index))
    return found


def replace_at(doc: Any, at: tuple[Any, ...], value: Any) -> Any:
    if not at:
        return value
    parent = doc
    for step in at[:-1]:
        parent = parent[step]
    parent[at[-1]] = value
    return doc


def delete_at(doc: Any, at: tuple[Any, ...]) -> Any:
    if not at:
        return doc
    parent = doc
    for step in at[:-1]:
        parent = parent[step]
    del parent[at[-1]]
    return doc


def grow(entries: list[Any], *, copy_change: bool) -> None:
    """Repeat the first entry, or its first change; the copy's values are marked so that it is
    a change of its own, not a redelivery that dedup would fold into the first."""
    first = entries[0]
    changes = first.get("changes") if isinstance(first, dict) else None
    if copy_change and isinstance(changes, list) and changes:
        changes.append(copy.deepcopy(changes[0]))
        copies = [changes[-1]]
    else:
        entries.append(copy.deepcopy(first))
        added = entries[-1].get("changes") if isinstance(entries[-1], dict) else None
        copies = added if isinstance(added, list) else []
    mark = len(json.dumps(entries))  # grows with every copy, so no two copies share it
    for change in copies:
        if isinstance(change, dict) and isinstance(change.get("value"), dict):
            change["value"]["batch_copy"] = mark


@st.composite
def mutated_reference(draw: st.DrawFn) -> bytes:
    """The reference delivery with a few fields replaced by anything, deleted, or duplicated."""
    doc = copy.deepcopy(REFERENCE)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.sampled_from(paths(doc)))
        action = draw(st.sampled_from(["replace", "replace", "delete", "grow"]))
        if action == "replace":
            doc = replace_at(doc, at, draw(json_values))
        elif action == "delete":
            doc = delete_at(doc, at)
        else:  # a batch: the entry, or a change in it, repeated as a distinct change
            entries = doc.get("entry") if isinstance(doc, dict) else None
            if isinstance(entries, list) and entries:
                grow(entries, copy_change=draw(st.booleans()))
    # Unicode the way Meta sends it (\\u escapes) or raw UTF-8.
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


async def test_signed_mutations_of_a_real_delivery_never_give_a_5xx(
    pinwatch: Pinwatch, stored_changes: StoredChanges, caplog: pytest.LogCaptureFixture
) -> None:
    tally = Tally("webhook-mutations")

    @HYPOTHESIS
    @given(mutated_reference())
    def check(driver: Driver, body: bytes) -> None:
        status = driver.run(post_signed(pinwatch, body))
        tally.add(status)
        check_webhook_answer(status, body, stored_changes)

    await in_thread(lambda driver: check(driver))
    tally.report()
    await still_answers(pinwatch)
    no_logged_crashes(caplog)


def maybe_wrong(draw: st.DrawFn, good: st.SearchStrategy[Any]) -> Any:
    """Usually a value of the right type (unicode included), sometimes anything at all."""
    return draw(json_values if draw(st.integers(0, 3)) == 0 else good)


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    """A security delivery in which any field, or several, may hold the wrong type."""
    text = st.text(min_size=1, max_size=30)
    events = st.sampled_from(["PIN_RESET_REQUEST", "PIN_CHANGED", "PIN_REQUEST_SUCCESS"]) | text
    changes = []
    for _ in range(draw(st.integers(1, 3))):
        value = {
            "display_phone_number": maybe_wrong(draw, st.from_regex(r"\A\+?[0-9 -]{1,20}\Z")),
            "event": maybe_wrong(draw, events),
        }
        if draw(st.booleans()):
            value["requester"] = maybe_wrong(draw, text)
        changes.append({"field": maybe_wrong(draw, st.just("security")), "value": value})
    entry = {
        "id": maybe_wrong(draw, st.from_regex(r"\A[0-9]{1,18}\Z") | text),
        "time": maybe_wrong(draw, st.integers(0, 2**31)),
        "changes": maybe_wrong(draw, st.just(changes)),
    }
    doc = {
        "object": maybe_wrong(draw, st.just("whatsapp_business_account")),
        "entry": maybe_wrong(draw, st.just([entry])),
    }
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


async def test_signed_wrong_types_in_every_field_never_give_a_5xx(
    pinwatch: Pinwatch, stored_changes: StoredChanges, caplog: pytest.LogCaptureFixture
) -> None:
    tally = Tally("webhook-wrong-types")

    @HYPOTHESIS
    @given(wrong_types())
    def check(driver: Driver, body: bytes) -> None:
        status = driver.run(post_signed(pinwatch, body))
        tally.add(status)
        check_webhook_answer(status, body, stored_changes)

    await in_thread(lambda driver: check(driver))
    tally.report()
    await still_answers(pinwatch)
    # What was stored must also reach Slack, rendered within Block Kit's limits.
    await pinwatch.slack.wait_for(
        lambda s: not any(c.pending for c in s.calls) and len(s.calls_to("chat.postMessage")) > 0
    )
    refused = [c for c in pinwatch.slack.calls_to("chat.postMessage") if c.failed]
    assert not refused, [c.error for c in refused[:5]]
    no_logged_crashes(caplog)


async def test_deep_nesting_and_huge_strings(
    pinwatch: Pinwatch, stored_changes: StoredChanges, caplog: pytest.LogCaptureFixture
) -> None:
    levels = 100_000
    deep_object = b'{"a":' * levels + b"1" + b"}" * levels
    deep_array = b"[" * levels + b"]" * levels
    inner = b'{"x":' * levels + b"null" + b"}" * levels
    deep_in_value = (
        b'{"object":"whatsapp_business_account","entry":[{"id":"1","time":1,"changes":'
        b'[{"field":"security","value":{"display_phone_number":"1","event":"E","deep":'
        + inner
        + b"}}]}]}"
    )
    huge = "\u00e9" + "9" * 2_900_000
    huge_fields = [
        delivery(security("PIN_RESET_REQUEST", phone=huge)),
        delivery(security(huge)),
        delivery(security("PIN_RESET_REQUEST", requester=huge)),
        delivery(security("PIN_CHANGED"), waba=huge),
        delivery(security("PIN_CHANGED", padding=huge)),
    ]
    statuses = []
    for body in (deep_object, deep_array, deep_in_value):
        status, took = await post_raw(
            pinwatch,
            body,
            {SIGNATURE_HEADER: sign(META_APP_SECRET.encode(), body)},
        )
        statuses.append(status)
        assert status == 400, status
        assert took < 5, took
    for payload in huge_fields:
        body = json.dumps(payload).encode()
        assert len(body) < 3 * 1024 * 1024
        status = await post_signed(pinwatch, body)
        statuses.append(status)
        check_webhook_answer(status, body, stored_changes)
        assert status == 200
    print(f"\nRELIABILITY hostile-deep-and-huge: {json.dumps({'statuses': statuses})}")
    await still_answers(pinwatch)
    # Each 2.9 MB event becomes a message within Slack's limits.
    await pinwatch.slack.wait_for_calls("chat.postMessage", len(huge_fields) + 1, timeout=20)
    assert not [c for c in pinwatch.slack.calls_to("chat.postMessage") if c.failed]
    no_logged_crashes(caplog)


async def test_a_number_too_big_for_the_store_is_a_4xx_and_spoils_no_other_delivery(
    pinwatch: Pinwatch, stored_changes: StoredChanges
) -> None:
    """SQLite integers stop at 2**63 - 1; JSON numbers do not. Deliveries share one commit."""
    too_big = [
        json.dumps(delivery(security("PIN_CHANGED"), time=t)).encode()
        for t in (2**63, 2**70, -(2**70))
    ]
    good = [
        json.dumps(delivery(security("PIN_CHANGED", phone=f"1555000{i:04d}"))).encode()
        for i in range(6)
    ]
    bodies = [too_big[0], *good[:3], too_big[1], *good[3:], too_big[2]]
    statuses = await asyncio.gather(*(post_signed(pinwatch, body) for body in bodies))
    print(f"\nRELIABILITY hostile-big-numbers: {json.dumps({'statuses': statuses})}")
    assert [s for b, s in zip(bodies, statuses, strict=True) if b in good] == [200] * len(good)
    for body, status in zip(bodies, statuses, strict=True):
        check_webhook_answer(status, body, stored_changes)


# --- POST /slack/actions ------------------------------------------------------------------------


def is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class SlackSigner:
    """Signs each request with its own timestamp inside the window, so none is a replay."""

    def __init__(self, pinwatch: Pinwatch) -> None:
        self._pinwatch = pinwatch
        self._count = 0

    async def post(self, body: bytes) -> int:
        self._count += 1
        stamp = str(int(self._pinwatch.clock()) - self._count % 290)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack_signature(SLACK_SIGNING_SECRET, stamp, body),
        }
        async with self._pinwatch.client.post(
            "/slack/actions", data=io.BytesIO(body), headers=headers
        ) as r:
            await r.read()
            return r.status


form_bodies = (
    st.binary(max_size=1000)
    | st.dictionaries(st.text(max_size=10), st.text(max_size=60), max_size=4).map(
        lambda d: urlencode(d).encode()
    )
    | json_values.map(lambda v: urlencode({"payload": json.dumps(v)}).encode())
)


@st.composite
def mutated_block_actions(draw: st.DrawFn) -> bytes:
    doc = copy.deepcopy(BLOCK_ACTIONS)
    doc["actions"][0]["action_id"] = draw(
        st.sampled_from(["pinwatch.acknowledge", "pinwatch.escalate", "other"])
    )
    doc["actions"][0]["value"] = draw(
        st.sampled_from(["1", "2", "0", "99999999999999999999999", "-1"])
        | st.integers(-(2**70), 2**70).map(str)
        | json_values
    )
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.sampled_from(paths(doc)))
        replace = draw(st.booleans())
        doc = replace_at(doc, at, draw(json_values)) if replace else delete_at(doc, at)
    return urlencode({"payload": json.dumps(doc, ensure_ascii=draw(st.booleans()))}).encode()


async def posted_alerts(pinwatch: Pinwatch) -> None:
    """Two alerts in Slack, so that mutated clicks can name real ones."""
    assert await pinwatch.post_webhook(REFERENCE) == (200, "ok")
    assert (await pinwatch.post_webhook(delivery(security("PIN_CHANGED"))))[0] == 200
    await pinwatch.wait_posted(1)
    await pinwatch.wait_posted(2)


async def test_signed_arbitrary_form_bodies_never_give_a_5xx(
    pinwatch: Pinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    await posted_alerts(pinwatch)
    signer = SlackSigner(pinwatch)
    tally = Tally("actions-forms")
    # Always tried, whatever Hypothesis draws: an alert id no SQLite integer can hold.
    huge_id = copy.deepcopy(BLOCK_ACTIONS)
    huge_id["actions"][0]["value"] = "99999999999999999999999"
    tally.add(await signer.post(urlencode({"payload": json.dumps(huge_id)}).encode()))

    @HYPOTHESIS
    @given(form_bodies | mutated_block_actions())
    def check(driver: Driver, body: bytes) -> None:
        status = driver.run(signer.post(body))
        tally.add(status)
        assert status < 500, f"{status} for {body[:300]!r}"
        if status == 401:
            # slack_sdk's verifier decodes the body as UTF-8 first: a signed body that is not
            # UTF-8 is refused as unsigned. Still a 4xx; Slack itself only sends UTF-8.
            assert not is_utf8(body), f"signed body refused: {body[:300]!r}"
        else:
            assert status in (200, 400), f"{status} for {body[:300]!r}"

    await in_thread(lambda driver: check(driver))
    tally.report()
    async with pinwatch.client.get("/healthz") as r:
        assert r.status == 200
    await asyncio.sleep(0)
    await pinwatch.app[keys.ACTIONS].close(grace=10)
    no_logged_crashes(caplog)


# --- signatures ---------------------------------------------------------------------------------


async def test_every_bad_webhook_signature_is_401_and_changes_nothing(
    pinwatch: Pinwatch,
) -> None:
    body = json.dumps(REFERENCE).encode()
    good = sign(META_APP_SECRET.encode(), body)
    tampered = body.replace(b"15550783881", b"15550783882")
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "missing": (body, {}),
        "empty": (body, {SIGNATURE_HEADER: ""}),
        "wrong": (body, {SIGNATURE_HEADER: "sha256=" + "0" * 64}),
        "sha1 prefix": (body, {SIGNATURE_HEADER: "sha1=" + good.removeprefix("sha256=")}),
        "no prefix": (body, {SIGNATURE_HEADER: good.removeprefix("sha256=")}),
        "prefix only": (body, {SIGNATURE_HEADER: "sha256="}),
        "other secret": (body, {SIGNATURE_HEADER: sign(b"another-app-secret", body)}),
        "body changed after signing": (tampered, {SIGNATURE_HEADER: good}),
        "truncated": (body, {SIGNATURE_HEADER: good[:-1]}),
        "non-ascii": (body, {SIGNATURE_HEADER: "sha256=" + "\u00e9" * 64}),
    }
    before = await snapshot_of(pinwatch)
    for name, (sent, headers) in cases.items():
        status, _ = await post_raw(pinwatch, sent, {"Content-Type": "application/json", **headers})
        assert status == 401, name
    assert await snapshot_of(pinwatch) == before
    assert pinwatch.slack.calls_to("chat.postMessage") == []


async def snapshot_of(pinwatch: Pinwatch) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of the store, read from outside the app."""
    alerts = await pinwatch.query("SELECT * FROM alerts ORDER BY id")
    audit = await pinwatch.query("SELECT * FROM audit ORDER BY id")
    return alerts, audit


async def test_every_bad_slack_signature_is_401_and_changes_nothing(pinwatch: Pinwatch) -> None:
    await posted_alerts(pinwatch)
    alert = await pinwatch.alert(1)
    body = block_actions_body("pinwatch.acknowledge", 1, user="U0ALICE", name="alice", alert=alert)
    now = int(pinwatch.clock())

    def headers(stamp: int | str, signature: str) -> dict[str, str]:
        return {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(stamp),
            "X-Slack-Signature": signature,
        }

    good = slack_signature(SLACK_SIGNING_SECRET, str(now), body)
    cases: dict[str, tuple[bytes, dict[str, str]]] = {
        "missing": (body, {"Content-Type": "application/x-www-form-urlencoded"}),
        "no timestamp": (body, {"X-Slack-Signature": good}),
        "wrong": (body, headers(now, "v0=" + "0" * 64)),
        "wrong prefix": (body, headers(now, "v1=" + good.removeprefix("v0="))),
        "other secret": (body, headers(now, slack_signature("another-secret", str(now), body))),
        "body changed after signing": (body.replace(b"U0ALICE", b"U0CAROL"), headers(now, good)),
        "timestamp changed after signing": (body, headers(now - 1, good)),
        "too old": (
            body,
            headers(now - 301, slack_signature(SLACK_SIGNING_SECRET, str(now - 301), body)),
        ),
        "in the future": (
            body,
            headers(now + 301, slack_signature(SLACK_SIGNING_SECRET, str(now + 301), body)),
        ),
        "non-numeric timestamp": (
            body,
            headers("1e9", slack_signature(SLACK_SIGNING_SECRET, "1e9", body)),
        ),
    }
    before = await snapshot_of(pinwatch)
    for name, (sent, sent_headers) in cases.items():
        async with pinwatch.client.post(
            "/slack/actions", data=io.BytesIO(sent), headers=sent_headers
        ) as r:
            assert r.status == 401, name
    assert await snapshot_of(pinwatch) == before
    assert pinwatch.slack.ephemerals == []

    # The valid request is applied once; the same request again is a replay.
    async with pinwatch.client.post("/slack/actions", data=body, headers=headers(now, good)) as r:
        assert r.status == 200

    async def acknowledged() -> bool:
        return (await pinwatch.alert(1)).acknowledged is not None

    await eventually(acknowledged)
    applied = await snapshot_of(pinwatch)
    async with pinwatch.client.post("/slack/actions", data=body, headers=headers(now, good)) as r:
        assert r.status == 401
    await pinwatch.app[keys.ACTIONS].close(grace=10)
    assert await snapshot_of(pinwatch) == applied
    assert pinwatch.slack.ephemerals == []  # not even an "already acknowledged" answer


# --- injection ----------------------------------------------------------------------------------


def mrkdwn_and_text(message: Any) -> list[str]:
    """What Slack parses for mentions and links: mrkdwn text objects and the fallback text."""
    found = [message.text]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str):
                found.append(node["text"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(message.blocks)
    return found


async def test_markup_in_any_field_is_shown_not_interpreted(pinwatch: Pinwatch) -> None:
    hostile = " ".join(INJECTIONS)
    payloads = [
        delivery(
            security("PIN_RESET_REQUEST", phone=f"+1 555 {hostile}", requester=hostile),
            waba=f"1029 {hostile}",
        ),
        delivery(security(f"PIN_{hostile}", phone=hostile, requester=hostile), waba=hostile),
    ]
    for payload in payloads:
        assert (await pinwatch.post_webhook(payload))[0] == 200
    await pinwatch.wait_posted(1)
    await pinwatch.wait_posted(2)
    # The escalation page repeats the fields: press Escalate on both.
    for alert_id in (1, 2):
        assert await pinwatch.click("escalate", alert_id, user="U0CAROL", name="carol") == 200
    await pinwatch.slack.wait_for(lambda s: len(s.top_level("#security-escalations")) == 2)

    leaks = []
    for message in pinwatch.slack.messages():
        for index, text in enumerate(mrkdwn_and_text(message)):
            needles = ["<!channel>", "<@U0ALICE>", "<https://evil"]
            # Bold counts where Slack formats it: mrkdwn outside code blocks (index 0 is the
            # fallback text, shown plain in notifications).
            formatted = "".join(text.split("```")[::2])
            leaks += [(message.channel, n, text[:300]) for n in needles if n in text]
            if index > 0 and "*bold*" in formatted:
                leaks.append((message.channel, "*bold*", text[:300]))
    for leak in leaks:
        print("LEAK", leak)
    assert not leaks, leaks

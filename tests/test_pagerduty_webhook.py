"""PagerDuty's v3 webhooks: the signature check (refusals first) and the payload, hostile ones
included. Pure: the handler that answers 401 or 400 is the integrator's."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from bot.pagerduty.events import dedup_key
from bot.pagerduty.webhook import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    Agent,
    IncidentChange,
    IncidentEvent,
    PayloadError,
    SignatureError,
    parse_webhook,
    signature_header,
    verify_signature,
)
from tests.fake_pagerduty import WEBHOOK_SECRET, signed_webhook, webhook_event
from tests.test_pagerduty_events import alert_of

SECRET = WEBHOOK_SECRET.encode()
OLD = b"old-pagerduty-webhook-secret"
BODY = json.dumps(webhook_event("incident.acknowledged", incident_key="k")).encode()


def v1(body: bytes, secret: bytes) -> str:
    return "v1=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# -- the signature: refusals ---------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_signature_is_refused(header: str | None) -> None:
    with pytest.raises(SignatureError, match="missing signature"):
        verify_signature([SECRET], BODY, header)


@pytest.mark.parametrize(
    "header",
    [
        "f03de6f61df6e454f3620c4d6aca17ad072d3f8bbb2760eac3b2ad391b5e8073",  # no v1=
        "sha256=" + "0" * 64,  # Meta's shape
        "v1=" + "0" * 63,
        "v1=" + "0" * 65,
        "v1=" + "g" * 64,
        "v1 =" + "0" * 64,
        "v2=" + "0" * 64,  # a version pinwatch does not know, alone
        ",,,",
        "v1=" + "\u0660" * 64,  # Arabic-Indic zeros are digits, not hex
    ],
)
def test_a_malformed_signature_is_refused(header: str) -> None:
    with pytest.raises(SignatureError, match="not v1=<64 hex digits>"):
        verify_signature([SECRET], BODY, header)


def test_a_signature_with_another_secret_or_of_another_body_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature([SECRET], BODY, v1(BODY, b"someone-else"))
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature([SECRET], BODY + b" ", v1(BODY, SECRET))
    # The raw bytes are signed: the same JSON written otherwise is another body.
    reformatted = json.dumps(json.loads(BODY), indent=2).encode()
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature([SECRET], reformatted, v1(BODY, SECRET))


def test_with_no_secret_set_every_webhook_is_refused() -> None:
    with pytest.raises(SignatureError, match="PAGERDUTY_WEBHOOK_SECRET"):
        verify_signature([], BODY, v1(BODY, SECRET))


# -- the signature: accepted ---------------------------------------------------------------------


def test_a_good_signature_is_accepted() -> None:
    assert verify_signature([SECRET], BODY, v1(BODY, SECRET)) == 0
    assert verify_signature([SECRET], BODY, v1(BODY, SECRET).upper().replace("V1=", "v1=")) == 0


def test_during_pagerdutys_rotation_any_of_its_signatures_will_do() -> None:
    # PagerDuty signs with the old and the new secret while rotating; pinwatch may know either.
    header = f"{v1(BODY, OLD)},{v1(BODY, SECRET)}"
    assert verify_signature([SECRET], BODY, header) == 0
    assert verify_signature([OLD], BODY, header) == 0
    assert verify_signature([SECRET], BODY, f" {v1(BODY, OLD)} , {v1(BODY, SECRET)} ") == 0
    # A version pinwatch does not know yet is skipped, not refused.
    assert verify_signature([SECRET], BODY, f"v2={'0' * 64},{v1(BODY, SECRET)}") == 0


def test_during_pinwatchs_rotation_any_of_its_secrets_will_do_and_says_which() -> None:
    assert verify_signature([OLD, SECRET], BODY, v1(BODY, SECRET)) == 1
    assert verify_signature([OLD, SECRET], BODY, v1(BODY, OLD)) == 0


def test_the_fakes_signed_webhook_is_what_pagerduty_sends() -> None:
    body, headers = signed_webhook(webhook_event("incident.resolved", incident_key="k"))
    assert headers[SIGNATURE_HEADER] == v1(body, SECRET)
    assert verify_signature([SECRET], body, headers[SIGNATURE_HEADER]) == 0
    _, rotated = signed_webhook(body, "a", "b")
    assert rotated[SIGNATURE_HEADER] == f"{v1(body, b'a')},{v1(body, b'b')}"
    assert signature_header(body, b"a", b"b") == rotated[SIGNATURE_HEADER]


# -- the payload -------------------------------------------------------------------------------


def parsed(payload: dict[str, Any]) -> IncidentEvent:
    return parse_webhook(json.dumps(payload).encode())


def test_an_acknowledgement_names_the_incident_its_key_who_and_when() -> None:
    key = dedup_key(alert_of())
    event = parsed(webhook_event("incident.acknowledged", incident_key=key, event_id="E1"))
    assert event == IncidentEvent(
        event_id="E1",
        event_type="incident.acknowledged",
        change=IncidentChange.ACKNOWLEDGED,
        incident_id="PFAKE001",
        incident_key=key,
        html_url="https://fake.pagerduty.test/incidents/PFAKE001",
        agent=Agent(
            id="PUSER01",
            type="user_reference",
            name="Alice Oncall",
            html_url="https://fake.pagerduty.test/users/PUSER01",
        ),
        occurred_at=1796223000.123,  # 2026-12-02T14:50:00.123Z
    )
    assert event.agent is not None
    assert event.agent.is_person
    assert event.agent.describe() == "Alice Oncall"


def test_a_resolution_by_the_integration_itself_is_not_a_persons() -> None:
    # pinwatch's own resolve, sent through the Events API, comes back as a webhook too.
    event = parsed(
        webhook_event(
            "incident.resolved", incident_key="k", agent_name="WhatsApp security (Events API v2)",
            agent_type="service_reference",
        )
    )  # fmt: skip
    assert event.change is IncidentChange.RESOLVED
    assert event.agent is not None
    assert not event.agent.is_person


def test_pagerdutys_own_steps_have_no_agent() -> None:
    event = parsed(webhook_event("incident.resolved", incident_key="k", agent_name=None))
    assert event.agent is None


@pytest.mark.parametrize(
    "event_type",
    ["incident.triggered", "incident.escalated", "incident.unacknowledged", "service.updated"],
)
def test_other_event_types_are_read_and_marked_other(event_type: str) -> None:
    assert parsed(webhook_event(event_type, incident_key="k")).change is IncidentChange.OTHER


def test_an_incident_note_refers_to_its_incident() -> None:
    payload = webhook_event("incident.annotated", incident_key=None)
    payload["event"]["data"] = {
        "incident": {
            "html_url": "https://fake.pagerduty.test/incidents/PGR0VU2",
            "id": "PGR0VU2",
            "type": "incident_reference",
        },
        "id": "P2LA89X",
        "content": "Looking into it",
        "type": "incident_note",
    }
    event = parsed(payload)
    assert (event.change, event.incident_id, event.incident_key) == (
        IncidentChange.OTHER,
        "PGR0VU2",
        None,
    )
    assert event.html_url == "https://fake.pagerduty.test/incidents/PGR0VU2"


def test_an_incident_made_elsewhere_may_have_no_key_and_fields_pagerduty_adds_are_ignored() -> None:
    payload = webhook_event("incident.acknowledged", incident_key=None)
    payload["event"]["brand_new_field"] = {"nested": [1, 2, 3]}
    payload["event"]["data"]["priority"] = {"summary": "P1"}
    payload["unexpected"] = True
    event = parsed(payload)
    assert event.incident_key is None
    assert event.change is IncidentChange.ACKNOWLEDGED


def test_a_link_that_is_not_http_is_dropped() -> None:
    payload = webhook_event("incident.acknowledged", incident_key="k")
    payload["event"]["data"]["html_url"] = "javascript:alert(1)"
    payload["event"]["agent"]["html_url"] = "data:text/html,hi"
    event = parsed(payload)
    assert event.html_url is None
    assert event.agent is not None
    assert event.agent.html_url is None


def test_a_time_without_a_zone_is_utc() -> None:
    payload = webhook_event("incident.acknowledged", incident_key="k")
    payload["event"]["occurred_at"] = "2026-12-02T14:50:00"
    assert parsed(payload).occurred_at == 1796223000.0


# -- hostile bodies ------------------------------------------------------------------------------


def with_event(**fields: Any) -> bytes:
    payload = webhook_event("incident.acknowledged", incident_key="k")
    payload["event"].update(fields)
    return json.dumps(payload).encode()


def with_data(**fields: Any) -> bytes:
    payload = webhook_event("incident.acknowledged", incident_key="k")
    payload["event"]["data"].update(fields)
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is not JSON"),
        (b"not json", "body is not JSON"),
        (b"\xff\xfe{}", "body is not JSON"),
        (b'{"event": {"id": "E1", "event_type": "incident.acknowledged"', "body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "body is not JSON"),
        (b"[]", "not a PagerDuty v3 webhook"),
        (b"{}", "not a PagerDuty v3 webhook: event: Field required"),
        (b'{"event": null}', "not a PagerDuty v3 webhook: event"),
        (b'{"event": {"event_type": "incident.resolved"}}', "event.id: Field required"),
        (b'{"event": {"id": "E1", "event_type": 7}}', "event.event_type"),
        (with_event(occurred_at="yesterday"), "event.occurred_at"),
        (with_event(agent="Alice"), "event.agent"),
        (with_event(data=[1]), "event.data"),
        (with_data(incident_key="k" * 256), "event.data.incident_key"),
        (with_data(html_url="https://x.test/" + "a" * 3000), "event.data.html_url"),
        (with_data(type="service"), "incident.acknowledged without its incident"),
        (with_event(data=None), "incident.acknowledged without its incident"),
        (b" " * (MAX_BODY_BYTES + 1), f"larger than {MAX_BODY_BYTES} bytes"),
    ],
)
def test_a_hostile_body_is_a_clear_payload_error(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("(", r"\(")):
        parse_webhook(body)

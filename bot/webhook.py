"""Meta's side: the subscription handshake, the signature check and the payload models."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bot import keys
from bot.account_events import ACCOUNT_FIELDS, account_event, unknown_field_event
from bot.catalog import IGNORED_FIELDS
from bot.events import MAX_FIELD_CHARS as MAX_FIELD_CHARS
from bot.events import SECURITY_FIELD, SecurityEvent, as_text
from bot.metrics import Delivery
from bot.store import StoreError

log = logging.getLogger(__name__)

WHATSAPP_OBJECT = "whatsapp_business_account"
SIGNATURE_HEADER = "X-Hub-Signature-256"
# Meta sends up to 3 MB (1,000 batched updates); aiohttp's default limit is 1 MiB.
MAX_BODY_BYTES = 3 * 1024 * 1024


class SignatureError(Exception):
    pass


class MalformedDelivery(Exception):
    pass


_SIGNATURE_SHAPE = re.compile(r"sha256=([0-9a-fA-F]{64})")


def signature_digest(header: str | None) -> str:
    """The hex digest a signature header carries, checked for shape only: this is all that can
    be known of a delivery before its body has been read."""
    if not header:
        raise SignatureError("missing signature")
    shaped = _SIGNATURE_SHAPE.fullmatch(header.strip())
    if shaped is None:
        raise SignatureError("signature is not sha256=<64 hex digits>")
    return shaped.group(1).lower()


def verify_signature(secrets: Sequence[bytes], body: bytes, header: str | None) -> int:
    """Which of the secrets signed the body (0 for the first). Meta signs the raw bytes it
    sends: HMAC-SHA256, hex, prefixed 'sha256='."""
    given = bytes.fromhex(signature_digest(header))
    # Every secret is tried, matching or not, so that the time taken says nothing of which one
    # matched; each comparison takes constant time.
    matches = [hmac.compare_digest(hmac.digest(key, body, "sha256"), given) for key in secrets]
    if True not in matches:
        raise SignatureError("signature does not match")
    return matches.index(True)


def sign(secret: bytes, body: bytes) -> str:
    """The header value Meta would send for this body (used by send-test and the tests)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# Meta sends IDs and numbers as strings today; accept numbers too rather than drop an event,
# as the text dedup gives them (so 102290129340398.0 is the WABA 102290129340398).
Text = Annotated[str, BeforeValidator(as_text)]


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields Meta adds later must not break parsing


class SecurityValue(_Tolerant):
    display_phone_number: Text = ""
    event: Text = ""
    requester: Text | None = None


class Change(_Tolerant):
    field: str
    value: Any = None


class Entry(_Tolerant):
    id: Text
    # A Unix time; the bound keeps it within what SQLite can store.
    time: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    changes: list[Change] = Field(default_factory=list)


class WebhookDelivery(_Tolerant):
    object: str
    entry: list[Entry]


class _ChangeOutline(BaseModel):
    field: str


class _EntryOutline(BaseModel):
    changes: list[_ChangeOutline] = Field(default_factory=list)


class _DeliveryOutline(BaseModel):
    """Just enough to tell which fields a delivery carries: most of a busy webhook URL's traffic
    is `messages` and `statuses`, and their values need not be built into Python objects."""

    object: str
    entry: list[_EntryOutline]


@dataclass(frozen=True, slots=True)
class ParsedDelivery:
    events: list[SecurityEvent]
    ignored_fields: Counter[str]  # not alerted on: message traffic, and fields Meta added since


def _short_reason(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


_Model = TypeVar("_Model", bound=BaseModel)


def _validated(model: type[_Model], body: bytes) -> _Model:
    try:
        delivery = model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise MalformedDelivery("body is not JSON") from exc
        raise MalformedDelivery(f"not a WhatsApp webhook: {_short_reason(exc)}") from exc
    object_type = getattr(delivery, "object", None)
    if object_type != WHATSAPP_OBJECT:
        raise MalformedDelivery(f"not a WhatsApp webhook: object is {object_type!r}")
    return delivery


def _security_event(entry: Entry, change: Change) -> SecurityEvent:
    if not isinstance(change.value, dict):
        raise MalformedDelivery("a security change's value is not an object")
    try:
        value = SecurityValue.model_validate(change.value)
    except ValidationError as exc:
        raise MalformedDelivery(f"security value: {_short_reason(exc)}") from exc
    return SecurityEvent(
        waba_id=entry.id[:MAX_FIELD_CHARS],
        phone_number=value.display_phone_number[:MAX_FIELD_CHARS],
        event=value.event[:MAX_FIELD_CHARS],
        time=entry.time,
        requester=value.requester[:MAX_FIELD_CHARS] if value.requester else None,
        value=change.value,
    )


def parse_delivery(body: bytes) -> ParsedDelivery:
    """Every security and account-level change of every entry becomes one event, and so does a
    change of a field Meta added since (stored, not posted); message traffic is counted only."""
    outline = _validated(_DeliveryOutline, body)
    fields = Counter(change.field for entry in outline.entry for change in entry.changes)
    if fields.keys() <= IGNORED_FIELDS:
        return ParsedDelivery(events=[], ignored_fields=fields)
    delivery = _validated(WebhookDelivery, body)
    events: list[SecurityEvent] = []
    ignored: Counter[str] = Counter()
    for entry in delivery.entry:
        for change in entry.changes:
            if change.field == SECURITY_FIELD:
                events.append(_security_event(entry, change))
                continue
            if change.field in IGNORED_FIELDS:
                ignored[change.field] += 1
                continue
            if change.field in ACCOUNT_FIELDS:
                make = account_event  # read leniently: whatever the value holds is stored
            else:
                make = unknown_field_event
                ignored[change.field] += 1  # not alerted on, as before; but kept
            events.append(
                make(change.field, entry_id=entry.id, time=entry.time, value=change.value)
            )
    return ParsedDelivery(events=events, ignored_fields=ignored)


async def handle_handshake(request: web.Request) -> web.Response:
    query = request.query
    token = request.app[keys.SECRETS].meta_verify_token.get_secret_value()
    given = query.get("hub.verify_token", "")
    if query.get("hub.mode") == "subscribe" and hmac.compare_digest(
        given.encode("utf-8", "replace"), token.encode()
    ):
        return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")
    log.warning("webhook: subscription handshake refused")
    return web.Response(status=403, text="verification failed")


def _refuse_signature(request: web.Request, error: SignatureError) -> web.Response:
    request.app[keys.METRICS].delivery[Delivery.BAD_SIGNATURE].inc()
    log.warning("webhook: refused from %s: %s", request.remote, error)
    return web.Response(status=401, text=str(error))


async def _read_body(request: web.Request) -> bytes:
    """Up to MAX_BODY_BYTES, within the app's body deadline (a 408 past it)."""
    metrics = request.app[keys.METRICS]
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        metrics.delivery[Delivery.TOO_LARGE].inc()
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=declared)
    try:
        # The app-wide limit is Slack's, smaller: this route alone takes Meta's 3 MB batches.
        return await request.clone(client_max_size=MAX_BODY_BYTES).read()
    except web.HTTPRequestEntityTooLarge:
        metrics.delivery[Delivery.TOO_LARGE].inc()
        raise
    except web.HTTPRequestTimeout:
        metrics.delivery[Delivery.TIMED_OUT].inc()
        raise


async def handle_delivery(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[keys.METRICS]
    header = request.headers.get(SIGNATURE_HEADER)
    try:
        # Before the body: anyone can open a connection and declare 3 MB, and only a delivery
        # that at least looks signed is worth holding memory for.
        signature_digest(header)
    except SignatureError as exc:
        return _refuse_signature(request, exc)
    body = await _read_body(request)
    secrets = app[keys.META_SECRETS]
    try:
        signed_by = verify_signature(secrets, body, header)
    except SignatureError as exc:
        return _refuse_signature(request, exc)
    metrics.signed_by[signed_by].inc()
    try:
        parsed = parse_delivery(body)
    except MalformedDelivery as exc:
        metrics.delivery[Delivery.MALFORMED].inc()
        log.warning("webhook: malformed delivery: %s", exc)
        return web.Response(status=400, text=str(exc))
    metrics.count_ignored(parsed.ignored_fields)
    if not parsed.events:
        metrics.delivery[Delivery.IGNORED].inc()
        return web.Response(text="ok")
    try:
        # Committed before we answer: once Meta has its 200 it will not send this again.
        ids = await app[keys.STORE].add_events(parsed.events, received_at=app[keys.CLOCK]())
    except StoreError as exc:
        metrics.delivery[Delivery.STORE_UNAVAILABLE].inc()
        log.error("webhook: store unavailable, answered 503 for Meta to retry: %s", exc)
        # 503 makes Meta retry later rather than lose the event.
        return web.Response(status=503, text="store unavailable, retry later")
    new = [alert_id for alert_id in ids if alert_id is not None]
    metrics.delivery[Delivery.ACCEPTED if new else Delivery.DUPLICATE].inc()
    if new:
        app[keys.DISPATCHER].wake()
    # DEBUG only: this is the hot path, and the dispatcher logs each alert it posts.
    for event, alert_id in (
        zip(parsed.events, ids, strict=True) if log.isEnabledFor(logging.DEBUG) else ()
    ):
        log.debug(
            "webhook: %s %.64s for %.32s (WABA %.32s)%s",
            "alert" if alert_id else "duplicate",
            event.event,
            event.phone_number,
            event.waba_id,
            f" id={alert_id}" if alert_id else "",
        )
    return web.Response(text="ok")

"""Meta's side: the subscription handshake, the signature check and the payload models."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from bot import keys
from bot.account_events import ACCOUNT_FIELDS, account_event, unknown_field_event
from bot.catalog import IGNORED_FIELDS
from bot.events import MAX_FIELD_CHARS as MAX_FIELD_CHARS
from bot.events import SECURITY_FIELD, SecurityEvent, as_text
from bot.metrics import Delivery
from bot.request_body import read_body
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


def signature_digest(header: str | None) -> bytes:
    """The digest a signature header carries, checked for shape only: this is all that can be
    known of a delivery before its body has been read."""
    if not header:
        raise SignatureError("missing signature")
    shaped = _SIGNATURE_SHAPE.fullmatch(header.strip())
    if shaped is None:
        raise SignatureError("signature is not sha256=<64 hex digits>")
    return bytes.fromhex(shaped.group(1))


def keyed(secret: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with the secret, copied for each delivery: keying it again each time
    would cost about as much as hashing a delivery does."""
    return hmac.new(secret, digestmod="sha256")


def verify_signature(secrets: Sequence[hmac.HMAC], body: bytes, given: bytes) -> int:
    """Which of the keyed secrets signed the body (0 for the first), given the header's digest.
    Meta signs the raw bytes it sends: HMAC-SHA256, hex, prefixed 'sha256='."""
    # Every secret is tried, matching or not, so that the time taken says nothing of which one
    # matched; each comparison takes constant time.
    matches = [hmac.compare_digest(_digest(secret, body), given) for secret in secrets]
    if True not in matches:
        raise SignatureError("signature does not match")
    return matches.index(True)


def _digest(secret: hmac.HMAC, body: bytes) -> bytes:
    mac = secret.copy()
    mac.update(body)
    return mac.digest()


def sign(secret: bytes, body: bytes) -> str:
    """The header value Meta would send for this body (used by send-test and the tests)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# JSON nested deeper than this was refused by pydantic's parser, which read these bodies before;
# the limit holds for the values pinwatch keeps, which dedup and rendering walk recursively.
MAX_NESTING = 200
# Containers around a change's value: the body, `entry`, the entry, `changes`, the change.
_VALUE_NESTING = 5

# Meta sends IDs and numbers as strings today; accept numbers too rather than drop an event,
# and read them as the text dedup gives them (so 102290129340398.0 is the WABA 102290129340398).
Text = str | int | float


class SecurityValue(msgspec.Struct):
    display_phone_number: Text = ""
    event: Text = ""
    requester: Text | None = None


class Change(msgspec.Struct):
    field: str
    # Left as JSON: decoded only for the changes that are kept, and then whole.
    value: msgspec.Raw = msgspec.Raw(b"null")


class Entry(msgspec.Struct):
    id: Text
    time: bool | int | float | str | None = None  # read by _unix_time
    changes: list[Change] = []


class WebhookDelivery(msgspec.Struct):
    object: str
    entry: list[Entry]


class _ChangeOutline(msgspec.Struct):
    field: str


class _EntryOutline(msgspec.Struct):
    changes: list[_ChangeOutline] = []


class _DeliveryOutline(msgspec.Struct):
    """Just enough to tell which fields a delivery carries: most of a busy webhook URL's traffic
    is `messages` and `statuses`, and their values need not be built into Python objects."""

    object: str
    entry: list[_EntryOutline]


# Unknown fields are skipped everywhere: Meta adds fields, and they must not break parsing.
_OUTLINE = msgspec.json.Decoder(_DeliveryOutline)
_DELIVERY = msgspec.json.Decoder(WebhookDelivery)
_VALUE = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class ParsedDelivery:
    events: list[SecurityEvent]
    ignored_fields: Counter[str]  # not alerted on: message traffic, and fields Meta added since


# msgspec's errors end " - at `$.entry[0].changes[1]`" (a key of a dict shows as `[...]`).
_PATH_PART = re.compile(r"(?<=\.)\w+|(?<=\[)\d+(?=\])")
_MISSING = re.compile(r"Object missing required field `(\w+)`")


def _short_reason(error: msgspec.ValidationError, where: str = "") -> str:
    """msgspec's error, located as pydantic's were: `entry.0.id: Field required`."""
    msg, _, at = str(error).partition(" - at `$")
    parts = [where] if where else []
    parts += _PATH_PART.findall(at)
    if missing := _MISSING.fullmatch(msg):
        parts.append(missing[1])
        msg = "Field required"
    return f"{'.'.join(parts) or 'body'}: {msg}"


_Decoded = TypeVar("_Decoded")


def _decode(
    decoder: msgspec.json.Decoder[_Decoded], data: bytes | msgspec.Raw, where: str = ""
) -> _Decoded:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedDelivery(f"not a WhatsApp webhook: {_short_reason(exc, where)}") from exc
    except (msgspec.DecodeError, RecursionError) as exc:  # msgspec recurses as deep as JSON does
        raise MalformedDelivery("body is not JSON") from exc


def _whatsapp(outline: _DeliveryOutline) -> None:
    if outline.object != WHATSAPP_OBJECT:
        raise MalformedDelivery(f"not a WhatsApp webhook: object is {outline.object!r}")


def _utf8(body: bytes) -> None:
    """msgspec checks the strings it decodes, not those it skips."""
    try:
        if not body.isascii():
            body.decode()
    except UnicodeDecodeError as exc:
        raise MalformedDelivery("body is not JSON") from exc


def _too_deep(value: Any, allowed: int) -> bool:
    """Whether anything in the value sits inside more than `allowed` of its containers."""
    level = [value]
    for _ in range(allowed + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


def _kept_value(change: Change, where: str) -> Any:
    """A change's value, whole, as the Python object it is stored as."""
    value = _decode(_VALUE, change.value, where)
    allowed = MAX_NESTING - _VALUE_NESTING
    # Each container around an item takes two bytes at least: most values are too short to walk.
    if len(change.value) > 2 * allowed and _too_deep(value, allowed):
        raise MalformedDelivery("body is not JSON")
    return value


_INTEGER = re.compile(r"\s*([+-]?[0-9]+(?:_[0-9]+)*)(?:\.0+)?\s*")


def _unix_time(value: bool | int | float | str | None) -> int | None:
    """An entry's time, read as pydantic's lax integer read it before (ValueError, worded as
    pydantic worded it, if it is none): Meta sends an integer, but an integral float, a boolean
    or an integer's text was taken too. The bound keeps it within what SQLite can store."""
    if value is None:
        return None
    if isinstance(value, str):
        shaped = _INTEGER.fullmatch(value)
        if shaped is None:
            raise ValueError(
                "Input should be a valid integer, unable to parse string as an integer"
            )
        value = int(shaped[1])
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("Input should be a valid integer, got a number with a fractional part")
    if value < 0:
        raise ValueError("Input should be greater than or equal to 0")
    if value >= 2**63:
        raise ValueError(f"Input should be less than {2**63}")
    return int(value)


def _entry_head(index: int, entry: Entry) -> tuple[str, int | None]:
    """An entry's WABA ID and time."""
    try:
        time = _unix_time(entry.time)
    except ValueError as exc:
        raise MalformedDelivery(f"not a WhatsApp webhook: entry.{index}.time: {exc}") from exc
    return _text(entry.id), time


def _text(value: Text) -> str:
    return value if isinstance(value, str) else str(as_text(value))


def _security_event(entry_id: str, time: int | None, value: Any) -> SecurityEvent:
    if not isinstance(value, dict):
        raise MalformedDelivery("a security change's value is not an object")
    try:
        fields = msgspec.convert(value, SecurityValue)
    except msgspec.ValidationError as exc:
        raise MalformedDelivery(f"security value: {_short_reason(exc)}") from exc
    requester = _text(fields.requester) if fields.requester is not None else None
    return SecurityEvent(
        waba_id=entry_id[:MAX_FIELD_CHARS],
        phone_number=_text(fields.display_phone_number)[:MAX_FIELD_CHARS],
        event=_text(fields.event)[:MAX_FIELD_CHARS],
        time=time,
        requester=requester[:MAX_FIELD_CHARS] if requester else None,
        value=value,
    )


def _change_events(
    changes: list[Change], entry_id: str, time: int | None, where: str, ignored: Counter[str]
) -> list[SecurityEvent]:
    """The events of one entry's kept changes; the others are counted in `ignored`."""
    events: list[SecurityEvent] = []
    for index, change in enumerate(changes):
        if change.field in IGNORED_FIELDS:
            ignored[change.field] += 1
            continue
        value = _kept_value(change, f"{where}.changes.{index}.value")
        if change.field == SECURITY_FIELD:
            events.append(_security_event(entry_id, time, value))
            continue
        if change.field in ACCOUNT_FIELDS:
            make = account_event  # read leniently: whatever the value holds is stored
        else:
            make = unknown_field_event
            ignored[change.field] += 1  # not alerted on, as before; but kept
        events.append(make(change.field, entry_id=entry_id, time=time, value=value))
    return events


def parse_delivery(body: bytes) -> ParsedDelivery:
    """Every security and account-level change of every entry becomes one event, and so does a
    change of a field Meta added since (stored, not posted); message traffic is counted only."""
    _utf8(body)
    outline = _decode(_OUTLINE, body)
    _whatsapp(outline)
    fields = Counter(change.field for entry in outline.entry for change in entry.changes)
    if fields.keys() <= IGNORED_FIELDS:
        return ParsedDelivery(events=[], ignored_fields=fields)
    delivery = _decode(_DELIVERY, body)
    # Every entry's ID and time are checked before any change is read, as they were before.
    heads = [_entry_head(index, entry) for index, entry in enumerate(delivery.entry)]
    events: list[SecurityEvent] = []
    ignored: Counter[str] = Counter()
    for index, (entry, (entry_id, time)) in enumerate(zip(delivery.entry, heads, strict=True)):
        events += _change_events(entry.changes, entry_id, time, f"entry.{index}", ignored)
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
    try:
        return await read_body(request, limit=MAX_BODY_BYTES)
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
        given = signature_digest(header)
    except SignatureError as exc:
        return _refuse_signature(request, exc)
    body = await _read_body(request)
    secrets = app[keys.META_SECRETS]
    try:
        signed_by = verify_signature(secrets, body, given)
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
        handed_over = perf_counter()
        # Committed before we answer: once Meta has its 200 it will not send this again.
        ids = await app[keys.STORE].add_events(parsed.events, received_at=app[keys.CLOCK]())
        metrics.intake_commit.observe(perf_counter() - handed_over)
    except StoreError as exc:
        metrics.delivery[Delivery.STORE_UNAVAILABLE].inc()
        log.error("webhook: store unavailable, answered 503 for Meta to retry: %s", exc)
        # 503 makes Meta retry later rather than lose the event.
        return web.Response(status=503, text="store unavailable, retry later")
    new = [alert_id for alert_id in ids if alert_id is not None]
    metrics.delivery[Delivery.ACCEPTED if new else Delivery.DUPLICATE].inc()
    if new:
        app[keys.DISPATCHER].wake_for_deliveries()
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

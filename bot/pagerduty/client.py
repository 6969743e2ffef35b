"""PagerDuty's Events API v2 over aiohttp: send one event, say what became of it.

No retries here: the outbox retries, with its backoff, across restarts and replicas, so a loop
here would only hide attempts from it. What the answer means follows PagerDuty's table
(https://developer.pagerduty.com/docs/events-api-v2/overview/#response-codes--retry-logic):
202 accepted; 400 refused, not to be sent again; 429, 5xx and network errors: later.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from bot.events import Clock

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com"
ENQUEUE_PATH = "v2/enqueue"

# PagerDuty answers in well under a second; past this the event is tried again later (and the
# dedup key makes a second arrival harmless).
SEND_TIMEOUT = 10.0
ANSWER_BYTES_MAX = 64 * 1024  # more than any answer PagerDuty documents
RETRY_AFTER_MAX = 3600.0  # a longer wait asked for is waited in steps of this
MESSAGE_MAX = 500


@dataclass(frozen=True, slots=True)
class Accepted:
    """202: PagerDuty has the event. ``dedup_key`` is the one it used (ours)."""

    dedup_key: str | None
    message: str


@dataclass(frozen=True, slots=True)
class RetryLater:
    """429, 5xx, no answer: send it again later, after ``retry_after`` seconds if PagerDuty
    said how long (``Retry-After``)."""

    reason: str
    status: int | None = None  # None: no HTTP answer (connection refused or cut, timeout)
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """400 (or another 4xx): PagerDuty will never take this event; ``message`` and ``errors``
    are its own words, for the Slack thread."""

    status: int
    message: str
    errors: tuple[str, ...] = ()

    def describe(self) -> str:
        """'Event object is invalid (Length of 'routing_key' is incorrect …)'"""
        return self.message + (f" ({'; '.join(self.errors)})" if self.errors else "")


SendResult = Accepted | RetryLater | Refused


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds, or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text) if text.isascii() and text.replace(".", "", 1).isdigit() else None
        if seconds is None:
            seconds = parsedate_to_datetime(text).timestamp() - now
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"


def _answer(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _refused(status: int, raw: bytes) -> Refused:
    answer = _answer(raw)
    message = answer.get("message")
    if not isinstance(message, str) or not message.strip():
        message = _clip(raw.decode(errors="replace")) or f"HTTP {status}"
    errors = answer.get("errors")
    listed = tuple(_clip(str(e)) for e in errors[:10]) if isinstance(errors, list) else ()
    return Refused(status=status, message=_clip(message), errors=listed)


class PagerDutyEvents:
    """The Events API v2 on one shared ``ClientSession`` (the app's, closed by the app)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str = PAGERDUTY_EVENTS_URL,
        timeout: float = SEND_TIMEOUT,
        clock: Clock = time.time,
    ) -> None:
        self._session = session
        self.url = base_url.rstrip("/") + "/" + ENQUEUE_PATH
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock

    async def send(self, event: Mapping[str, Any], *, routing_key: str) -> SendResult:
        """Send one event built by ``bot.pagerduty.events``; never raises for what PagerDuty
        or the network does. The routing key goes in the body only, never in a log line."""
        body = {**event, "routing_key": routing_key}
        try:
            async with self._session.post(
                self.url, json=body, timeout=self._timeout, allow_redirects=False
            ) as response:
                raw = await response.content.read(ANSWER_BYTES_MAX)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            return RetryLater(reason="PagerDuty did not answer in time")
        except aiohttp.ClientError as exc:
            return RetryLater(reason=f"could not reach PagerDuty: {type(exc).__name__}")
        if 200 <= status < 300:
            answer = _answer(raw)
            key = answer.get("dedup_key")
            message = answer.get("message")
            return Accepted(
                dedup_key=key if isinstance(key, str) else None,
                message=_clip(message) if isinstance(message, str) else "accepted",
            )
        if status == 429 or status >= 500 or status == 408:
            return RetryLater(
                reason=f"PagerDuty answered HTTP {status}",
                status=status,
                retry_after=retry_after_seconds(retry_after, now=self._clock()),
            )
        return _refused(status, raw)

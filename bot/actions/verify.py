"""Is a request Slack's? Its signature checked, and a replay refused across restarts."""

from __future__ import annotations

import hashlib

from slack_sdk.signature import Clock as SlackClock
from slack_sdk.signature import SignatureVerifier

from bot.events import Clock
from bot.store import Store

SIGNATURE_WINDOW = 5 * 60  # Slack's own rule for X-Slack-Request-Timestamp


class RequestRefused(Exception):
    """Not signed by Slack, too old, or seen before: answered 401."""


class _InjectedClock(SlackClock):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock()


class SlackRequestVerifier:
    """SignatureVerifier, plus what it lacks: bad headers refused, replays refused. Seen
    signatures are kept in the store, so a restart forgets none of them."""

    def __init__(self, signing_secret: str, *, clock: Clock) -> None:
        self._verifier = SignatureVerifier(signing_secret, clock=_InjectedClock(clock))
        self._clock = clock

    async def verify(
        self, body: bytes, timestamp: str | None, signature: str | None, *, store: Store
    ) -> None:
        if not timestamp or not signature:
            raise RequestRefused("missing Slack signature headers")
        if not timestamp.isascii() or not timestamp.isdigit():
            # is_valid raises ValueError on a non-numeric timestamp: refuse it here instead.
            raise RequestRefused("bad X-Slack-Request-Timestamp")
        try:
            valid = self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
        except (ValueError, UnicodeDecodeError):
            valid = False
        if not valid:
            raise RequestRefused("bad or stale Slack signature")
        # Slack's window runs both ways (a timestamp up to 5 minutes ahead is valid), so a
        # signature is kept until its own timestamp is out of it, not 5 minutes after receipt.
        digest = hashlib.sha256(signature.encode()).hexdigest()
        if not await store.first_sight(
            digest, expires_at=int(timestamp) + SIGNATURE_WINDOW, now=self._clock()
        ):
            raise RequestRefused("replayed Slack request")

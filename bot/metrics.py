"""Prometheus metrics, one registry per application so that tests and reloads never share state."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Mapping
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bot.catalog import KNOWN_EVENTS, META_FIELDS
from bot.events import Clock

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# A commit Meta waits for: a healthy one takes milliseconds, a flood's tens of them.
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_ACK_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 86400)


# Label values that come from outside (a signed delivery may name any field, Meta any event)
# become series of their own only when pinwatch knows them (bot.catalog names them); the rest
# are counted as "other", so that no sender can add series at will.
OTHER = "other"
EVENT_NAMES = frozenset(KNOWN_EVENTS)


def known(value: str, names: frozenset[str]) -> str:
    return value if value in names else OTHER


class Delivery(StrEnum):
    """What became of one POST /webhook."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored_field"  # only fields other than security
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    TIMED_OUT = "timed_out"  # the body did not arrive within the deadline
    STORE_UNAVAILABLE = "store_unavailable"


class Metrics:
    def __init__(self, *, meta_secrets: int = 1) -> None:
        """`meta_secrets`: how many secrets META_APP_SECRET holds."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "pinwatch_webhook_deliveries",
            "POST /webhook requests by result",
            ["result"],
            registry=r,
        )
        # Bound once: labels() costs more than inc() on the webhook's hot path.
        self.delivery = {result: self.deliveries.labels(result.value) for result in Delivery}
        self.signatures = Counter(
            "pinwatch_webhook_signatures",
            "POST /webhook requests whose signature verified, by the position in META_APP_SECRET"
            " of the secret that signed them (1 = first): shows when an old secret is unused",
            ["secret"],
            registry=r,
        )
        # A position, never the secret nor a hash of it; every series exists from the start,
        # so a secret nobody signs with shows as 0 rather than as no series at all.
        self.signed_by = [self.signatures.labels(str(n)) for n in range(1, meta_secrets + 1)]
        self.ignored_changes = Counter(
            "pinwatch_webhook_ignored_changes",
            "Webhook changes pinwatch does not alert on, by field: message traffic and the like,"
            " and fields Meta added since (those are stored too)",
            ["field"],
            registry=r,
        )
        self._ignored_by_label: dict[str, Counter] = {}
        self.events = Counter(
            "pinwatch_events",
            "Events stored and routed (security and account-level), by type and team",
            ["event", "team"],
            registry=r,
        )
        self.slack_calls = Counter(
            "pinwatch_slack_calls",
            "Slack API calls by method and outcome",
            ["method", "outcome"],
            registry=r,
        )
        self.delivery_retries = Counter(
            "pinwatch_delivery_retries",
            "Alerts put back in the outbox after a failed post",
            registry=r,
        )
        self.pending = Gauge(
            "pinwatch_alerts_pending", "Alerts stored but not yet in Slack", registry=r
        )
        self.oldest_pending_age = Gauge(
            "pinwatch_oldest_pending_alert_age_seconds",
            "Age of the oldest alert not yet in Slack (0 when none wait)",
            registry=r,
        )
        self.receipt_to_post = Histogram(
            "pinwatch_receipt_to_post_seconds",
            "From webhook receipt to the alert's Slack post",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.intake_commit = Histogram(
            "pinwatch_intake_commit_seconds",
            "From a delivery's events handed to the store to the webhook resuming after their"
            " commit, which Meta's 200 waits for (deliveries arriving together share one);"
            " successful commits only",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.time_to_ack = Histogram(
            "pinwatch_time_to_acknowledge_seconds",
            "From webhook receipt to acknowledgement",
            buckets=_ACK_BUCKETS,
            registry=r,
        )
        self.escalations = Counter(
            "pinwatch_escalations",
            "Escalations by kind (manual, automatic, takeover, confirmed)",
            ["kind"],
            registry=r,
        )
        self.resolutions = Counter(
            "pinwatch_resolutions",
            "Alerts resolved, by verdict (expected_change, false_alarm, confirmed_takeover)",
            ["verdict"],
            registry=r,
        )
        self.pagerduty_events = Counter(
            "pinwatch_pagerduty_events",
            "Events API v2 events sent, by action and outcome (accepted, retrylater, refused)",
            ["action", "outcome"],
            registry=r,
        )
        self.pagerduty_refused = Counter(
            "pinwatch_pagerduty_refused",
            "Events PagerDuty refused for good (HTTP 400: a bad routing key, most likely), by team",
            ["team"],
            registry=r,
        )
        self.pagerduty_webhooks = Counter(
            "pinwatch_pagerduty_webhooks",
            "PagerDuty v3 webhooks received, by result",
            ["result"],
            registry=r,
        )
        self.store_write_retries = Counter(
            "pinwatch_store_write_retries",
            "Store writes retried after Slack had accepted a call (its answer is kept meanwhile)",
            ["what"],
            registry=r,
        )
        self.config_reloads = Counter(
            "pinwatch_config_reloads", "Routing file reloads by result", ["result"], registry=r
        )
        self.socket_mode_connected = Gauge(
            "pinwatch_socket_mode_connected",
            "1 while Slack's Socket Mode connection is up (0 too when clicks arrive by HTTP)",
            registry=r,
        )

    def count_events(self, events: Iterable[tuple[str, str]]) -> None:
        """Each (event, team) stored: one increment per label pair, however many a batch has."""
        by_label: Tally[tuple[str, str]] = Tally(
            (known(event, EVENT_NAMES), team) for event, team in events
        )
        for (event, team), count in by_label.items():
            self.events.labels(event, team).inc(count)

    def count_ignored(self, fields: Mapping[str, int]) -> None:
        by_label: dict[str, int] = {}  # one increment per label, however many fields share it
        for name, count in fields.items():
            label = known(name, META_FIELDS)
            by_label[label] = by_label.get(label, 0) + count
        for label, count in by_label.items():
            # Bound once per label: labels() is a lock and a lookup, on every ignored delivery.
            child = self._ignored_by_label.get(label)
            if child is None:
                child = self._ignored_by_label[label] = self.ignored_changes.labels(label)
            child.inc(count)


Count = tuple[int, float | None]  # alerts waiting for Slack, and when the oldest arrived


class Backlog:
    """The outbox's size for /metrics, counted at most once per `max_age` seconds: a count scans
    every pending alert on the store's one reader connection, where the webhook's and the
    dispatcher's reads wait behind it. Scrapes that come while a count runs share it."""

    def __init__(
        self, count: Callable[[], Awaitable[Count]], *, clock: Clock, max_age: float
    ) -> None:
        self._count = count
        self._clock = clock
        self._max_age = max_age
        self._last: Count | None = None
        self._counted_at = 0.0
        self._running: asyncio.Task[Count] | None = None

    async def read(self) -> Count:
        now = self._clock()
        # A clock that went back counts as stale rather than fresh for ever.
        if self._last is not None and 0 <= now - self._counted_at < self._max_age:
            return self._last
        if self._running is None:
            self._running = asyncio.create_task(self._recount(now), name="backlog count")
            # A failed count whose scrapers all went away must not warn "never retrieved".
            self._running.add_done_callback(lambda t: t.cancelled() or t.exception())
        # Shielded: one scraper hanging up must not cancel the count the others wait for.
        return await asyncio.shield(self._running)

    async def _recount(self, now: float) -> Count:
        try:
            self._last = await self._count()
            self._counted_at = now
            return self._last
        finally:
            self._running = None

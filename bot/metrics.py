"""Prometheus metrics, one registry per application so that tests and reloads never share state."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_ACK_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 86400)


class Delivery(StrEnum):
    """What became of one POST /webhook."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored_field"  # only fields other than security
    BAD_SIGNATURE = "bad_signature"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    STORE_UNAVAILABLE = "store_unavailable"


class Metrics:
    def __init__(self) -> None:
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
        self.ignored_changes = Counter(
            "pinwatch_webhook_ignored_changes",
            "Webhook changes of fields other than security, acknowledged and ignored",
            ["field"],
            registry=r,
        )
        self.events = Counter(
            "pinwatch_events",
            "Security events stored, by type and team",
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
        self.time_to_ack = Histogram(
            "pinwatch_time_to_acknowledge_seconds",
            "From webhook receipt to acknowledgement",
            buckets=_ACK_BUCKETS,
            registry=r,
        )
        self.escalations = Counter(
            "pinwatch_escalations", "Escalations by kind (manual, automatic)", ["kind"], registry=r
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

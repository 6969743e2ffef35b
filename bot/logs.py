"""Log records a person or a machine can read, with the alert on every line and no secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from bot.events import Alert

ALERT_FIELDS = ("alert_id", "team", "event")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class AlertLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each line with the alert, and carries it as fields for the JSON format."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        context = self.extra or {}
        kwargs["extra"] = {**context, **kwargs.get("extra", {})}
        return (
            f"alert {context['alert_id']} team={context['team']} event={context['event']}: {msg}",
            kwargs,
        )


def for_alert(logger: logging.Logger, alert: Alert) -> AlertLog:
    return AlertLog(
        logger,
        {"alert_id": alert.id, "team": alert.team or "-", "event": alert.event.event[:64]},
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ALERT_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """A last line of defence: no configured secret leaves the process through a log line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, "[redacted]")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure(*, json_format: bool, secrets: Iterable[str]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_format else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

"""Secrets and endpoints from the environment: validated once, never logged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from yarl import URL

from bot.pagerduty.client import PAGERDUTY_EVENTS_URL
from bot.slack import SLACK_API_URL
from bot.store import is_database_url
from bot.store.postgres import SECRET_QUERY_KEYS


class SettingsError(Exception):
    pass


def split_secrets(value: str) -> list[str]:
    """META_APP_SECRET's (or PAGERDUTY_WEBHOOK_SECRET's) secrets in the order given: separated
    by commas, each without the whitespace around it."""
    return checked_secrets(value.split(","))


def checked_secrets(items: Sequence[str]) -> list[str]:
    """The secrets stripped, or ValueError naming each empty or repeated one by its position
    only, never by its value."""
    problems = []
    first_at: dict[str, int] = {}
    for position, item in enumerate(items, 1):
        secret = item.strip()
        where = f"secret {position} of {len(items)}"
        if not item:
            problems.append(f"{where} is empty")
        elif not secret:
            problems.append(f"{where} is only whitespace")
        elif secret in first_at:
            problems.append(f"{where} is the same as secret {first_at[secret]}")
        else:
            first_at[secret] = position
    if problems:
        raise ValueError("; ".join(problems) + " (secrets are separated by commas)")
    return [item.strip() for item in items]


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Any of them may sign a delivery: a secret being rotated, or several Meta apps.
    meta_app_secrets: tuple[SecretStr, ...]
    meta_verify_token: SecretStr
    slack_signing_secret: SecretStr
    slack_bot_token: SecretStr | None = None  # None: dry-run, Slack calls are printed
    slack_app_token: SecretStr | None = None  # set: clicks arrive over Socket Mode
    slack_api_url: str = SLACK_API_URL
    database_url: SecretStr | None = None  # set: the store is PostgreSQL, store.path is unused
    metrics_token: SecretStr | None = None  # set: GET /metrics needs it as a Bearer token
    pagerduty_events_url: str = Field(default=PAGERDUTY_EVENTS_URL, validate_default=True)
    # The webhook subscriptions' signing secrets, any of which may sign a delivery (a secret
    # being rotated, or several subscriptions); none: every PagerDuty webhook is refused.
    pagerduty_webhook_secrets: tuple[SecretStr, ...] = ()

    @field_validator("meta_app_secrets", "pagerduty_webhook_secrets", mode="before")
    @classmethod
    def _secret_lists(cls, value: Any) -> Any:
        """The variable's text is split at commas; a sequence (from code) is taken as it is."""
        if isinstance(value, str):
            return split_secrets(value)
        if isinstance(value, Sequence):
            given = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
            if all(isinstance(v, str) for v in given):
                return checked_secrets(given)
        return value

    @field_validator("meta_verify_token", "slack_signing_secret", "metrics_token")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token starting with xoxb-")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp-")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        text = value.get_secret_value()
        if not is_database_url(text):
            raise ValueError("must be a postgresql:// URL")
        try:
            url = URL(text)
            url.port  # noqa: B018 (yarl checks the port only when asked for it)
        except ValueError:
            raise ValueError("is not a valid URL (host, port, path)") from None
        if not url.host and "host" not in url.query:
            raise ValueError("names no host")
        return value

    @field_validator("slack_api_url", "pagerduty_events_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    def secret_values(self) -> list[str]:
        secrets = [
            *self.meta_app_secrets,
            *self.pagerduty_webhook_secrets,
            self.meta_verify_token,
            self.slack_signing_secret,
            self.slack_bot_token,
            self.slack_app_token,
            self.metrics_token,
        ]
        values = [s.get_secret_value() for s in secrets if s is not None]
        if self.database_url is not None:
            url = URL(self.database_url.get_secret_value())
            values.extend(filter(None, [url.password, *map(url.query.get, SECRET_QUERY_KEYS)]))
        return values

    @property
    def dry_run(self) -> bool:
        return self.slack_bot_token is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read the DESIGN.md variables; an unset or empty optional one counts as absent."""
        names = {
            "meta_app_secrets": "META_APP_SECRET",
            "meta_verify_token": "META_VERIFY_TOKEN",
            "slack_signing_secret": "SLACK_SIGNING_SECRET",
            "slack_bot_token": "SLACK_BOT_TOKEN",
            "slack_app_token": "SLACK_APP_TOKEN",
            "slack_api_url": "SLACK_API_URL",
            "database_url": "DATABASE_URL",
            "metrics_token": "METRICS_TOKEN",
            "pagerduty_events_url": "PAGERDUTY_EVENTS_URL",
            "pagerduty_webhook_secrets": "PAGERDUTY_WEBHOOK_SECRET",
        }
        values = {field: environ[var] for field, var in names.items() if environ.get(var)}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                variable = names[str(error["loc"][0])]
                what = "is not set" if error["type"] == "missing" else error["msg"]
                problems.append(f"{variable} {what.removeprefix('Value error, ')}")
            # Not chained: the validation error quotes its input, and so a traceback would
            # print the secret that was refused.
            raise SettingsError("; ".join(problems)) from None

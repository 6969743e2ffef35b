"""A slash command request, as either transport brings it → SlashCommand (pure: no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,40}$")


class MalformedCommand(Exception):
    """Signed by Slack but not a slash command we can read: answered 400."""


@dataclass(frozen=True, slots=True)
class SlashCommand:
    user_id: str
    user_name: str | None
    channel_id: str | None
    text: str
    response_url: str | None  # where answers that take longer than 3 seconds go
    trigger_id: str | None  # opens a modal, within 3 seconds of the command


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str
    user_name: str | None = None
    channel_id: str | None = None
    text: str = ""
    response_url: str | None = None
    trigger_id: str | None = None

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        if not _SLACK_USER.match(value):
            raise ValueError("not a Slack user ID")
        return value


def _command(fields: dict[str, Any]) -> SlashCommand:
    try:
        request = _Request.model_validate(fields)
    except ValidationError as exc:
        raise MalformedCommand("not a Slack slash command") from exc
    return SlashCommand(
        user_id=request.user_id,
        user_name=request.user_name,
        channel_id=request.channel_id,
        text=request.text,
        response_url=request.response_url,
        trigger_id=request.trigger_id,
    )


def parse_slash_form(body: bytes) -> SlashCommand:
    """POST /slack/commands: form-encoded fields, each once."""
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedCommand("not a Slack slash command") from exc
    if any(len(values) != 1 for values in form.values()):
        raise MalformedCommand("a slash command field given twice")
    return _command({name: values[0] for name, values in form.items()})


def parse_socket_command(payload: dict[str, Any]) -> SlashCommand:
    """Socket Mode's `slash_commands` envelope: the same fields, as JSON."""
    if not isinstance(payload, dict):
        raise MalformedCommand("not a Slack slash command")
    return _command(payload)

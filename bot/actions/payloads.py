"""Slack's interaction payloads → the pinwatch requests in them (pure: no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.render import ACKNOWLEDGE_ACTION, ESCALATE_ACTION, RESOLVE_ACTION, RESOLVE_STORM_ACTION

_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,40}$")


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    ESCALATE = "escalate"
    RESOLVE = "resolve"  # opens the verdict modal
    RESOLVE_ALL = "resolve all"  # the same, for every unresolved row of a storm summary


_ACTIONS = {
    ACKNOWLEDGE_ACTION: Action.ACKNOWLEDGE,
    ESCALATE_ACTION: Action.ESCALATE,
    RESOLVE_ACTION: Action.RESOLVE,
    RESOLVE_STORM_ACTION: Action.RESOLVE_ALL,
}


class MalformedInteraction(Exception):
    """Signed by Slack but not a payload we can read: answered 400."""


@dataclass(frozen=True, slots=True)
class Click:
    action: Action
    alert_id: int
    user_id: str
    user_name: str | None
    channel_id: str | None
    message_ts: str | None  # the message whose button was clicked
    trigger_id: str | None = None  # lets a modal open, for 3 seconds


@dataclass(frozen=True, slots=True)
class Submission:
    """A submitted pinwatch modal: whose, which, and its inputs (block → action → value)."""

    callback_id: str
    user_id: str
    user_name: str | None
    private_metadata: str
    values: dict[str, dict[str, str | None]]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SlackUser(_Loose):
    id: str
    name: str | None = None
    username: str | None = None

    @field_validator("id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        if not _SLACK_USER.match(value):
            raise ValueError("not a Slack user ID")
        return value


class SlackChannel(_Loose):
    id: str


class Container(_Loose):
    """Where the clicked button is: the message's channel and ts."""

    channel_id: str | None = None
    message_ts: str | None = None


class BlockAction(_Loose):
    action_id: str = ""
    value: str | None = None


class SelectedOption(_Loose):
    value: str


class InputState(_Loose):
    """One input of a submitted modal: a text input's value, or a choice's option."""

    value: str | None = None
    selected_option: SelectedOption | None = None

    @property
    def given(self) -> str | None:
        return self.selected_option.value if self.selected_option else self.value


class ViewState(_Loose):
    values: dict[str, dict[str, InputState]] = Field(default_factory=dict)


class SubmittedView(_Loose):
    callback_id: str = ""
    private_metadata: str = ""
    state: ViewState = Field(default_factory=ViewState)


class Interaction(_Loose):
    type: str
    user: SlackUser | None = None
    channel: SlackChannel | None = None
    container: Container | None = None
    actions: list[BlockAction] = Field(default_factory=list)
    trigger_id: str | None = None
    view: SubmittedView | None = None


def parse_interaction(body: bytes) -> Interaction:
    """A form-encoded Slack interaction (POST /slack/actions)."""
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=False)
        [raw] = form["payload"]
        return Interaction.model_validate_json(raw)
    except (UnicodeDecodeError, KeyError, ValueError) as exc:
        raise MalformedInteraction("not a Slack interaction payload") from exc


def parse_socket_payload(payload: dict[str, Any]) -> Interaction:
    """A Socket Mode envelope's payload: the same JSON, unencoded."""
    try:
        return Interaction.model_validate(payload)
    except ValidationError as exc:
        raise MalformedInteraction("not a Slack interaction payload") from exc


def submission_in(interaction: Interaction) -> Submission | None:
    """A submitted modal, or None for anything else (a click, a closed modal)."""
    if interaction.type != "view_submission":
        return None
    if interaction.user is None or interaction.view is None:
        raise MalformedInteraction("a view_submission without a user or a view")
    view = interaction.view
    return Submission(
        callback_id=view.callback_id,
        user_id=interaction.user.id,
        user_name=interaction.user.name or interaction.user.username,
        private_metadata=view.private_metadata,
        values={
            block: {action: state.given for action, state in inputs.items()}
            for block, inputs in view.state.values.items()
        },
    )


def clicks_in(interaction: Interaction) -> list[Click]:
    """Both transports end here: [] for anything that is not a pinwatch button."""
    if interaction.type != "block_actions":
        return []
    container = interaction.container or Container()
    channel_id = container.channel_id or (interaction.channel.id if interaction.channel else None)
    clicks = []
    for action in interaction.actions:
        kind = _ACTIONS.get(action.action_id)
        if kind is None:
            continue
        value = action.value or ""
        # An alert id is a SQLite integer: at most 18 digits keeps it below 2**63.
        if interaction.user is None or not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise MalformedInteraction("a pinwatch action without a user or alert id")
        clicks.append(
            Click(
                action=kind,
                alert_id=int(value),
                user_id=interaction.user.id,
                # Slack does not always send user.name; username is the older field.
                user_name=interaction.user.name or interaction.user.username,
                channel_id=channel_id,
                message_ts=container.message_ts,
                trigger_id=interaction.trigger_id,
            )
        )
    return clicks

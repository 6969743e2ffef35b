"""Pure: the modal `/pinwatch expect` opens with no arguments, and what a submitted one says."""

from __future__ import annotations

import json
import re
from typing import Any

from slack_sdk.models.blocks import (
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.commands.parse import MAX_REASON_CHARS, Expect, FieldProblem, check_expect
from bot.modals import FormErrors
from bot.windows import PIN_EVENTS

EXPECT_CALLBACK = "pinwatch.expect"
PARTS = ("target", "duration", "events", "reason")  # one input block each, named so

_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,40}$")


def expect_modal(*, channel: str | None) -> dict[str, Any]:
    """The announcement form; `channel` (where the command was typed) is where its outcome is
    told, carried through Slack in private_metadata."""
    about = (
        "Announce an expected change: matching alerts are still posted, marked as expected,"
        " without mentions or automatic escalation. The announcement goes to the team's"
        " channel for all to see. A takeover chain is escalated all the same."
    )
    view = View(
        type="modal",
        callback_id=EXPECT_CALLBACK,
        title="Expected change",
        submit="Announce",
        close="Cancel",
        private_metadata=json.dumps({"channel": channel}),
        blocks=[
            SectionBlock(text=MarkdownTextObject(text=about)),
            _input("target", "Phone number or WABA", "+15550783881 or 102290129340398"),
            _input("duration", "For how long", "1h (90s, 15m, 1h30m; at most 24h)"),
            _input(
                "events",
                "Events",
                "default: " + " ".join(PIN_EVENTS),
                optional=True,
            ),
            _input("reason", "Why", "PIN rotation by the on-call", multiline=True, max_length=None),
        ],
    )
    return view.to_dict()


def _input(
    block: str,
    label: str,
    placeholder: str,
    *,
    optional: bool = False,
    multiline: bool = False,
    max_length: int | None = 200,
) -> InputBlock:
    return InputBlock(
        block_id=block,
        label=label,
        optional=optional,
        element=PlainTextInputElement(
            action_id=block,
            placeholder=placeholder,
            multiline=multiline,
            max_length=max_length if max_length is not None else MAX_REASON_CHARS,
        ),
    )


def read_expect(values: dict[str, dict[str, str | None]]) -> Expect:
    """The announcement a submitted form makes, or FormErrors for Slack to show by field."""
    given = {part: values.get(part, {}).get(part) or "" for part in PARTS}
    try:
        return check_expect(
            given["target"].strip(),
            given["duration"].strip(),
            given["events"].replace(",", " ").split(),
            given["reason"],
        )
    except FieldProblem as exc:
        raise FormErrors({exc.part: f"{exc}."}) from None


def channel_of(private_metadata: str) -> str | None:
    """The channel the command was typed in, as the form carried it (ours, still read strictly)."""
    try:
        channel = json.loads(private_metadata).get("channel")
    except (ValueError, AttributeError):
        return None
    return channel if isinstance(channel, str) and _CHANNEL.match(channel) else None

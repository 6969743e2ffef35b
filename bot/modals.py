"""Pure: pinwatch's Slack modals, and what a submitted one says (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from slack_sdk.models.blocks import (
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    RadioButtonsElement,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot.events import Alert, Verdict
from bot.render import SECTION_TEXT_MAX, alert_heading, clip

RESOLVE_CALLBACK = "pinwatch.resolve"
VERDICT_BLOCK = "verdict"
NOTE_BLOCK = "note"
NOTE_MAX = 3000  # Slack's plain_text_input limit

_VERDICT_HINTS = {
    Verdict.EXPECTED_CHANGE: "Our own change: someone on the team did it on purpose.",
    Verdict.FALSE_ALARM: "Nothing happened to the account: noise, a test, a duplicate.",
    Verdict.CONFIRMED_TAKEOVER: "Someone else took hold of it: pages the escalation contacts now.",
}


class FormErrors(Exception):
    """What is wrong with a submitted modal, by input block: Slack shows it under each one."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{block}: {text}" for block, text in errors.items()))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ResolveTarget:
    """What a resolve modal is about, carried through Slack in its private_metadata: the
    alert, the message its button was on, and whether it stands for a whole storm summary."""

    alert_id: int
    channel: str
    ts: str
    whole_summary: bool = False

    def to_metadata(self) -> str:
        return json.dumps(
            {
                "alert": self.alert_id,
                "channel": self.channel,
                "ts": self.ts,
                "all": self.whole_summary,
            }
        )

    @classmethod
    def from_metadata(cls, text: str) -> ResolveTarget:
        """Ours, come back from Slack in a signed request; still read strictly."""
        try:
            data = json.loads(text)
            target = cls(
                alert_id=data["alert"],
                channel=data["channel"],
                ts=data["ts"],
                whole_summary=data["all"],
            )
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise FormErrors({VERDICT_BLOCK: "This form is not one pinwatch opened."}) from exc
        valid = (
            type(target.alert_id) is int
            and 0 < target.alert_id < 2**63  # a store's integer, as a button's value is
            and isinstance(target.channel, str)
            and isinstance(target.ts, str)
            and isinstance(target.whole_summary, bool)
        )
        if not valid:
            raise FormErrors({VERDICT_BLOCK: "This form is not one pinwatch opened."})
        return target


@dataclass(frozen=True, slots=True)
class Resolution:
    verdict: Verdict
    note: str | None


def resolve_modal(alert: Alert, target: ResolveTarget, *, rows: int = 1) -> dict[str, Any]:
    """The form Resolve opens: a verdict (required) and a note (optional)."""
    about = (
        f"Resolve the *{rows} unresolved alerts* of this storm summary, all with one verdict."
        if target.whole_summary
        else f"Resolve {alert_heading(alert)}."
    )
    options = [
        Option(value=verdict.value, text=verdict.label, description=_VERDICT_HINTS[verdict])
        for verdict in Verdict
    ]
    view = View(
        type="modal",
        callback_id=RESOLVE_CALLBACK,
        title="Resolve alert",
        submit="Resolve",
        close="Cancel",
        private_metadata=target.to_metadata(),
        blocks=[
            SectionBlock(text=MarkdownTextObject(text=clip(about, SECTION_TEXT_MAX))),
            InputBlock(
                block_id=VERDICT_BLOCK,
                label="Verdict",
                element=RadioButtonsElement(action_id=VERDICT_BLOCK, options=options),
            ),
            InputBlock(
                block_id=NOTE_BLOCK,
                label="Note",
                optional=True,
                hint="Shown on the alert and kept in its audit. A confirmed takeover's page"
                " carries it.",
                element=PlainTextInputElement(
                    action_id=NOTE_BLOCK, multiline=True, max_length=NOTE_MAX
                ),
            ),
        ],
    )
    return view.to_dict()


def read_resolution(values: dict[str, dict[str, str | None]]) -> Resolution:
    """The verdict and note of a submitted resolve modal, or FormErrors for Slack to show."""
    chosen = values.get(VERDICT_BLOCK, {}).get(VERDICT_BLOCK) or ""
    try:
        verdict = Verdict(chosen)
    except ValueError:
        raise FormErrors({VERDICT_BLOCK: "Choose a verdict."}) from None
    note = (values.get(NOTE_BLOCK, {}).get(NOTE_BLOCK) or "").strip()
    if len(note) > NOTE_MAX:
        raise FormErrors({NOTE_BLOCK: f"At most {NOTE_MAX} characters."})
    return Resolution(verdict=verdict, note=note or None)

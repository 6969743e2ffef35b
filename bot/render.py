"""Pure rendering: an alert → Block Kit blocks and a plain-text fallback, within Slack's limits."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

import phonenumbers
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.account_text import Moment, Story, Value, story_of
from bot.catalog import TAKEOVER_SUMMARY
from bot.events import (
    SECURITY_FIELD,
    Actor,
    Alert,
    EscalationKind,
    EventType,
    Severity,
    Verdict,
)
from bot.windows import TargetKind, Window

ACKNOWLEDGE_ACTION = "pinwatch.acknowledge"
ESCALATE_ACTION = "pinwatch.escalate"
RESOLVE_ACTION = "pinwatch.resolve"
RESOLVE_STORM_ACTION = "pinwatch.resolve_storm"  # every unresolved row of a storm summary

# Slack's Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
HEADER_MAX = 150
SECTION_TEXT_MAX = 3000
FIELD_MAX = 2000
CONTEXT_TEXT_MAX = 2000
FALLBACK_TEXT_MAX = 3000  # Slack truncates `text` past 40,000; notifications show far less

_SLACK_ID = re.compile(r"^[UWSBC][A-Z0-9]{2,40}$")
_MARKUP = re.compile(r"([*_~`])")

_SEVERITY_LABEL = {
    Severity.INFO: ":information_source: Info",
    Severity.HIGH: ":rotating_light: High",
    Severity.CRITICAL: ":red_circle: Critical",
    Severity.OFF: ":zzz: Off",  # never posted: here so that every severity has a label
}
FIELDS_MAX = 10  # a section's fields


@dataclass(frozen=True, slots=True)
class Message:
    text: str  # plain-text fallback: notifications, screen readers, old clients
    blocks: list[dict[str, Any]]


def safe(value: str) -> str:
    """Escape outside text for mrkdwn: no mentions, links or formatting can be smuggled in."""
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # A zero-width space after each marker stops Slack pairing them into bold, italics or code.
    return _MARKUP.sub("\\1\u200b", escaped)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@lru_cache(maxsize=4096)  # pure, and each render asks for the same number three times
def readable_phone(number: str) -> str:
    """'15550783881' → '+1 555-078-3881'; anything unparseable is shown as sent."""
    digits = re.sub(r"\D", "", number)
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def slack_date(timestamp: float) -> str:
    """Shown in each reader's own time zone, with UTC as the fallback."""
    seconds = int(timestamp)
    try:
        fallback = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # Meta's `time` is outside input too
        fallback = f"unix time {seconds}"
    return f"<!date^{seconds}^{{date_short_pretty}} at {{time_secs}}|{fallback}>"


def mention(target: str) -> str:
    if target == "here":
        return "<!here>"
    if target.startswith("S"):
        return f"<!subteam^{target}>"
    return f"<@{target}>"


def actor_text(actor: Actor) -> str:
    if actor.is_pinwatch:
        return "pinwatch"
    if _SLACK_ID.match(actor.user_id):
        return f"<@{actor.user_id}>"
    return safe(actor.name or actor.user_id)


def done_by(done: str, actor: Actor) -> str:
    """'Acknowledged by <@U0ALICE>', or 'Acknowledged in PagerDuty by Jane Doe'."""
    where = " in PagerDuty" if actor.in_pagerduty else ""
    return f"{done}{where} by {actor_text(actor)}"


def actor_plain(actor: Actor) -> str:
    return "pinwatch" if actor.is_pinwatch else (actor.name or actor.user_id)


def _story(alert: Alert) -> Story | None:
    """The plain words of an account-level event; None for a security one (written below)."""
    return None if alert.event.field == SECURITY_FIELD else story_of(alert.event)


def plain_title(alert: Alert) -> str:
    """The alert's title in plain words (the Slack header's; PagerDuty's summary)."""
    if (story := _story(alert)) is not None:
        return story.title
    event = alert.event.event
    if event == EventType.PIN_RESET_REQUEST:
        return "Two-step verification reset requested"
    if event == EventType.PIN_REQUEST_SUCCESS:
        return "Two-step verification turned off"
    if event == EventType.PIN_CHANGED:
        return "Two-step verification PIN changed"
    return f"WhatsApp security event {event}"


def _shows_number(alert: Alert) -> bool:
    """A security event always names its number; an event of the whole account has none."""
    return bool(alert.event.phone_number) or alert.event.field == SECURITY_FIELD


def _subject(alert: Alert) -> str:
    """What the alert is about, as mrkdwn: the number, or else the account."""
    if _shows_number(alert):
        return f"*{safe(readable_phone(alert.event.phone_number))}*"
    return f"WABA *{safe(alert.event.waba_id)}*"


def alert_heading(alert: Alert) -> str:
    """What the alert is and what about, in one line of mrkdwn."""
    return f"*{safe(plain_title(alert))}* for {_subject(alert)}"


def _subject_plain(alert: Alert) -> str:
    if _shows_number(alert):
        return readable_phone(alert.event.phone_number)
    return f"WABA {alert.event.waba_id}"


def _fact_text(value: Value) -> str:
    """A fact of Meta's as mrkdwn: its text escaped, a time in each reader's own zone."""
    return slack_date(value.seconds) if isinstance(value, Moment) else safe(value)


def _story_summary(story: Story) -> str:
    lines = [f"*What happened:* {story.happened}"]
    if story.quote:
        # Meta's words, quoted; the line breaks it may hold stay inside the quote.
        lines.append("\n".join(f">{safe(line)}" for line in story.quote.splitlines() or [""]))
    lines += [f"*What it means:* {story.means}", f"*Check next:* {story.check}"]
    return "\n".join(lines)


def _story_items(story: Story) -> SectionBlock | None:
    if not story.items:
        return None
    lines = [
        f"• {safe(text)}" + (f" until {_fact_text(until)}" if until is not None else "")
        for text, until in story.items
    ]
    return SectionBlock(text=MarkdownTextObject(text=clip("\n".join(lines), SECTION_TEXT_MAX)))


def _summary(alert: Alert) -> str:
    if (story := _story(alert)) is not None:
        return _story_summary(story)
    phone = f"*{safe(readable_phone(alert.event.phone_number))}*"
    event = alert.event.event
    if event == EventType.PIN_RESET_REQUEST:
        return (
            f"Someone asked to turn off two-step verification for {phone}. "
            "If your team did not ask for this, the number may be being taken over."
        )
    if event == EventType.PIN_REQUEST_SUCCESS:
        return (
            f"The reset email was followed: two-step verification is now *off* for {phone}. "
            "Anyone holding the number can now register it elsewhere."
        )
    if event == EventType.PIN_CHANGED:
        return (
            f"The two-step verification PIN of {phone} was changed or enabled in "
            "WhatsApp Manager. If nobody on your team did this, escalate."
        )
    return f"Meta reported a security event pinwatch does not know yet for {phone}."


def _fields(alert: Alert) -> list[MarkdownTextObject]:
    event = alert.event
    pairs = []
    if _shows_number(alert):
        pairs.append(("Phone number", safe(readable_phone(event.phone_number))))
    pairs += [
        ("WABA", safe(event.waba_id)),
        ("When", slack_date(event.time if event.time is not None else alert.received_at)),
        ("Severity", _SEVERITY_LABEL[alert.severity]),
    ]
    if event.requester:
        pairs.append(("Requested by", f"Meta Business Suite user {safe(event.requester)}"))
    if alert.team:
        pairs.append(("Team", safe(alert.team)))
    if (story := _story(alert)) is not None:
        pairs += [(label, _fact_text(value)) for label, value in story.facts]
    texts = [f"*{label}*\n{value}" for label, value in pairs]
    if len(texts) > FIELDS_MAX:  # a section holds ten fields: the last takes the rest
        texts[FIELDS_MAX - 1 :] = ["\n".join(texts[FIELDS_MAX - 1 :])]
    return [MarkdownTextObject(text=clip(text, FIELD_MAX)) for text in texts]


def resolution_text(alert: Alert) -> str:
    """Who resolved it, when and how, as mrkdwn (the note quoted: it is outside input)."""
    assert alert.resolved is not None
    icon = ":rotating_light:" if alert.verdict is Verdict.CONFIRMED_TAKEOVER else ":checkered_flag:"
    text = f"{icon} {done_by('Resolved', alert.resolved)} {slack_date(alert.resolved.at)}"
    text += f": *{alert.verdict.label}*." if alert.verdict else "."
    if alert.resolution_note:
        text += "\n" + "\n".join(f">{safe(line)}" for line in alert.resolution_note.splitlines())
    return text


def _status_lines(alert: Alert) -> list[str]:
    lines = []
    if alert.resolved is not None:
        lines.append(resolution_text(alert))
    if alert.takeover_at is not None:
        lines.append(
            f":rotating_light: *{TAKEOVER_SUMMARY.capitalize()}* {slack_date(alert.takeover_at)}"
            ": see the thread."
        )
    if alert.verification_off_at is not None:
        lines.append(
            f":red_circle: Two-step verification is now *off*: the reset was completed "
            f"{slack_date(alert.verification_off_at)}."
        )
    if alert.escalated is not None:
        if alert.escalation_kind == EscalationKind.AUTOMATIC:
            how = "Automatically escalated"
        elif alert.escalation_kind == EscalationKind.TAKEOVER:
            how = "Escalated as a possible takeover"
        elif alert.escalation_kind == EscalationKind.CONFIRMED:
            how = f"Paged as a confirmed takeover by {actor_text(alert.escalated)}"
        else:
            how = f"Escalated by {actor_text(alert.escalated)}"
        lines.append(f":mega: {how} {slack_date(alert.escalated.at)}.")
    if alert.acknowledged is not None:
        lines.append(
            f":white_check_mark: {done_by('Acknowledged', alert.acknowledged)} "
            f"{slack_date(alert.acknowledged.at)}."
        )
    elif (
        alert.needs_acknowledgement
        and alert.ack_deadline is not None
        and not alert.escalated
        and not alert.resolved
    ):
        lines.append(
            f"Escalates automatically {slack_date(alert.ack_deadline)} unless acknowledged."
        )
    if alert.delivery_note:
        lines.append(f":warning: {alert.delivery_note}")  # our words, not outside input
    if (expected := alert.expected) is not None:
        who = f"{actor_text(expected.announced_by)} ({safe(expected.reason)})"
        if alert.takeover_at is None:
            lines.append(
                f":calendar: Expected: announced by {who}, window #{expected.window_id} until "
                f"{slack_date(expected.until)}. No mentions, no automatic escalation."
            )
        else:
            lines.append(
                f":warning: Announced as expected by {who}, window #{expected.window_id}; "
                "a takeover chain is escalated all the same."
            )
    return lines


def _acknowledge_button(alert_id: int) -> ButtonElement:
    return ButtonElement(
        text="Acknowledge", action_id=ACKNOWLEDGE_ACTION, value=str(alert_id), style="primary"
    )


def _escalate_button(alert_id: int) -> ButtonElement:
    return ButtonElement(
        text="Escalate",
        action_id=ESCALATE_ACTION,
        value=str(alert_id),
        style="danger",
        confirm=ConfirmObject(
            title="Escalate this alert?",
            text="This pages the escalation contacts for this team.",
            confirm="Escalate",
            deny="Cancel",
            style="danger",
        ),
    )


def _resolve_button(alert_id: int, *, action_id: str = RESOLVE_ACTION) -> ButtonElement:
    # Opens a modal asking for the verdict: no confirm step needed on top of that.
    text = "Resolve all" if action_id == RESOLVE_STORM_ACTION else "Resolve"
    return ButtonElement(text=text, action_id=action_id, value=str(alert_id))


def _buttons(alert: Alert) -> list[ButtonElement]:
    """Only what still applies: nothing once resolved."""
    if alert.resolved is not None:
        return []
    buttons = []
    if alert.needs_acknowledgement and alert.acknowledged is None:
        buttons.append(_acknowledge_button(alert.id))
    if alert.escalated is None:
        buttons.append(_escalate_button(alert.id))
    buttons.append(_resolve_button(alert.id))
    return buttons


def _unknown_details(alert: Alert) -> SectionBlock:
    raw = json.dumps(alert.event.value, ensure_ascii=False, sort_keys=True, indent=1)
    escaped = raw.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    head, tail = "*As sent by Meta*\n```", "```"
    body = clip(escaped.replace("```", "'''"), SECTION_TEXT_MAX - len(head) - len(tail))
    return SectionBlock(text=MarkdownTextObject(text=f"{head}{body}{tail}"))


def _fallback(alert: Alert) -> str:
    event = alert.event
    parts = [f"[{alert.severity.value.upper()}] {plain_title(alert)}: {_subject_plain(alert)}"]
    if _shows_number(alert):
        parts.append(f"WABA {event.waba_id}")
    if event.requester:
        parts.append(f"requested by Meta user {event.requester}")
    if (story := _story(alert)) is not None:
        parts += [
            f"{label.lower()} {value}"
            for label, value in story.facts[:3]
            if not isinstance(value, Moment)
        ]
    if alert.team:
        parts.append(f"team {alert.team}")
    if alert.acknowledged is not None:
        parts.append(f"acknowledged by {actor_plain(alert.acknowledged)}")
    if alert.escalated is not None:
        parts.append(f"escalated by {actor_plain(alert.escalated)}")
    if alert.expected is not None:
        parts.append(
            f"expected: announced by {actor_plain(alert.expected.announced_by)}"
            f" ({alert.expected.reason}), window #{alert.expected.window_id}"
        )
    if alert.resolved is not None:
        verdict = f" as {alert.verdict.label.lower()}" if alert.verdict else ""
        parts.append(f"resolved by {actor_plain(alert.resolved)}{verdict}")
    return _plain_fallback(" · ".join(parts))


def _plain_fallback(text: str) -> str:
    # The fallback is plain text, but Slack still parses <…> in it: escape those too.
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return clip(escaped, FALLBACK_TEXT_MAX)


def _to_dicts(blocks: list[Block]) -> list[dict[str, Any]]:
    return [block.to_dict() for block in blocks]


def render_alert(alert: Alert) -> Message:
    """The alert's top-level message, showing its current state."""
    summary = _summary(alert)
    if alert.mentions:
        summary = " ".join(mention(m) for m in alert.mentions) + "\n" + summary
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text=clip(plain_title(alert), HEADER_MAX), emoji=True)),
        SectionBlock(text=MarkdownTextObject(text=clip(summary, SECTION_TEXT_MAX))),
        SectionBlock(fields=_fields(alert)),
    ]
    story = _story(alert)
    if story is not None and (items := _story_items(story)) is not None:
        blocks.append(items)
    shown_as_sent = alert.event.known_type is None if story is None else not story.known
    if shown_as_sent:
        blocks.append(_unknown_details(alert))
    if status := _status_lines(alert):
        blocks.append(
            ContextBlock(
                elements=[MarkdownTextObject(text=clip(line, CONTEXT_TEXT_MAX)) for line in status]
            )
        )
    if buttons := _buttons(alert):
        blocks.append(ActionsBlock(block_id=f"pinwatch-{alert.id}", elements=buttons))
    return Message(text=_fallback(alert), blocks=_to_dicts(blocks))


def render_success_reply(alert: Alert) -> Message:
    """A PIN_REQUEST_SUCCESS threaded under the reset request it completes."""
    phone = safe(readable_phone(alert.event.phone_number))
    text = (
        f":red_circle: *Two-step verification is now off* for *{phone}*: the reset request "
        f"above was completed {slack_date(alert.event.time or alert.received_at)}."
    )
    if alert.mentions:
        text = " ".join(mention(m) for m in alert.mentions) + " " + text
    blocks = [SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_TEXT_MAX)))]
    return Message(text=_fallback(alert), blocks=_to_dicts(list(blocks)))


def render_follow_up(alert: Alert, *, thread_ts: str) -> Message:
    """A follow-up (catalog.is_follow_up) as a reply under its reset request: a success in one
    line, a takeover event in full (without the acknowledgement its request waits for)."""
    threaded = replace(alert, thread_ts=thread_ts)
    if alert.event.known_type == EventType.PIN_REQUEST_SUCCESS:
        return render_success_reply(threaded)
    return render_alert(threaded)


def channel_text(channel: str) -> str:
    """A configured channel as Slack shows it: an ID becomes a link, a #name stays as written."""
    return channel if channel.startswith("#") else f"<#{channel}>"


def _escalation_reason(alert: Alert) -> str:
    assert alert.escalated is not None
    if alert.escalation_kind == EscalationKind.AUTOMATIC:
        deadline = alert.ack_deadline if alert.ack_deadline is not None else alert.escalated.at
        return f"Escalated automatically: nobody acknowledged it by {slack_date(deadline)}."
    if alert.escalation_kind == EscalationKind.TAKEOVER:
        return f"Escalated at once, {TAKEOVER_SUMMARY} {slack_date(alert.escalated.at)}."
    if alert.escalation_kind == EscalationKind.CONFIRMED:
        return (
            f"Confirmed as a takeover by {actor_text(alert.escalated)}"
            f" {slack_date(alert.escalated.at)}."
        )
    return f"Escalated by {actor_text(alert.escalated)} {slack_date(alert.escalated.at)}."


def render_escalation(alert: Alert, *, permalink: str | None, mentions: Sequence[str]) -> Message:
    """The page sent to the escalation channel, linking back to the alert."""
    lines = [
        " ".join(mention(m) for m in mentions),
        alert_heading(alert)
        + (f" (team {safe(alert.team)})" if alert.team else "")
        + " needs attention.",
        _escalation_reason(alert),
        f"<{permalink}|Open the alert>"
        if permalink
        else f"The alert is in {channel_text(alert.slack_channel or '')}.",
    ]
    if alert.escalation_kind == EscalationKind.CONFIRMED and alert.resolution_note:
        lines.append("\n".join(f">{safe(line)}" for line in alert.resolution_note.splitlines()))
    text = "\n".join(line for line in lines if line)
    # A notification shows the fallback alone: a takeover must say so there too.
    heading, tag = _PAGE_HEADINGS.get(alert.escalation_kind, ("Escalated", "[ESCALATED] "))
    blocks: list[Block] = [
        HeaderBlock(
            text=PlainTextObject(text=clip(f"{heading}: {plain_title(alert)}", HEADER_MAX))
        ),
        SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_TEXT_MAX))),
        SectionBlock(fields=_fields(alert)),
    ]
    return Message(text=tag + _fallback(alert), blocks=_to_dicts(blocks))


_PAGE_HEADINGS: dict[EscalationKind | None, tuple[str, str]] = {
    EscalationKind.TAKEOVER: ("Possible takeover", "[POSSIBLE TAKEOVER] "),
    EscalationKind.CONFIRMED: ("Confirmed takeover", "[CONFIRMED TAKEOVER] "),
}


def render_escalation_note(alert: Alert, *, channel: str) -> Message:
    """The thread reply under the alert saying where it was escalated, and by whom."""
    text = f":mega: {_escalation_reason(alert)} Paged in {channel_text(channel)}."
    blocks = [SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_TEXT_MAX)))]
    fallback = f"Escalated to {channel}" + (
        f" by {actor_plain(alert.escalated)}" if alert.escalated else ""
    )
    return Message(text=fallback, blocks=_to_dicts(list(blocks)))


def render_pagerduty_refused(alert: Alert, *, step: str, why: str) -> Message:
    """The thread reply saying PagerDuty would not take the alert's page: nobody was paged."""
    what = "the page" if step == "trigger" else f"the {step}"
    text = (
        f":warning: PagerDuty refused {what}: {safe(why)}. Nobody was paged through PagerDuty;"
        " check the routing key of this team's escalation (the variable the routing file names)."
    )
    blocks = [SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_TEXT_MAX)))]
    return Message(
        text=_plain_fallback(f"PagerDuty refused {what}: {why}"), blocks=_to_dicts(list(blocks))
    )


def render_reminder(alerts: Sequence[Alert]) -> Message:
    """A reply in the thread of an acknowledged alert (or a storm summary's acknowledged rows)
    that nobody has resolved: naming who acknowledged it, so they hear of it."""
    acknowledgers: list[Actor] = []
    for alert in alerts:
        if alert.acknowledged and all(
            a.user_id != alert.acknowledged.user_id for a in acknowledgers
        ):
            acknowledgers.append(alert.acknowledged)
    who = ", ".join(actor_text(a) for a in acknowledgers) or "nobody"
    if len(alerts) == 1:
        [alert] = alerts
        since = f" {slack_date(alert.acknowledged.at)}" if alert.acknowledged else ""
        text = (
            f":bell: Reminder: acknowledged by {who}{since}, not resolved yet. Once it is"
            " settled, press *Resolve* on the alert and give the verdict."
        )
        fallback = f"Reminder: {plain_title(alert)} is acknowledged but not resolved"
    else:
        text = (
            f":bell: Reminder: {len(alerts)} alerts in this summary were acknowledged (by {who})"
            " and are not resolved yet. Resolve each row, or all of them with *Resolve all*."
        )
        fallback = f"Reminder: {len(alerts)} acknowledged alerts are not resolved"
    plain = ", ".join(actor_plain(a) for a in acknowledgers)
    blocks = [SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_TEXT_MAX)))]
    return Message(
        text=_plain_fallback(f"{fallback} (acknowledged by {plain})"),
        blocks=_to_dicts(list(blocks)),
    )


STORM_MAX_ROWS = 45  # with the header, context and actions: within Slack's 50 blocks


# A summary is rewritten with all its rows each time rows join it: each row, as the alert
# stands, is made once. Alerts equal in every compared field are the same stored alert in the
# same state (the id is one stored event, whose `value` never changes). Callers must not change
# the dict.
@lru_cache(maxsize=2048)
def _storm_row(alert: Alert) -> dict[str, Any]:
    event = alert.event
    parts = [f"*{safe(plain_title(alert))}*"]
    if _shows_number(alert):
        parts.append(safe(readable_phone(event.phone_number)))
    parts += [
        f"WABA {safe(event.waba_id)}",
        slack_date(event.time if event.time is not None else alert.received_at),
    ]
    if event.requester:
        parts.append(f"requested by {safe(event.requester)}")
    text = " · ".join(parts)
    if status := _status_lines(alert):
        if alert.resolved is not None:
            # Its note is quoted to the end of the line: anything after it would read as the
            # resolver's words, so the resolution goes last.
            resolution = resolution_text(alert)
            status = [line for line in status if line != resolution] + [resolution]
        text += "\n" + " ".join(status)
    return _row_block(alert.id, clip(text, SECTION_TEXT_MAX), _row_button(alert))


def _row_button(alert: Alert) -> str | None:
    """A row has room for one button: Acknowledge while it waits for that, then Resolve."""
    if alert.resolved is not None:
        return None
    if alert.needs_acknowledgement and alert.acknowledged is None:
        return ACKNOWLEDGE_ACTION
    return RESOLVE_ACTION


# Block Kit's models validate every object as they build its dict: for a flood's new rows that
# was most of its rendering (issue 14). A row is its button kind's template, which the models
# built and validated once, with the alert's id and text put in: an id is a few digits and the
# text is clipped, so within the limits the models check. Nested dicts are shared with the
# template.
@cache
def _row_template(button: str | None) -> dict[str, Any]:
    accessory = None
    if button == ACKNOWLEDGE_ACTION:
        accessory = _acknowledge_button(0)
    elif button == RESOLVE_ACTION:
        accessory = _resolve_button(0)
    return SectionBlock(
        block_id="pinwatch-0", text=MarkdownTextObject(text="-"), accessory=accessory
    ).to_dict()


def _row_block(alert_id: int, text: str, button: str | None) -> dict[str, Any]:
    template = _row_template(button)
    block = {
        **template,
        "block_id": f"pinwatch-{alert_id}",
        "text": {**template["text"], "text": text},
    }
    if button is not None:
        block["accessory"] = {**template["accessory"], "value": str(alert_id)}
    return block


# The rewrites of one summary mostly show the same head and buttons: each is made once.
@lru_cache(maxsize=256)
def _storm_head(rows: int, intro: str) -> tuple[dict[str, Any], ...]:
    header = PlainTextObject(text=f"Storm: {rows} WhatsApp security events", emoji=True)
    return (
        HeaderBlock(text=header).to_dict(),
        ContextBlock(elements=[MarkdownTextObject(text=intro)]).to_dict(),
    )


@lru_cache(maxsize=256)
def _storm_tail(escalate_id: int | None, resolve_id: int | None) -> tuple[dict[str, Any], ...]:
    whole: list[ButtonElement] = []
    if escalate_id is not None:
        whole.append(_escalate_button(escalate_id))
    if resolve_id is not None:
        whole.append(_resolve_button(resolve_id, action_id=RESOLVE_STORM_ACTION))
    if not whole:
        return ()
    return (ActionsBlock(block_id="pinwatch-storm", elements=whole).to_dict(),)


def render_storm(alerts: Sequence[Alert], *, threshold: int, window: float) -> Message:
    """Many alerts for one channel in a short time: one message, one row each, updated in place."""
    rows = list(alerts)[:STORM_MAX_ROWS]
    first = rows[0]
    intro = (
        f"More than {threshold} alerts for this channel within {window:g}s: they are grouped "
        "here so that none is held up by Slack's rate limit. Each can be acknowledged and resolved"
        " below, or all resolved at once."
    )
    # Every row's, not the first's alone: a first row inside an announced window has none.
    if mentions := list(dict.fromkeys(m for alert in rows for m in alert.mentions)):
        intro = " ".join(mention(m) for m in mentions) + " " + intro
    # One Escalate for the whole storm: it pages once for the summary (see the dispatcher).
    unresolved = [a for a in rows if a.resolved is None]
    escalate = next((a.id for a in unresolved if a.escalated is None), None)
    resolve = unresolved[0].id if unresolved else None
    team = f" for team {first.team}" if first.team else ""
    text = f"[STORM] {len(rows)} WhatsApp security events{team}; first: {_fallback(first)}"
    blocks = [
        *_storm_head(len(rows), clip(intro, CONTEXT_TEXT_MAX)),
        *(_storm_row(alert) for alert in rows),
        *_storm_tail(escalate, resolve),
    ]
    return Message(text=clip(text, FALLBACK_TEXT_MAX), blocks=blocks)


# --- announced expected changes (`/pinwatch expect`) -------------------------------------------


def window_subject(window: Window) -> str:
    """What a window covers, as plain text: the number in readable form, or the WABA."""
    target = window.target
    if target.kind is TargetKind.PHONE:
        return readable_phone(target.value)
    return f"WABA {target.value}"


def _event_names(window: Window) -> str:
    """Known event names only (checked when the window was opened): shown as code."""
    return ", ".join(f"`{name}`" for name in window.events)


def _window_facts(window: Window) -> str:
    return (
        f"*Covers* {safe(window_subject(window))} · *Events* {_event_names(window)}"
        + (f" · *Team* {safe(window.team)}" if window.team else "")
        + f" · *Window* #{window.id}"
    )


def render_window_announcement(window: Window) -> Message:
    """Posted in the team channel, for all to see, before a window counts."""
    by = actor_text(window.opened_by)
    if window.cancelled is not None:
        status = (
            f":stop_sign: Ended early by {actor_text(window.cancelled)} "
            f"{slack_date(window.cancelled.at)}: alerts are handled as usual again."
        )
    else:
        status = (
            f"Until {slack_date(window.until)}, matching alerts are posted marked as expected,"
            " without mentions or automatic escalation; a takeover chain is escalated all the"
            f" same. End it early with `/pinwatch cancel {window.id}`."
        )
    text = (
        f":calendar: {by} announced an expected change for *{safe(window_subject(window))}*: "
        f"{safe(window.reason)}\n{status}"
    )
    blocks: list[Block] = [
        HeaderBlock(text=PlainTextObject(text="Expected change announced", emoji=True)),
        SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_TEXT_MAX))),
        ContextBlock(elements=[MarkdownTextObject(text=clip(_window_facts(window), 2000))]),
    ]
    ended = " (ended early)" if window.cancelled is not None else ""
    fallback = (
        f"Expected change announced by {actor_plain(window.opened_by)} for "
        f"{window_subject(window)} until {_utc(window.until)}{ended}: {window.reason}"
        f" (window #{window.id})"
    )
    return Message(text=_plain_fallback(fallback), blocks=_to_dicts(blocks))


def render_window_cancelled(window: Window) -> Message:
    """The reply under the announcement, broadcast to the channel, when a window ends early."""
    assert window.cancelled is not None
    text = (
        f":stop_sign: {actor_text(window.cancelled)} ended window #{window.id} for "
        f"*{safe(window_subject(window))}* early: alerts are handled as usual again."
    )
    blocks = [SectionBlock(text=MarkdownTextObject(text=clip(text, SECTION_TEXT_MAX)))]
    fallback = (
        f"{actor_plain(window.cancelled)} ended window #{window.id} for "
        f"{window_subject(window)} early"
    )
    return Message(text=_plain_fallback(fallback), blocks=_to_dicts(list(blocks)))


def open_line(alert: Alert, permalink: str | None) -> str:
    """An unresolved alert, as a line of `/pinwatch open` (mrkdwn), linked to its message."""
    parts = [alert_heading(alert), slack_date(_happened_at(alert))]
    if alert.team:
        parts.append(f"team {safe(alert.team)}")
    if alert.acknowledged is not None:
        parts.append(f"acknowledged by {actor_text(alert.acknowledged)}")
    else:
        parts.append("not acknowledged")
    if alert.escalated is not None:
        parts.append("escalated")
    if alert.expected is not None:
        parts.append(f"expected (window #{alert.expected.window_id})")
    link = f"<{permalink}|#{alert.id}>" if permalink else f"#{alert.id}"
    return f"{link} " + " · ".join(parts)


def _happened_at(alert: Alert) -> float:
    return alert.event.time if alert.event.time is not None else alert.received_at


def window_line(window: Window) -> str:
    """One open window, as a line of an ephemeral answer (mrkdwn)."""
    return (
        f"#{window.id} {safe(window_subject(window))} ({_event_names(window)}) until "
        f"{slack_date(window.until)}, announced by {actor_text(window.opened_by)}: "
        f"{safe(window.reason)}"
    )


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M UTC")

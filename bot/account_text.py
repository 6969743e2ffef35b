"""Account-level events in plain words: what happened, what it means for the account, what to
check next, and Meta's own facts and identifiers. Pure; the words here are ours, the facts are
Meta's and are escaped by `render` like any outside text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.account_events import (
    AccountAlert,
    AccountUpdate,
    NameUpdate,
    ReviewUpdate,
    WabaInfo,
    read,
    unix_time,
)
from bot.catalog import (
    ACCOUNT_ALERTS_FIELD,
    ACCOUNT_UPDATE_FIELD,
    BUSINESS_ONLY,
    NAME_UPDATE_FIELD,
    REVIEW_UPDATE_FIELD,
    AccountEvent,
    AlertType,
)
from bot.events import SecurityEvent


@dataclass(frozen=True, slots=True)
class Moment:
    """A time Meta gave, for Slack to show in each reader's own time zone."""

    seconds: int


Value = str | Moment


@dataclass(frozen=True, slots=True)
class Story:
    title: str  # our words; for an event pinwatch does not know, with Meta's name in it
    happened: str
    means: str
    check: str
    facts: tuple[tuple[str, Value], ...] = ()  # our label → Meta's value
    items: tuple[tuple[str, Value | None], ...] = ()  # one line each (a restriction, until …)
    quote: str | None = None  # Meta's own description of it
    known: bool = True  # False: what Meta sent is shown as sent, too


_EVIDENCE = (
    "Before a takeover the same WABA usually shows a two-step verification reset: look for one "
    "in this channel."
)


def _partner_facts(info: WabaInfo | None) -> tuple[tuple[str, Value], ...]:
    if info is None:
        return ()
    facts: list[tuple[str, Value]] = []
    if info.owner_business_id:
        facts.append(("Owner business", info.owner_business_id))
    if info.partner_app_id:
        facts.append(("Partner app", info.partner_app_id))
    if info.ad_account_linked:
        facts.append(("Ad account", info.ad_account_linked))
    if info.solution_id:
        partners = ", ".join(info.solution_partner_business_ids)
        facts.append(
            ("Solution", info.solution_id + (f" (partners {partners})" if partners else ""))
        )
    return tuple(facts)


def _ban(update: AccountUpdate) -> Story:
    ban = update.ban_info
    state = ban.waba_ban_state if ban else None
    facts: list[tuple[str, Value]] = [("Ban state", state or "not given")]
    if ban and ban.waba_ban_date:
        facts.append(("Ban date", ban.waba_ban_date))
    if state == "REINSTATE":
        return Story(
            "WhatsApp Business Account reinstated",
            "Meta lifted the ban on this WhatsApp Business Account.",
            "Its numbers can send and receive messages again.",
            "Check that the account's numbers, partners and apps are still the ones you expect.",
            tuple(facts),
        )
    if state == "SCHEDULE_FOR_DISABLE":
        return Story(
            "WhatsApp Business Account scheduled to be disabled",
            "Meta scheduled this WhatsApp Business Account to be disabled for a policy violation.",
            "Unless the violation is resolved, the account and all its numbers stop working on "
            "the ban date.",
            "Find the violation in WhatsApp Manager (Account quality), check the messages behind "
            "it were your team's own, and fix or appeal it before that date.",
            tuple(facts),
        )
    return Story(
        "WhatsApp Business Account disabled",
        "Meta disabled this WhatsApp Business Account.",
        "None of its numbers can send or receive messages through the platform until Meta "
        "reinstates it. A ban can follow an account being taken over and misused.",
        "Check in WhatsApp Manager (Account quality) why, whether anyone on your team expected "
        "it, and request a review if it is wrong. " + _EVIDENCE,
        tuple(facts),
    )


def _restriction(update: AccountUpdate) -> Story:
    items: list[tuple[str, Value | None]] = []
    for each in update.restriction_info:
        kind = each.restriction_type or "restriction of an unnamed kind"
        if each.remediation:
            kind += f" (remediation: {each.remediation})"
        seconds = unix_time(each.expiration)
        until: Value | None = Moment(seconds) if seconds is not None else each.expiration
        items.append((kind, until))
    return Story(
        "WhatsApp Business Account restricted",
        "Meta restricted what this WhatsApp Business Account may do: each restriction and when "
        "it ends is listed below.",
        "Until they expire, the restricted actions fail (adding numbers, starting conversations, "
        "answering customers, calling or some templates, depending on the restriction).",
        "Look up the violation behind it in WhatsApp Manager (Account quality) and check the "
        "messages that caused it were sent by your team.",
        (("Restrictions", str(len(items))),),
        tuple(items) or (("none listed by Meta", None),),
    )


def _violation(update: AccountUpdate) -> Story:
    kind = update.violation_info.violation_type if update.violation_info else None
    return Story(
        "Policy violation on the WhatsApp Business Account",
        "Meta found that this WhatsApp Business Account violated its policies or terms.",
        "Repeated violations lead to restrictions and a ban. A violation nobody here caused "
        "can mean someone else is sending from the account.",
        "Review the violation in WhatsApp Manager (Account quality), and who sent the messages "
        "that caused it.",
        (("Violation", kind or "not given"),),
    )


def _partner(update: AccountUpdate, event: str) -> Story:
    facts = _partner_facts(update.waba_info)
    if event == AccountEvent.PARTNER_ADDED:
        return Story(
            "Partner added to the WhatsApp Business Account",
            "This WhatsApp Business Account was shared with a solution partner.",
            "That partner can now act on the account: send messages, manage its numbers and "
            "templates.",
            "Confirm the partner is one your business chose; if not, remove it in Meta Business "
            "Suite (Business settings, Partners) and review who has admin access.",
            facts,
        )
    info = update.disconnection_info
    who = info.initiated_by if info else None
    if who:
        facts += (("Initiated by", f"{who} (someone with access)" if who == "USER" else who),)
    if info and info.reason:
        facts += (("Reason", info.reason),)
    return Story(
        "Partner removed from the WhatsApp Business Account",
        "This WhatsApp Business Account is no longer shared with a solution partner.",
        "That partner can no longer act on the account; messaging through it has stopped.",
        "If nobody on your team removed it, find out who did: whoever can remove partners can "
        "also add their own. " + _EVIDENCE,
        facts,
    )


def _app(update: AccountUpdate, event: str) -> Story:
    facts = _partner_facts(update.waba_info)
    if event == AccountEvent.PARTNER_APP_INSTALLED:
        return Story(
            "App given access to the WhatsApp Business Account",
            "An app was granted permissions on this WhatsApp Business Account.",
            "Within those permissions the app can act on the account: read and send messages, "
            "manage numbers and templates.",
            "Confirm the app is your own or a partner's you trust; if not, remove it in Meta "
            "Business Suite (Business settings, Integrations).",
            facts,
        )
    return Story(
        "App's access to the WhatsApp Business Account removed",
        "An app's permissions on this WhatsApp Business Account were removed.",
        "That app can no longer act on the account; if it is the one your business sends "
        "through, messaging through it has stopped.",
        "Confirm someone on your team removed it on purpose.",
        facts,
    )


def _offboarded(update: AccountUpdate) -> Story:
    return Story(
        "Number re-registered: the account was offboarded",
        "The account's Cloud API connection was cut because its WhatsApp Business app was "
        "registered again, on another device or after a reinstall.",
        "Messages cannot go through the platform until it reconnects. After a two-step "
        "verification reset, a re-registration is the step a takeover takes.",
        "Ask whoever holds the phone whether they registered it again. If nobody did, treat it "
        "as a takeover: look in this channel for a two-step verification reset of the same "
        "WABA, and contact Meta support.",
        _partner_facts(update.waba_info),
    )


def _reconnected(update: AccountUpdate) -> Story:
    return Story(
        "Number reconnected to the account",
        "The account's Cloud API connection was restored after its number was registered again.",
        "Messaging resumes, through whichever device registered the number.",
        "Confirm the registration was your own device. Linked devices (WhatsApp Web) must be "
        "linked again by hand: one nobody here linked is not yours.",
        _partner_facts(update.waba_info),
    )


def _deleted(_update: AccountUpdate) -> Story:
    return Story(
        "WhatsApp Business Account deleted",
        "This WhatsApp Business Account was deleted.",
        "The account and its numbers are gone from the WhatsApp Business Platform.",
        "Confirm someone on your team deleted it on purpose; if not, check in Meta Business "
        "Suite who had admin access, and contact Meta support.",
    )


def _ad_account(update: AccountUpdate) -> Story:
    return Story(
        "Ad account linked to the WhatsApp Business Account",
        "This WhatsApp Business Account gave a partner access to its ad accounts.",
        "That partner can now run and see ads tied to the account.",
        "Confirm your business onboarded to marketing messages through that partner; if not, "
        "remove its access in Meta Business Suite.",
        _partner_facts(update.waba_info),
    )


def _update_story(event: SecurityEvent) -> Story:
    update = read(AccountUpdate, event.value)
    name = event.event
    stories: dict[str, Callable[[AccountUpdate], Story]] = {
        AccountEvent.DISABLED_UPDATE: _ban,
        AccountEvent.ACCOUNT_RESTRICTION: _restriction,
        AccountEvent.ACCOUNT_VIOLATION: _violation,
        AccountEvent.ACCOUNT_DELETED: _deleted,
        AccountEvent.ACCOUNT_OFFBOARDED: _offboarded,
        AccountEvent.ACCOUNT_RECONNECTED: _reconnected,
        AccountEvent.AD_ACCOUNT_LINKED: _ad_account,
    }
    if name in stories:
        return stories[name](update)
    if name in (AccountEvent.PARTNER_ADDED, AccountEvent.PARTNER_REMOVED):
        return _partner(update, name)
    if name in (AccountEvent.PARTNER_APP_INSTALLED, AccountEvent.PARTNER_APP_UNINSTALLED):
        return _app(update, name)
    if name in BUSINESS_ONLY:
        return Story(
            f"WhatsApp Business Account update {name}",
            "Meta reported a business change on this WhatsApp Business Account (shown below).",
            "A business, pricing or verification matter: no known security impact.",
            "Nothing, unless the change is unexpected.",
            known=False,
        )
    return Story(
        f"WhatsApp Business Account update {name or '(no event name)'}",
        "Meta reported a change to this WhatsApp Business Account that pinwatch does not know "
        "yet; what Meta sent is below.",
        "Not known yet: read what Meta sent.",
        "Look the event up in Meta's account_update webhook reference, and escalate if it "
        "touches who can act on the account.",
        known=False,
    )


_ALERT_WORDS: dict[str, tuple[str, str, str]] = {
    AlertType.OBA_APPROVED: (
        "Official business account approved",
        "The number now shows a verified badge: what it sends carries more trust with customers.",
        "Nothing, if your team asked for it; if not, find out who did.",
    ),
    AlertType.OBA_REJECTED: (
        "Official business account request rejected",
        "The number keeps its plain display name.",
        "If nobody on your team asked for an official business account, someone with access "
        "did: find out who.",
    ),
    AlertType.PROFILE_PICTURE_LOST: (
        "Business profile photo removed",
        "Customers see the number without its business photo. A profile changed by someone else "
        "can be a sign of misuse.",
        "Upload the photo again in WhatsApp Manager, and check who had access if nobody here "
        "removed it.",
    ),
}
_LIMITS = (
    "Messaging limit increase not granted",
    "The account's messaging limits stay where they are; no security impact is known.",
    "Follow Meta's description above; for security, only a request nobody here made matters.",
)


def _alert_story(event: SecurityEvent) -> Story:
    alert = read(AccountAlert, event.value)
    info = alert.alert_info
    kind = event.event
    facts: list[tuple[str, Value]] = [
        ("Meta severity", (info.alert_severity if info else None) or "not given"),
        ("Alert type", kind or "not given"),
    ]
    if info and info.alert_status:
        facts.append(("Alert status", info.alert_status))
    if alert.entity_type or alert.entity_id:
        entity = " ".join(part for part in (alert.entity_type, alert.entity_id) if part)
        if alert.entity_type == "PHONE_NUMBER":
            entity += " (a phone number ID)"
        facts.append(("Entity", entity))
    quote = info.alert_description if info else None
    known = kind in set(AlertType)
    if kind in _ALERT_WORDS:
        title, means, check = _ALERT_WORDS[kind]
    elif known:
        title, means, check = _LIMITS
    else:
        title = f"Meta account alert {kind or '(no alert type)'}"
        means = "Not known yet: read Meta's description."
        check = "Look the alert type up in Meta's account_alerts webhook reference."
    return Story(
        title,
        "Meta raised an alert about this account; its own description is below.",
        means,
        check,
        tuple(facts),
        quote=quote,
        known=known,
    )


def _name_story(event: SecurityEvent) -> Story:
    update = read(NameUpdate, event.value)
    facts: list[tuple[str, Value]] = [
        ("Requested name", update.requested_verified_name or "not given"),
        ("Decision", update.decision or "not given"),
    ]
    if update.rejection_reason:
        facts.append(("Rejection reason", update.rejection_reason))
    check = (
        "Confirm someone on your team asked for this name: a display name nobody asked for can "
        "be an impersonation attempt."
    )
    if update.decision == "APPROVED":
        return Story(
            "Display name of a number approved",
            "Meta approved a new display name for this number.",
            "Customers now see the requested name at the top of the number's profile.",
            check,
            tuple(facts),
        )
    if update.decision == "REJECTED":
        return Story(
            "Display name change rejected",
            "Meta refused a display name requested for this number.",
            "The number keeps its previous name.",
            check,
            tuple(facts),
        )
    return Story(
        "Display name change under review",
        "A new display name was requested for this number; Meta has not decided yet.",
        "Nothing changes until Meta decides.",
        check,
        tuple(facts),
    )


def _review_story(event: SecurityEvent) -> Story:
    decision = read(ReviewUpdate, event.value).decision
    facts: tuple[tuple[str, Value], ...] = (("Decision", decision or "not given"),)
    check = (
        "A review nobody here started means someone created or changed the account: check its "
        "admins in Meta Business Suite."
    )
    if decision == "APPROVED":
        return Story(
            "WhatsApp Business Account approved in review",
            "Meta reviewed this WhatsApp Business Account against its policies and approved it.",
            "The account may use the platform.",
            check,
            facts,
        )
    if decision == "REJECTED":
        return Story(
            "WhatsApp Business Account rejected in review",
            "Meta reviewed this WhatsApp Business Account against its policies and rejected it.",
            "The account cannot be used with the platform.",
            "Find out from Meta Business Suite why; " + check[0].lower() + check[1:],
            facts,
        )
    return Story(
        "WhatsApp Business Account review pending",
        "Meta's review of this WhatsApp Business Account is pending or deferred.",
        "Until Meta decides, the account cannot be used with the platform.",
        check,
        facts,
    )


def story_of(event: SecurityEvent) -> Story:
    """What an account-level event (or one of a field Meta added since) says, in plain words."""
    if event.field == ACCOUNT_UPDATE_FIELD:
        return _update_story(event)
    if event.field == ACCOUNT_ALERTS_FIELD:
        return _alert_story(event)
    if event.field == NAME_UPDATE_FIELD:
        return _name_story(event)
    if event.field == REVIEW_UPDATE_FIELD:
        return _review_story(event)
    return Story(
        f"WhatsApp webhook field {event.field}",
        "Meta sent a change of a webhook field pinwatch does not know yet; it is below.",
        "Not known yet: read what Meta sent.",
        "Look the field up in Meta's webhooks reference.",
        known=False,
    )

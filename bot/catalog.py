"""What pinwatch knows of Meta's webhook fields and event names, and the severity each event
gets unless the routing file's `alerts:` map says otherwise. Names and a table: no I/O."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

SECURITY_FIELD = "security"
ACCOUNT_UPDATE_FIELD = "account_update"
ACCOUNT_ALERTS_FIELD = "account_alerts"
NAME_UPDATE_FIELD = "phone_number_name_update"
REVIEW_UPDATE_FIELD = "account_review_update"

# The fields pinwatch stores, routes and alerts on, in the order they are listed to a user.
ALERTED_FIELDS = (
    SECURITY_FIELD,
    ACCOUNT_UPDATE_FIELD,
    ACCOUNT_ALERTS_FIELD,
    NAME_UPDATE_FIELD,
    REVIEW_UPDATE_FIELD,
)

# Meta's WhatsApp Business Account webhook fields: a change of any other field is one Meta added
# after this list, stored (never dropped) though not posted. The metrics name these alone.
META_FIELDS = frozenset(
    {
        "account_alerts",
        "account_review_update",
        "account_settings_update",
        "account_update",
        "automatic_events",
        "business_capability_update",
        "business_status_update",
        "calls",
        "flows",
        "group_lifecycle_update",
        "group_participants_update",
        "group_settings_update",
        "group_status_update",
        "history",
        "message_echoes",
        "message_template_components_update",
        "message_template_quality_update",
        "message_template_status_update",
        "messages",
        "partner_solutions",
        "payment_configuration_update",
        "phone_number_name_update",
        "phone_number_quality_update",
        "security",
        "smb_app_state_sync",
        "smb_message_echoes",
        "template_category_update",
        "tracking_events",
        "user_preferences",
    }
)

# Answered, counted and forgotten: message traffic, templates, quality and the like. Most of a
# busy callback URL's traffic is here, so it is recognised from the field names alone.
# `statuses` is how pywa's captured payloads (and our bench) name message statuses.
IGNORED_FIELDS = (META_FIELDS - set(ALERTED_FIELDS)) | {"statuses"}


class Severity(StrEnum):
    INFO = "info"
    HIGH = "high"
    CRITICAL = "critical"
    OFF = "off"  # stored and counted, never posted


# Severities that wait for a human: Acknowledge button, deadline, automatic escalation.
ACKNOWLEDGED = frozenset({Severity.HIGH, Severity.CRITICAL})


class EventType(StrEnum):
    """`security` events."""

    PIN_CHANGED = "PIN_CHANGED"
    PIN_RESET_REQUEST = "PIN_RESET_REQUEST"
    PIN_REQUEST_SUCCESS = "PIN_REQUEST_SUCCESS"


class AccountEvent(StrEnum):
    """`account_update` events (`value.event`)."""

    DISABLED_UPDATE = "DISABLED_UPDATE"
    ACCOUNT_RESTRICTION = "ACCOUNT_RESTRICTION"
    ACCOUNT_VIOLATION = "ACCOUNT_VIOLATION"
    ACCOUNT_DELETED = "ACCOUNT_DELETED"
    PARTNER_ADDED = "PARTNER_ADDED"
    PARTNER_REMOVED = "PARTNER_REMOVED"
    PARTNER_APP_INSTALLED = "PARTNER_APP_INSTALLED"
    PARTNER_APP_UNINSTALLED = "PARTNER_APP_UNINSTALLED"
    ACCOUNT_OFFBOARDED = "ACCOUNT_OFFBOARDED"
    ACCOUNT_RECONNECTED = "ACCOUNT_RECONNECTED"
    AD_ACCOUNT_LINKED = "AD_ACCOUNT_LINKED"
    # Business, not security: stored and counted, not posted unless `alerts:` says so.
    PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE = "PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE"
    MM_LITE_TERMS_SIGNED = "MM_LITE_TERMS_SIGNED"
    AUTH_INTL_PRICE_ELIGIBILITY_UPDATE = "AUTH_INTL_PRICE_ELIGIBILITY_UPDATE"
    BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE = "BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE"
    VOLUME_BASED_PRICING_TIER_UPDATE = "VOLUME_BASED_PRICING_TIER_UPDATE"


# A re-registration or a partner change: after a completed PIN reset on the same WABA, the story
# of a takeover (the number, now without two-step verification, registered elsewhere).
TAKEOVER_EVENTS = frozenset(
    {
        AccountEvent.ACCOUNT_OFFBOARDED,
        AccountEvent.ACCOUNT_RECONNECTED,
        AccountEvent.PARTNER_ADDED,
        AccountEvent.PARTNER_REMOVED,
    }
)


# What a takeover chain's first alert, its audit and its page say.
TAKEOVER_SUMMARY = "possible takeover: two-step verification off, then the number re-registered"

FOLLOW_UP_EVENTS = frozenset({EventType.PIN_REQUEST_SUCCESS, *TAKEOVER_EVENTS})


def is_follow_up(field: str, event: str) -> bool:
    """An event that threads under the reset request it follows, when there is one: its
    success (same number), or a takeover event (same WABA)."""
    if field == SECURITY_FIELD:
        return event == EventType.PIN_REQUEST_SUCCESS
    return field == ACCOUNT_UPDATE_FIELD and event in TAKEOVER_EVENTS


class AlertType(StrEnum):
    """`account_alerts` events: Meta's `alert_info.alert_type` is the event's name."""

    OBA_APPROVED = "OBA_APPROVED"
    OBA_REJECTED = "OBA_REJECTED"
    PROFILE_PICTURE_LOST = "PROFILE_PICTURE_LOST"
    INCREASED_CAPABILITIES_ELIGIBILITY_DEFERRED = "INCREASED_CAPABILITIES_ELIGIBILITY_DEFERRED"
    INCREASED_CAPABILITIES_ELIGIBILITY_FAILED = "INCREASED_CAPABILITIES_ELIGIBILITY_FAILED"
    INCREASED_CAPABILITIES_ELIGIBILITY_NEED_MORE_INFO = (
        "INCREASED_CAPABILITIES_ELIGIBILITY_NEED_MORE_INFO"
    )


# These two fields carry no event name of their own: each gets one, after the field.
NAME_UPDATE_EVENT = "PHONE_NUMBER_NAME_UPDATE"
REVIEW_UPDATE_EVENT = "ACCOUNT_REVIEW_UPDATE"

EVENTS_BY_FIELD: dict[str, tuple[str, ...]] = {
    SECURITY_FIELD: tuple(EventType),
    ACCOUNT_UPDATE_FIELD: tuple(AccountEvent),
    ACCOUNT_ALERTS_FIELD: tuple(AlertType),
    NAME_UPDATE_FIELD: (NAME_UPDATE_EVENT,),
    REVIEW_UPDATE_FIELD: (REVIEW_UPDATE_EVENT,),
}
FIELD_OF_EVENT = {event: field for field, events in EVENTS_BY_FIELD.items() for event in events}
KNOWN_EVENTS = tuple(FIELD_OF_EVENT)

BUSINESS_ONLY = frozenset(
    {
        AccountEvent.PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE,
        AccountEvent.MM_LITE_TERMS_SIGNED,
        AccountEvent.AUTH_INTL_PRICE_ELIGIBILITY_UPDATE,
        AccountEvent.BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE,
        AccountEvent.VOLUME_BASED_PRICING_TIER_UPDATE,
    }
)

# Who can act on the account, or whether it works at all: a human must look (high, critical).
_DEFAULTS: dict[str, Severity] = {
    EventType.PIN_RESET_REQUEST: Severity.HIGH,
    EventType.PIN_REQUEST_SUCCESS: Severity.CRITICAL,
    EventType.PIN_CHANGED: Severity.INFO,
    AccountEvent.ACCOUNT_RESTRICTION: Severity.HIGH,
    AccountEvent.ACCOUNT_VIOLATION: Severity.HIGH,
    AccountEvent.ACCOUNT_DELETED: Severity.CRITICAL,
    AccountEvent.PARTNER_ADDED: Severity.HIGH,
    AccountEvent.PARTNER_REMOVED: Severity.HIGH,
    AccountEvent.PARTNER_APP_INSTALLED: Severity.HIGH,
    AccountEvent.PARTNER_APP_UNINSTALLED: Severity.INFO,
    AccountEvent.ACCOUNT_OFFBOARDED: Severity.CRITICAL,
    AccountEvent.ACCOUNT_RECONNECTED: Severity.HIGH,
    AccountEvent.AD_ACCOUNT_LINKED: Severity.HIGH,
    **dict.fromkeys(BUSINESS_ONLY, Severity.OFF),
}
_META_SEVERITY = {
    "CRITICAL": Severity.CRITICAL,
    "WARNING": Severity.HIGH,
    "INFORMATIONAL": Severity.INFO,
}


def _member(value: Any, *keys: str) -> Any:
    """value[k1][k2]…, or None where any step is not an object holding the key."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def default_severity(field: str, event: str, value: Any) -> Severity:
    """The severity an event gets before the `alerts:` map is applied."""
    if field not in EVENTS_BY_FIELD:
        return Severity.OFF  # a field Meta added since: kept, never posted
    if field == ACCOUNT_ALERTS_FIELD:
        # Meta grades its own alerts.
        return _META_SEVERITY.get(_member(value, "alert_info", "alert_severity"), Severity.INFO)
    if field == NAME_UPDATE_FIELD:
        # An approved name is what customers now see: someone must have meant it.
        approved = _member(value, "decision") == "APPROVED"
        return Severity.HIGH if approved else Severity.INFO
    if field == REVIEW_UPDATE_FIELD:
        rejected = _member(value, "decision") == "REJECTED"
        return Severity.HIGH if rejected else Severity.INFO
    if event == AccountEvent.DISABLED_UPDATE and field == ACCOUNT_UPDATE_FIELD:
        reinstated = _member(value, "ban_info", "waba_ban_state") == "REINSTATE"
        return Severity.INFO if reinstated else Severity.CRITICAL
    if FIELD_OF_EVENT.get(event) != field:
        return Severity.INFO  # an event pinwatch does not know yet: shown as sent
    return _DEFAULTS[event]

"""Account-level webhook changes (`account_update`, `account_alerts`, `phone_number_name_update`,
`account_review_update`): Meta's payload models, read leniently, and the event each becomes.

Shapes from Meta's webhook references (developers.facebook.com/documentation/business-messaging/
whatsapp/webhooks/reference/<field>) and its coexistence reconnection guide. Meta adds fields and
values over time, and such a change must never be lost: every field here is optional, anything of
the wrong type reads as absent, and whatever a change holds is kept whole in the stored value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from bot.catalog import (
    ACCOUNT_ALERTS_FIELD,
    ACCOUNT_UPDATE_FIELD,
    NAME_UPDATE_EVENT,
    NAME_UPDATE_FIELD,
    REVIEW_UPDATE_EVENT,
    REVIEW_UPDATE_FIELD,
)
from bot.events import MAX_FIELD_CHARS, SecurityEvent, as_text

ACCOUNT_FIELDS = frozenset(
    {ACCOUNT_UPDATE_FIELD, ACCOUNT_ALERTS_FIELD, NAME_UPDATE_FIELD, REVIEW_UPDATE_FIELD}
)


def _scalar_text(value: Any) -> str | None:
    value = as_text(value)
    return value if isinstance(value, str) else None


def _object_or_none(value: Any) -> Any:
    return value if isinstance(value, dict) else None


def _objects(value: Any) -> list[Any]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _texts(value: Any) -> list[str]:
    items = value if isinstance(value, list) else []
    return [text for item in items if (text := _scalar_text(item)) is not None]


Text = Annotated[str | None, BeforeValidator(_scalar_text)]
Texts = Annotated[list[str], BeforeValidator(_texts)]
_Model = TypeVar("_Model", bound=BaseModel)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


_OBJECT = BeforeValidator(_object_or_none)


class WabaInfo(_Lenient):
    waba_id: Text = None
    owner_business_id: Text = None
    partner_app_id: Text = None
    ad_account_linked: Text = None
    solution_id: Text = None
    solution_partner_business_ids: Texts = Field(default_factory=list)


class BanInfo(_Lenient):
    waba_ban_state: Text = None  # DISABLE, SCHEDULE_FOR_DISABLE, REINSTATE
    waba_ban_date: Text = None  # as Meta words it: "April 17, 2025"


class Restriction(_Lenient):
    restriction_type: Text = None
    expiration: Text = None  # "2026-04-19T13:59:20+0000"
    remediation: Text = None


class ViolationInfo(_Lenient):
    violation_type: Text = None


class DisconnectionInfo(_Lenient):
    reason: Text = None
    initiated_by: Text = None  # USER or SYSTEM


class AccountUpdate(_Lenient):
    event: Text = None
    # Coexistence events may name the number; most account events have none.
    phone_number: Text = None
    display_phone_number: Text = None
    waba_info: Annotated[WabaInfo | None, _OBJECT] = None
    ban_info: Annotated[BanInfo | None, _OBJECT] = None
    restriction_info: Annotated[list[Restriction], BeforeValidator(_objects)] = Field(
        default_factory=list
    )
    violation_info: Annotated[ViolationInfo | None, _OBJECT] = None
    disconnection_info: Annotated[DisconnectionInfo | None, _OBJECT] = None


class AlertInfo(_Lenient):
    alert_severity: Text = None  # CRITICAL, WARNING, INFORMATIONAL
    alert_status: Text = None  # ACTIVE, NONE
    alert_type: Text = None
    alert_description: Text = None


class AccountAlert(_Lenient):
    entity_type: Text = None  # BUSINESS, PHONE_NUMBER, CURRENT_STATUS_ID
    entity_id: Text = None  # for PHONE_NUMBER: the number's ID, not its display number
    alert_info: Annotated[AlertInfo | None, _OBJECT] = None


class NameUpdate(_Lenient):
    display_phone_number: Text = None
    decision: Text = None  # APPROVED, DEFERRED, PENDING, REJECTED
    requested_verified_name: Text = None
    rejection_reason: Text = None


class ReviewUpdate(_Lenient):
    decision: Text = None  # APPROVED, REJECTED, PENDING, DEFERRED


def read(model: type[_Model], value: Any) -> _Model:
    """The change's value as `model`; anything else than an object reads as an empty one."""
    return model.model_validate(value if isinstance(value, dict) else {})


def _cut(text: str | None) -> str:
    return (text or "")[:MAX_FIELD_CHARS]


def _update(value: Any) -> tuple[str, str | None, str]:
    update = read(AccountUpdate, value)
    waba = update.waba_info.waba_id if update.waba_info else None
    return update.event or "", waba, update.display_phone_number or update.phone_number or ""


def _alert(value: Any) -> tuple[str, str | None, str]:
    info = read(AccountAlert, value).alert_info
    return (info.alert_type if info else None) or "", None, ""


def _name(value: Any) -> tuple[str, str | None, str]:
    return NAME_UPDATE_EVENT, None, read(NameUpdate, value).display_phone_number or ""


def _review(_value: Any) -> tuple[str, str | None, str]:
    return REVIEW_UPDATE_EVENT, None, ""


# Each field's reader: (event name, WABA ID if the value names one, display number or "").
_READERS: dict[str, Callable[[Any], tuple[str, str | None, str]]] = {
    ACCOUNT_UPDATE_FIELD: _update,
    ACCOUNT_ALERTS_FIELD: _alert,
    NAME_UPDATE_FIELD: _name,
    REVIEW_UPDATE_FIELD: _review,
}


def stored_value(value: Any) -> dict[str, Any]:
    """A change's value as the store keeps it: an object stays as sent, anything else is
    wrapped, so that nothing Meta sent is lost."""
    return value if isinstance(value, dict) else {"value": value}


def account_event(field: str, *, entry_id: str, time: int | None, value: Any) -> SecurityEvent:
    """The event an account-level change becomes, whatever it holds: routed by its WABA."""
    event, waba, phone = _READERS[field](value)
    # A partner receives its customers' changes under its own business ID: the WABA they are
    # about is the one `waba_info` names.
    return SecurityEvent(
        waba_id=_cut(waba or entry_id),
        phone_number=_cut(phone),
        event=_cut(event),
        time=time,
        value=stored_value(value),
        field=field,
    )


def unknown_field_event(
    field: str, *, entry_id: str, time: int | None, value: Any
) -> SecurityEvent:
    """A change of a field Meta added after pinwatch was written: stored, never posted."""
    return SecurityEvent(
        waba_id=_cut(entry_id),
        phone_number="",
        event="",
        time=time,
        value=stored_value(value),
        field=_cut(field),
    )


def unix_time(text: str | None) -> int | None:
    """Meta's `expiration` ("2026-04-19T13:59:20+0000", or Unix seconds) as Unix seconds."""
    if text is None:
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp())
    except (ValueError, OverflowError):
        return None

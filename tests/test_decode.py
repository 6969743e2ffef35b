"""parse_delivery's reading of Meta's envelope (msgspec), beyond what the end-to-end tests post:
numbers as text, pydantic's lax times, unknown fields, values kept whole, error locations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.webhook import MalformedDelivery, parse_delivery

WABA = "102290129340398"


def change(field: str = "security", /, **value: Any) -> dict[str, Any]:
    return {"field": field, "value": value or {"display_phone_number": "1555", "event": "E"}}


def entry(*changes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": WABA, "time": 1748811473, "changes": list(changes), **fields}


def body(*entries: Any, **top: Any) -> bytes:
    return json.dumps(
        {"object": "whatsapp_business_account", "entry": list(entries), **top}
    ).encode()


def refusal(raw: bytes) -> str:
    with pytest.raises(MalformedDelivery) as refused:
        parse_delivery(raw)
    return str(refused.value)


def test_numbers_are_read_as_their_text_and_the_value_is_kept_as_sent() -> None:
    value = {"display_phone_number": 15550783881, "event": "PIN_CHANGED", "requester": 6155.0}
    [event] = parse_delivery(body(entry(change(**value), id=102290129340398.0))).events
    assert (event.waba_id, event.phone_number, event.requester) == (WABA, "15550783881", "6155")
    assert event.value == value


def test_an_empty_or_null_requester_is_none() -> None:
    for requester in ("", None):
        [event] = parse_delivery(body(entry(change(event="E", requester=requester)))).events
        assert event.requester is None


@pytest.mark.parametrize(
    ("time", "read"),
    [
        (1748811473, 1748811473),
        (1748811473.0, 1748811473),
        (" 1748811473 ", 1748811473),
        ("1748811473.00", 1748811473),
        (True, 1),  # pydantic's lax int took a boolean; so does this
        (False, 0),
        (2**63 - 1, 2**63 - 1),
        (None, None),
    ],
)
def test_times_are_read_as_pydantic_read_them(time: Any, read: int | None) -> None:
    [event] = parse_delivery(body(entry(change(), time=time))).events
    assert event.time == read


def test_an_entry_may_have_no_time() -> None:
    no_time = entry(change())
    del no_time["time"]
    [event] = parse_delivery(body(no_time)).events
    assert event.time is None


@pytest.mark.parametrize(
    ("time", "reason"),
    [
        (1.5, "Input should be a valid integer, got a number with a fractional part"),
        ("soon", "Input should be a valid integer, unable to parse string as an integer"),
        ("12.", "Input should be a valid integer, unable to parse string as an integer"),
        (-1, "Input should be greater than or equal to 0"),
        (2**63, "Input should be less than 9223372036854775808"),
    ],
)
def test_a_bad_time_is_refused_where_it_is(time: Any, reason: str) -> None:
    raw = body(entry(change()), entry(change(), time=time))
    assert refusal(raw) == f"not a WhatsApp webhook: entry.1.time: {reason}"


def test_a_time_of_the_wrong_type_is_refused_where_it_is() -> None:
    assert refusal(body(entry(change(), time=[1]))).startswith(
        "not a WhatsApp webhook: entry.0.time: "
    )


def test_unknown_fields_are_ignored_everywhere_and_kept_in_the_value() -> None:
    value = {"display_phone_number": "1555", "event": "E", "new": {"deep": [1, {"x": None}]}}
    extra = {"field": "security", "value": value, "added": [1, 2]}
    raw = body(entry(extra, added={"a": 1}), added="later")
    [event] = parse_delivery(raw).events
    assert event.value == value


def test_values_are_kept_whole_big_numbers_and_all() -> None:
    value = {"nested": [{"a": 2**70, "b": [1.5, None, True]}], "waba_info": {"waba_id": "7"}}
    raw = body(entry(change("brand_new_field", **value), change("account_update", **value)))
    unknown, account = parse_delivery(raw).events
    assert unknown.value == value
    assert account.value == value


def test_an_account_value_that_is_not_an_object_is_kept_wrapped() -> None:
    raw = body(entry({"field": "account_update", "value": [1, 2]}, {"field": "account_update"}))
    assert [event.value for event in parse_delivery(raw).events] == [
        {"value": [1, 2]},
        {"value": None},
    ]


def test_message_traffic_is_counted_and_needs_no_entry_id_or_time() -> None:
    traffic = {"changes": [{"field": "messages", "value": {"x": 1}}], "time": "not a time"}
    parsed = parse_delivery(body(traffic, traffic))
    assert (parsed.events, parsed.ignored_fields) == ([], {"messages": 2})


def test_message_traffic_beside_a_security_change_is_counted() -> None:
    raw = body(entry(change(), {"field": "statuses", "value": [{"deep": [[[]]]}]}))
    parsed = parse_delivery(raw)
    assert len(parsed.events) == 1
    assert parsed.ignored_fields == {"statuses": 1}


NOT_WHATSAPP = "not a WhatsApp webhook: "


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"entry": []}', NOT_WHATSAPP + "object: Field required"),
        (b'{"object": "whatsapp_business_account"}', NOT_WHATSAPP + "entry: Field required"),
        (body({"changes": [change()]}), NOT_WHATSAPP + "entry.0.id: Field required"),
        (
            body(entry(change()), entry({"value": {}})),
            NOT_WHATSAPP + "entry.1.changes.0.field: Field required",
        ),
        (
            body({"id": "1", "changes": [{"field": "messages"}, {"value": 1}]}),
            NOT_WHATSAPP + "entry.0.changes.1.field: Field required",
        ),
        (body(entry(change(display_phone_number=None))), "security value: display_phone_number: "),
        (body(entry(change(event="E", requester=True))), "security value: requester: "),
        (body(entry(change()), object="page"), NOT_WHATSAPP + "object is 'page'"),
    ],
)
def test_refusals_say_where(raw: bytes, message: str) -> None:
    assert refusal(raw).startswith(message)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"[]", "body"),
        (b'{"object": 1, "entry": []}', "object"),
        (b'{"object": "whatsapp_business_account", "entry": {}}', "entry"),
        (body(1), "entry.0"),
        (body({"changes": [change(), "x"]}), "entry.0.changes.1"),
        (body(entry(), entry({"field": 7, "value": {}})), "entry.1.changes.0.field"),
        (body(entry(change(), id=True)), "entry.0.id"),
        (body(entry(change(), id=None)), "entry.0.id"),
    ],
)
def test_type_errors_name_their_location(raw: bytes, where: str) -> None:
    assert refusal(raw).startswith(f"{NOT_WHATSAPP}{where}: ")


def test_a_security_value_that_is_not_an_object_is_refused() -> None:
    values: list[Any] = ["x", [], None]
    for value in values:
        raw = body(entry({"field": "security", "value": value}))
        assert refusal(raw) == "a security change's value is not an object"
    assert refusal(body(entry({"field": "security"}))) == (
        "a security change's value is not an object"
    )


def test_a_number_json_cannot_hold_in_a_kept_value_is_refused_where_it_is() -> None:
    raw = body(entry(change())).replace(b'"1555"', b"1e400")
    assert refusal(raw) == ("not a WhatsApp webhook: entry.0.changes.0.value: Number out of range")


def nested_value(levels: int) -> bytes:
    """A security change whose value holds `levels` nested arrays."""
    inner = b"[" * levels + b"]" * levels
    raw = body(entry(change(display_phone_number="1555", event="E", deep=0)))
    return raw.replace(b'"deep": 0', b'"deep": ' + inner)


def test_kept_values_are_as_deep_as_pydantic_took_them() -> None:
    # pydantic's parser took 200 levels in all; the value sits 6 deep, and holds 195 more.
    [event] = parse_delivery(nested_value(195)).events
    assert event.value["deep"] == json.loads(b"[" * 195 + b"]" * 195)
    assert refusal(nested_value(196)) == "body is not JSON"


def test_a_long_shallow_value_is_kept() -> None:
    value = {"display_phone_number": "1555", "event": "E", "note": [["x" * 10]] * 100}
    [event] = parse_delivery(body(entry(change(**value)))).events
    assert event.value == value


def test_nesting_past_the_interpreter_s_recursion_limit_is_not_json() -> None:
    deep = {"field": "messages", "value": 0}
    raw = body(entry(deep)).replace(b'"value": 0', b'"value": ' + b"[" * 50_000 + b"]" * 50_000)
    assert refusal(raw) == "body is not JSON"


def test_bytes_that_are_not_utf8_are_not_json_even_where_nothing_is_read() -> None:
    traffic = {"changes": [{"field": "messages", "value": {"text": "caf"}}]}
    raw = body(traffic).replace(b"caf", b"caf\xe9")
    assert refusal(raw) == "body is not JSON"
    [event] = parse_delivery(body(entry(change(event="caf\u00e9")))).events
    assert event.event == "caf\u00e9"

"""Webhook bodies as Meta sends them, signed in advance, and the Lua table files wrk reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.webhook import WHATSAPP_OBJECT, sign

META_APP_SECRET = "bench-meta-app-secret"
META_VERIFY_TOKEN = "bench-verify-token"
SLACK_SIGNING_SECRET = "bench-slack-signing-secret"
SLACK_BOT_TOKEN = "xoxb-test-token"  # the token tests.fake_slack.FakeSlack expects by default

WABA_ID = "102290129340398"
CHANNELS = 20
# One number per team; the routing file sends number k to channel C0BENCH<k>.
PHONES = tuple(f"1555010{k:04d}" for k in range(CHANNELS))
BASE_TIME = 1_750_000_000
# LuaJIT caps the constants of one function: each chunk of the table is its own function.
_LUA_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Signed:
    body: bytes
    signature: str  # the X-Hub-Signature-256 value


def _signed(payload: dict[str, object]) -> Signed:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Signed(body, sign(META_APP_SECRET.encode(), body))


def security_bodies(
    count: int, *, tag: str, start: int = 0, channels: int = CHANNELS
) -> list[Signed]:
    """Distinct PIN_RESET_REQUEST deliveries spread over the first `channels` of the 20 routed
    numbers (each routed to a channel of its own).

    The requester carries ``tag`` and the index, so every body is a new event for the store
    (and W3 can find the message made of it at the fake Slack).
    """
    return [
        _signed(
            {
                "object": WHATSAPP_OBJECT,
                "entry": [
                    {
                        "id": WABA_ID,
                        "time": BASE_TIME + i,
                        "changes": [
                            {
                                "value": {
                                    "display_phone_number": PHONES[i % channels],
                                    "event": "PIN_RESET_REQUEST",
                                    "requester": requester(tag, i),
                                },
                                "field": "security",
                            }
                        ],
                    }
                ],
            }
        )
        for i in range(start, start + count)
    ]


def requester(tag: str, index: int) -> str:
    return f"{tag}{index:08d}"


def other_field_bodies(count: int) -> list[Signed]:
    """`messages` and `statuses` deliveries, alternating, shaped like Meta's real ones."""
    out = []
    for i in range(count):
        metadata = {"display_phone_number": PHONES[i % CHANNELS], "phone_number_id": "1060001"}
        value: dict[str, object]
        if i % 2 == 0:
            value = {
                "messaging_product": "whatsapp",
                "metadata": metadata,
                "contacts": [{"profile": {"name": f"Customer {i}"}, "wa_id": f"4479{i:08d}"}],
                "messages": [
                    {
                        "from": f"4479{i:08d}",
                        "id": f"wamid.HBgLNDQ3OTAwMDAwMDAVAgASGBQz{i:012d}",
                        "timestamp": str(BASE_TIME + i),
                        "text": {"body": f"Hello, is my order {i} on its way?"},
                        "type": "text",
                    }
                ],
            }
            field = "messages"
        else:
            value = {
                "messaging_product": "whatsapp",
                "metadata": metadata,
                "statuses": [
                    {
                        "id": f"wamid.HBgLNDQ3OTAwMDAwMDAVAgARGBI{i:012d}",
                        "status": "delivered",
                        "timestamp": str(BASE_TIME + i),
                        "recipient_id": f"4479{i:08d}",
                        "conversation": {
                            "id": f"c0ffee{i:010d}",
                            "origin": {"type": "utility"},
                        },
                        "pricing": {
                            "billable": True,
                            "pricing_model": "CBP",
                            "category": "utility",
                        },
                    }
                ],
            }
            field = "statuses"
        out.append(
            _signed(
                {
                    "object": WHATSAPP_OBJECT,
                    "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": field}]}],
                }
            )
        )
    return out


def _lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def _lua_lines(bodies: Iterable[Signed]) -> Iterator[str]:
    yield "local t = {}\n"
    index = 0
    for index, item in enumerate(bodies, start=1):
        if index % _LUA_CHUNK == 1:
            yield "do (function()\n"
        yield f"t[{index}] = {{{_lua_string(item.signature)}, {_lua_string(item.body.decode())}}}\n"
        if index % _LUA_CHUNK == 0:
            yield "end)() end\n"
    if index % _LUA_CHUNK != 0:
        yield "end)() end\n"
    yield "return t\n"


def write_lua_table(path: Path, bodies: Iterable[Signed]) -> Path:
    """A Lua file returning {{signature, body}, ...}, for bench/wrk.lua to cycle through."""
    with path.open("w", encoding="utf-8") as out:
        out.writelines(_lua_lines(bodies))
    return path

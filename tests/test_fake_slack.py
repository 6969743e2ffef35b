"""The fake Slack itself, driven through slack_sdk's real AsyncWebClient."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.fake_slack import FakeSlack, start_fake_slack

Env = tuple[FakeSlack, AsyncWebClient]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


@pytest.fixture
async def env(aiohttp_server: AiohttpServer, session: aiohttp.ClientSession) -> Env:
    fake, url = await start_fake_slack(
        aiohttp_server,
        channels={"wa-security": "C0WASEC"},
        missing_channels={"#gone"},
        usergroups={"S0PAYSEC": ["U0ALICE", "U0CAROL"]},
    )
    client = AsyncWebClient(
        token="xoxb-test-token", base_url=url, session=session, retry_handlers=[]
    )
    return fake, client


async def test_post_update_permalink(env: Env) -> None:
    fake, client = env
    posted = await client.chat_postMessage(channel="#wa-security", text="PIN reset requested")
    assert posted["channel"] == "C0WASEC"
    await client.chat_update(channel="C0WASEC", ts=posted["ts"], text="acknowledged by Alice")
    link = await client.chat_getPermalink(channel="C0WASEC", message_ts=posted["ts"])

    [message] = fake.messages("wa-security")
    assert message.text == "acknowledged by Alice"
    assert [u["text"] for u in message.updates] == ["acknowledged by Alice"]
    digits = posted["ts"].replace(".", "")
    assert link["permalink"] == f"https://fake.slack.test/archives/C0WASEC/p{digits}"
    assert [c.method for c in fake.calls] == [
        "chat.postMessage",
        "chat.update",
        "chat.getPermalink",
    ]


async def test_threads_and_unknown_channels(env: Env) -> None:
    fake, client = env
    parent = await client.chat_postMessage(channel="#new-team", text="parent")
    await client.chat_postMessage(channel=parent["channel"], thread_ts=parent["ts"], text="reply")
    assert parent["channel"] == fake.channel_id("#new-team")
    assert [m.text for m in fake.top_level("#new-team")] == ["parent"]
    assert [m.text for m in fake.replies("new-team", parent["ts"])] == ["reply"]

    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="#new-team", thread_ts="1.000000", text="x")
    assert exc.value.response["error"] == "thread_not_found"


async def test_channel_not_found_and_not_in_channel(env: Env) -> None:
    fake, client = env
    fake.not_in_channel.add("C0PRIVATE")
    for channel, error in [("#gone", "channel_not_found"), ("C0PRIVATE", "not_in_channel")]:
        with pytest.raises(SlackApiError) as exc:
            await client.chat_postMessage(channel=channel, text="hello")
        assert exc.value.response["error"] == error
    assert all(c.failed for c in fake.calls)
    assert fake.messages() == []


async def test_invalid_auth_is_recorded(env: Env, session: aiohttp.ClientSession) -> None:
    fake, client = env
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=client.base_url, session=session)
    with pytest.raises(SlackApiError) as exc:
        await wrong.auth_test()
    assert exc.value.response.status_code == 200
    assert exc.value.response["error"] == "invalid_auth"
    assert fake.calls_to("auth.test")[0].error == "invalid_auth"
    assert (await client.auth_test())["user_id"] == "U0PINWATCH"


async def test_rate_limited_then_ok(env: Env) -> None:
    fake, client = env
    fake.fail("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="#wa-security", text="hi")
    assert exc.value.response.status_code == 429
    assert exc.value.response.headers["Retry-After"] == "7"
    assert exc.value.response["error"] == "ratelimited"
    await client.chat_postMessage(channel="#wa-security", text="hi")
    assert [c.ok for c in fake.calls] == [False, True]


async def test_server_error_any_method(env: Env) -> None:
    fake, client = env
    fake.fail("*", status=500, times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as exc:
            await client.auth_test()
        assert exc.value.response.status_code == 500
    await client.auth_test()


async def test_delay_times_out_client(env: Env) -> None:
    fake, client = env
    fake.fail("chat.postMessage", delay=30)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as short:
        impatient = AsyncWebClient(token=fake.token, base_url=client.base_url, session=short)
        with pytest.raises(TimeoutError):
            await impatient.chat_postMessage(channel="#wa-security", text="slow")
    [call] = await fake.wait_for_calls("chat.postMessage", ok_only=False)
    assert call.pending
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("blocks", "pointer"),
    [
        ([{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}], "/blocks/0/text"),
        ([{"type": "divider"}] * 51, "/blocks]"),
    ],
)
async def test_invalid_blocks(env: Env, blocks: list[dict[str, object]], pointer: str) -> None:
    fake, client = env
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="#wa-security", text="fallback", blocks=blocks)
    assert exc.value.response["error"] == "invalid_blocks"
    [message] = exc.value.response["response_metadata"]["messages"]
    assert pointer in message
    assert fake.messages() == []


async def test_usergroup_members(env: Env) -> None:
    _, client = env
    assert (await client.usergroups_users_list(usergroup="S0PAYSEC"))["users"] == [
        "U0ALICE",
        "U0CAROL",
    ]
    with pytest.raises(SlackApiError) as exc:
        await client.usergroups_users_list(usergroup="S0NOPE")
    assert exc.value.response["error"] == "no_such_subteam"


async def test_wait_for_calls(env: Env) -> None:
    fake, client = env
    fake.fail("chat.postMessage", error="channel_not_found")

    async def post_twice() -> None:
        for _ in range(2):
            with contextlib.suppress(SlackApiError):
                await client.chat_postMessage(channel="#wa-security", text="hi")

    task = asyncio.create_task(post_twice())
    [call] = await fake.wait_for_calls("chat.postMessage")
    await task
    assert call.ok
    assert [c.error for c in fake.calls] == ["channel_not_found", None]
    with pytest.raises(AssertionError, match=r"chat\.postMessage:channel_not_found"):
        await fake.wait_for_calls("chat.postMessage", 2, timeout=0.05)

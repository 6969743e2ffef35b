"""META_APP_SECRET with several secrets: any of them signs a delivery, a metric says which one
by position, a bad list stops serve without printing a secret, and send-test signs with the
first."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sys
import traceback
from pathlib import Path
from typing import cast

import aiohttp
import pytest

from bot.settings import Settings, SettingsError
from bot.webhook import (
    SIGNATURE_HEADER,
    SignatureError,
    keyed,
    sign,
    signature_digest,
    verify_signature,
)
from tests.conftest import REFERENCE_BODY, Pinwatch, StartPinwatch, delivery, security
from tests.serve import start_serve
from tests.test_metrics_hardening import series

OLD = "old-meta-app-secret-0123456789"
NEW = "new-meta-app-secret-9876543210"
OTHER = "other-meta-app-secret-5555555555"
SIGNATURES = "pinwatch_webhook_signatures_total"
# The other variables Settings requires.
BASE_ENV = {"META_VERIFY_TOKEN": "verify-token", "SLACK_SIGNING_SECRET": "signing-secret"}


def by_position(text: str) -> dict[str, float]:
    return series(text, SIGNATURES)


async def scrape(pinwatch: Pinwatch) -> str:
    async with pinwatch.client.get("/metrics") as response:
        assert response.status == 200
        return await response.text()


def no_secret_in(text: str, *secrets: str) -> None:
    """Neither a secret, nor its hash, nor a part of it (pydantic cuts long values in two)."""
    for secret in secrets:
        for part in (secret, secret[:12], secret[-12:]):
            assert part not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text


# --- a delivery signed by any of them ----------------------------------------------------


async def test_a_delivery_signed_by_either_secret_is_accepted_and_counted_by_position(
    start_pinwatch: StartPinwatch,
) -> None:
    pinwatch = await start_pinwatch(meta_app_secrets=(OLD, NEW))
    # Both series exist before the first delivery: an unused secret shows as 0, not as nothing.
    assert by_position(await scrape(pinwatch)) == {'{secret="1"}': 0, '{secret="2"}': 0}

    assert (await pinwatch.post_webhook(delivery(security("PIN_CHANGED")), secret=OLD))[0] == 200
    reset = delivery(security("PIN_RESET_REQUEST", requester="a@example.com"), time=1748811500)
    assert (await pinwatch.post_webhook(reset, secret=NEW))[0] == 200
    await pinwatch.wait_posted(1)
    await pinwatch.wait_posted(2)
    texts = [message.text for message in pinwatch.slack.top_level("C0PAYMENTS")]
    assert len(texts) == 2
    assert "PIN changed" in texts[0]
    assert "reset requested" in texts[1]

    neither = delivery(security("PIN_CHANGED"), time=1748811600)
    assert (await pinwatch.post_webhook(neither, secret=OTHER))[0] == 401
    assert await pinwatch.query("SELECT count(*) FROM alerts") == [(2,)]

    for at in (1748811700, 1748811800):
        later = delivery(security("PIN_CHANGED"), time=at)
        assert (await pinwatch.post_webhook(later, secret=NEW))[0] == 200
    text = await scrape(pinwatch)
    assert by_position(text) == {'{secret="1"}': 1, '{secret="2"}': 3}
    assert series(text, "pinwatch_webhook_deliveries_total")['{result="bad_signature"}'] == 1
    no_secret_in(text, OLD, NEW)


async def test_one_secret_is_position_1(pinwatch: Pinwatch) -> None:
    assert (await pinwatch.post_webhook(REFERENCE_BODY))[0] == 200
    assert by_position(await scrape(pinwatch)) == {'{secret="1"}': 1}


class Tried:
    """A keyed secret that notes each time a delivery's digest is made with it."""

    def __init__(self, secret: bytes, tried: list[bytes]) -> None:
        self._secret = secret
        self._keyed = keyed(secret)
        self._tried = tried

    def copy(self) -> hmac.HMAC:
        self._tried.append(self._secret)
        return self._keyed.copy()


def test_every_secret_is_tried_whichever_matches() -> None:
    tried: list[bytes] = []
    keys = [OLD.encode(), NEW.encode(), OTHER.encode()]
    secrets = cast(list[hmac.HMAC], [Tried(key, tried) for key in keys])
    for position, key in enumerate(keys):
        tried.clear()
        given = signature_digest(sign(key, REFERENCE_BODY))
        assert verify_signature(secrets, REFERENCE_BODY, given) == position
        assert tried == keys
    tried.clear()
    with pytest.raises(SignatureError):
        verify_signature(
            secrets, REFERENCE_BODY, signature_digest(sign(b"neither", REFERENCE_BODY))
        )
    assert tried == keys


# --- META_APP_SECRET validated before anything starts -------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"{OLD},,{NEW}", "secret 2 of 3 is empty"),
        (f"{OLD},", "secret 2 of 2 is empty"),
        (f",{OLD}", "secret 1 of 2 is empty"),
        (f"{OLD}, ,{NEW}", "secret 2 of 3 is only whitespace"),
        ("   ", "secret 1 of 1 is only whitespace"),
        (f"{OLD},{NEW},{OLD}", "secret 3 of 3 is the same as secret 1"),
        (f"{OLD}, {OLD} ", "secret 2 of 2 is the same as secret 1"),
    ],
    ids=["empty", "trailing-comma", "leading-comma", "whitespace", "blank", "repeated", "spaced"],
)
async def test_serve_refuses_a_bad_list_without_printing_a_secret(
    tmp_path: Path, database_url: str | None, value: str, problem: str
) -> None:
    env = {"META_APP_SECRET": value} | ({"DATABASE_URL": database_url} if database_url else {})
    serve = start_serve(tmp_path, **env)
    try:
        code = await asyncio.to_thread(serve.process.wait, 30)
    finally:
        serve.kill()
    output = serve.output()
    assert code == 1, output
    assert f"pinwatch: cannot start: META_APP_SECRET {problem}" in output
    assert "Traceback" not in output
    no_secret_in(output, OLD, NEW)


async def test_serve_accepts_either_of_two_secrets_and_never_prints_them(
    tmp_path: Path, database_url: str | None
) -> None:
    env = {"META_APP_SECRET": f"{OLD}, {NEW}"}  # the space after the comma is not part of it
    serve = start_serve(tmp_path, **env | ({"DATABASE_URL": database_url} if database_url else {}))
    try:
        await serve.wait_listening()
        async with aiohttp.ClientSession() as session:
            for secret, expected in ((NEW, 200), (OLD, 200), (OTHER, 401), (f" {NEW}", 401)):
                headers = {SIGNATURE_HEADER: sign(secret.encode(), REFERENCE_BODY)}
                async with session.post(
                    f"{serve.url}/webhook", data=REFERENCE_BODY, headers=headers
                ) as response:
                    assert response.status == expected, secret
            async with session.get(f"{serve.url}/metrics") as response:
                text = await response.text()
        assert by_position(text) == {'{secret="1"}': 1, '{secret="2"}': 1}
        await serve.wait_for_output("dry run")
        await serve.terminate(timeout=10)
    finally:
        serve.kill()
    no_secret_in(serve.output(), OLD, NEW)


def test_settings_never_show_a_secret() -> None:
    settings = Settings.from_env({**BASE_ENV, "META_APP_SECRET": f"{OLD},{NEW}"})
    assert [s.get_secret_value() for s in settings.meta_app_secrets] == [OLD, NEW]
    assert {OLD, NEW} <= set(settings.secret_values())  # each redacted from the logs
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        no_secret_in(shown, OLD, NEW)

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**BASE_ENV, "META_APP_SECRET": f"{OLD},{OLD}"})
    assert str(refused.value) == (
        "META_APP_SECRET secret 2 of 2 is the same as secret 1 (secrets are separated by commas)"
    )
    # Not even in a traceback that some caller might log.
    no_secret_in("".join(traceback.format_exception(refused.value)), OLD)


# --- send-test ---------------------------------------------------------------------------


async def send_test(pinwatch: Pinwatch, meta_app_secret: str) -> tuple[int, str]:
    env = {**os.environ, "META_APP_SECRET": meta_app_secret}
    url = str(pinwatch.client.make_url("/webhook"))
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bot", "send-test", "--url", url),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_send_test_signs_with_the_first_secret(start_pinwatch: StartPinwatch) -> None:
    pinwatch = await start_pinwatch(meta_app_secrets=(OLD, NEW))

    # The server knows NEW as its 2nd; send-test's first is NEW, its second one it does not know.
    code, out = await send_test(pinwatch, f"{NEW},{OTHER}")
    assert (code, "server answered 200: ok" in out) == (0, True), out
    await pinwatch.wait_posted(1)
    assert by_position(await scrape(pinwatch)) == {'{secret="1"}': 0, '{secret="2"}': 1}

    # Its first is unknown to the server (its second is OLD): refused, and it says why.
    code, out = await send_test(pinwatch, f"{OTHER},{OLD}")
    assert code == 1
    assert "server answered 401" in out
    assert "none of its secrets is the one send-test signed with" in out

    code, out = await send_test(pinwatch, f"{NEW},,{OLD}")
    assert code == 2
    assert "pinwatch: META_APP_SECRET secret 2 of 3 is empty" in out
    no_secret_in(out, OLD, NEW)
    assert by_position(await scrape(pinwatch)) == {'{secret="1"}': 0, '{secret="2"}': 1}

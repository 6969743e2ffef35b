"""DESIGN.md's promises about running pinwatch, each through the real process or real HTTP:
send-test's options, readiness while starting, Slack's 3 seconds, and `make run`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import META_APP_SECRET, REFERENCE_BODY, Pinwatch, slack_signature
from tests.test_operations import free_port, start_serve, wait_for_output

ROOT = Path(__file__).parent.parent
SLACK_SLOW = 3.5  # seconds: longer than Slack waits for the answer to a click


async def run_command(*argv: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_send_test_sends_the_event_number_and_waba_it_is_given(pinwatch: Pinwatch) -> None:
    url = str(pinwatch.client.make_url("/webhook"))
    code, out = await run_command(
        sys.executable,
        "-m",
        "bot",
        "send-test",
        "--url",
        url,
        "--event",
        "PIN_CHANGED",
        "--phone",
        "+44 20 7946 0018",
        "--waba",
        "109999999999999",
        env={**os.environ, "META_APP_SECRET": META_APP_SECRET},
    )
    assert code == 0, out
    assert "sent PIN_CHANGED for +44 20 7946 0018 (WABA 109999999999999)" in out
    alert = await pinwatch.wait_posted(1)
    # The support route matches that number: the alert is where the number sends it.
    [message] = pinwatch.slack.top_level("C0SUPPORT")
    assert alert.event.event == "PIN_CHANGED"
    assert alert.event.waba_id == "109999999999999"
    shown = message.text + json.dumps(message.blocks)
    assert "PIN changed" in message.text
    assert "+44 20 7946 0018" in shown
    assert "109999999999999" in shown


async def readyz_status(session: aiohttp.ClientSession, base: str) -> int | None:
    """/readyz's status, or None while nothing listens on the port."""
    try:
        async with session.get(f"{base}/readyz") as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return None


async def test_readyz_is_not_ready_while_starting_then_ready(tmp_path: Path) -> None:
    # Another process holds the store: pinwatch waits for it while starting (up to SQLite's
    # 5 s busy timeout), and a readiness probe must not be told "ready" meanwhile.
    holder = sqlite3.connect(tmp_path / "pinwatch.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    process, base, _, log = start_serve(tmp_path)
    try:
        await wait_for_output(log, "in force")  # logged just before the app starts
        seen: list[int | None] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                seen.append(await readyz_status(session, base))
                await asyncio.sleep(0.05)
            assert process.poll() is None
            # aiohttp listens only once the store is open, so "starting" shows as no answer;
            # a server that answered before would have to say 503.
            assert set(seen) <= {None, 503}, seen
            holder.execute("ROLLBACK")
            holder.close()
            async with asyncio.timeout(10):
                while await readyz_status(session, base) != 200:
                    await asyncio.sleep(0.05)
            async with session.get(f"{base}/readyz") as response:
                assert (await response.json())["status"] == "ready"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_click_is_answered_within_3_seconds_while_slack_is_slow(
    pinwatch: Pinwatch,
) -> None:
    await pinwatch.post_webhook(REFERENCE_BODY)
    await pinwatch.wait_posted(1)
    # From now on every Slack call takes longer than Slack waits for our answer to a click.
    pinwatch.slack.fail("*", times=100, delay=SLACK_SLOW)
    started = time.monotonic()
    status = await pinwatch.click("acknowledge", 1, user="U0ALICE")
    answered_in = time.monotonic() - started
    assert status == 200
    assert answered_in < 3.0, f"answered in {answered_in:.2f}s"
    # The click was still applied, once Slack answered.
    await pinwatch.slack.wait_for_calls("chat.update", timeout=SLACK_SLOW + 5)
    assert (await pinwatch.alert(1)).acknowledged is not None


def start_make_run(tmp_path: Path, port: int) -> tuple[subprocess.Popen[str], Path, dict[str, str]]:
    """`make run` with nothing set, from a directory of its own so that the example config's
    store lands there; its output to a file, and the environment it ran in."""
    for name in (".venv", "pyproject.toml", "config.example.yaml"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "SLACK_", "MAKE"))}
    out = tmp_path / "make-run.log"
    with out.open("w") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "run", f"PORT={port}"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: make, the shell and pinwatch
        )
    return make, out, env


async def test_make_run_prints_its_secrets_and_a_send_test_line_that_works(
    tmp_path: Path,
) -> None:
    port = free_port()
    make, out, env = start_make_run(tmp_path, port)
    try:
        await wait_for_output(out, "send-test --url")
        printed = out.read_text()
        secrets = dict(
            re.findall(
                r"\b(META_APP_SECRET|META_VERIFY_TOKEN|SLACK_SIGNING_SECRET)=(\S+)",
                printed.split("try it")[0],
            )
        )
        assert set(secrets) == {"META_APP_SECRET", "META_VERIFY_TOKEN", "SLACK_SIGNING_SECRET"}
        [line] = [x.strip() for x in printed.splitlines() if "send-test --url" in x]
        assert f"http://127.0.0.1:{port}/webhook" in line
        assert f"META_APP_SECRET={secrets['META_APP_SECRET']} " in line

        # The server started with those secrets: the handshake answers to the verify token.
        async with aiohttp.ClientSession() as session, asyncio.timeout(15):
            handshake = (
                f"http://127.0.0.1:{port}/webhook?hub.mode=subscribe"
                f"&hub.verify_token={secrets['META_VERIFY_TOKEN']}&hub.challenge=42"
            )
            while True:
                try:
                    async with session.get(handshake) as response:
                        assert (response.status, await response.text()) == (200, "42")
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            # ... and a Slack request signed with the printed secret gets past the signature.
            body = b"nothing=here"
            for secret, expected in ((secrets["SLACK_SIGNING_SECRET"], 400), ("other", 401)):
                stamp = str(int(time.time()))
                headers = {
                    "X-Slack-Request-Timestamp": stamp,
                    "X-Slack-Signature": slack_signature(secret, stamp, body),
                }
                actions = f"http://127.0.0.1:{port}/slack/actions"
                async with session.post(actions, data=body, headers=headers) as response:
                    assert response.status == expected

        # The exact line, pasted into a second shell.
        shell = await asyncio.create_subprocess_shell(
            line,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        sent, _ = await shell.communicate()
        assert shell.returncode == 0, sent.decode()
        assert "server answered 200" in sent.decode()
        await wait_for_output(out, "[dry-run] slack chat.postMessage")
    finally:
        # Ctrl-C, as in the terminal: SIGINT to the group. (make forwards a SIGTERM to its
        # child, so pinwatch would get two, and a second one during shutdown can hang it.)
        os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
            tail = out.read_text()[-3000:]
            raise AssertionError(f"make run did not stop on Ctrl-C:\n{tail}") from None

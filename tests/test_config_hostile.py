"""A hostile routing file: an alias bomb, an alias inside itself, deep nesting, a huge file.

The file is edited by people and tools, and a reload runs inside the live service: none of these
may cost more than the file's own length, hold up webhooks, or change the version in force.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from bot.config import ConfigError, parse_config
from tests.conftest import (
    META_APP_SECRET,
    META_VERIFY_TOKEN,
    REFERENCE_BODY,
    SLACK_SIGNING_SECRET,
    TEST_CONFIG,
    Pinwatch,
    delivery,
    eventually,
    security,
)
from tests.test_operations import RELOAD_WAIT, config_version, metric, wait_for_version_change

ROOT = Path(__file__).parent.parent
# A child that runs away is stopped by the kernel, not by the machine running out of memory.
MEMORY_CAP = 2 << 30
CAPPED_PINWATCH = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_CAP}, {MEMORY_CAP})); "
    "sys.argv[0] = 'pinwatch'; runpy.run_module('bot', run_name='__main__')"
)


def alias_bomb(levels: int) -> str:
    """Each list names the one before ten times: `levels` levels expand to 10**levels strings."""
    lists = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    lists += [f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]\n" for n in range(1, levels)]
    return "x-lists:\n" + "".join(lists)


def with_bomb(config: str, levels: int = 9) -> str:
    """The routing file with a bomb ahead of it, set off by a team's mention list."""
    bombed = config.replace('mention: ["S0PAYSEC"]', f"mention: *l{levels - 1}")
    assert bombed != config
    return alias_bomb(levels) + bombed


def bomb_line(text: str) -> int:
    """Where the expansion crosses the allowance: each l3 alone stands for 11,111 nodes."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith("  l3:"))


def run_pinwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` in a real process, with its memory capped and its time bounded."""
    return subprocess.run(
        [sys.executable, "-c", CAPPED_PINWATCH, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def bomb_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(with_bomb(TEST_CONFIG.format(store=tmp_path / "pinwatch.db")))
    return path


# -- parsing -----------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    text = with_bomb(TEST_CONFIG.format(store="pinwatch.db"), levels=5)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            parse_config(text, source="config.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [problem] = caught.value.problems
    assert (problem.line, problem.where) == (bomb_line(text), "x-lists.l3")
    assert problem.what.startswith("aliases expand this to more than 10,")
    # 100,000 strings once expanded: what the refusal costs must not grow with that.
    assert peak < 2 << 20


def test_an_alias_inside_the_node_it_names_is_refused_with_its_line() -> None:
    text = TEST_CONFIG.format(store="pinwatch.db").replace(
        "  support:\n", "  support: &loop\n    mention: [*loop]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="config.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "config.yaml:14: teams.support: an alias inside this node names the node itself"
    ]


def test_nesting_deeper_than_yaml_allows_is_an_error_with_its_line() -> None:
    text = TEST_CONFIG.format(store="pinwatch.db") + "x: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="config.yaml")
    [problem] = caught.value.problems
    assert (problem.line, problem.where) == (24, "yaml")
    assert "nesting depth" in problem.what


LEGITIMATE_ALIASES = """\
defaults:
  channel: "#wa-security"
  mention: &leads ["S0SECLEADS"]
  escalation:
    channel: "#security-escalations"
    mention: *leads
teams:
  payments: &team_defaults
    channel: "C0PAYMENTS"
    mention: &oncall ["S0PAYSEC", "U0ALICE"]
    responders: *oncall
    ack_timeout: 10m
  payments-eu:
    <<: *team_defaults
    channel: "C0PAYEU"
  support:
    <<: [*team_defaults]
    ack_timeout: 5m
routes:
  - team: payments
    events: &reset_events [PIN_RESET_REQUEST, PIN_REQUEST_SUCCESS]
  - team: payments-eu
    events: *reset_events
"""


def test_merge_keys_and_shared_lists_are_accepted_and_a_merged_key_may_be_overridden() -> None:
    config = parse_config(LEGITIMATE_ALIASES, source="config.yaml").config
    payments, eu, support = (config.teams[t] for t in ("payments", "payments-eu", "support"))
    assert (eu.channel, eu.mention, eu.responders, eu.ack_timeout) == (
        "C0PAYEU",
        ["S0PAYSEC", "U0ALICE"],
        ["S0PAYSEC", "U0ALICE"],
        600,
    )
    assert (support.channel, support.ack_timeout) == ("C0PAYMENTS", 300)
    assert payments.channel == "C0PAYMENTS"
    assert config.defaults.escalation.mention == ["S0SECLEADS"]
    assert [r.events for r in config.routes] == [["PIN_RESET_REQUEST", "PIN_REQUEST_SUCCESS"]] * 2


def test_an_error_under_a_merge_points_at_the_line_that_wrote_the_merged_key() -> None:
    text = LEGITIMATE_ALIASES.replace('channel: "C0PAYMENTS"', "channel: payments")
    text = text.replace('channel: "C0PAYEU"', "channel: payments-eu")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="config.yaml")
    assert [(p.line, p.where) for p in caught.value.problems] == [
        (9, "teams.payments.channel"),
        (15, "teams.payments-eu.channel"),  # the override, not the merged key
        (9, "teams.support.channel"),
    ]


def test_a_large_file_may_repeat_a_list_on_every_route() -> None:
    routes = "".join(
        f"  - team: payments-eu\n    phone_numbers: ['+44 20 7946 {i:04d}']\n"
        "    events: *reset_events\n"
        for i in range(3000)
    )
    config = parse_config(LEGITIMATE_ALIASES + routes, source="config.yaml").config
    assert len(config.routes) == 3002


# -- check-config, serve and reload ------------------------------------------------------------


def test_check_config_refuses_an_alias_bomb_at_once(bomb_file: Path) -> None:
    result = run_pinwatch("check-config", str(bomb_file))
    assert (result.returncode, result.stdout) == (1, "")
    line = bomb_line(bomb_file.read_text())
    assert result.stderr.startswith(
        f"{bomb_file}:{line}: x-lists.l3: aliases expand this to more than 10,"
    )
    assert len(result.stderr.splitlines()) == 1


def test_serve_refuses_to_start_on_an_alias_bomb(bomb_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "SLACK_"))} | {
        "META_APP_SECRET": META_APP_SECRET,
        "META_VERIFY_TOKEN": META_VERIFY_TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
    }
    result = run_pinwatch(
        "serve", "--config", str(bomb_file), "--host", "127.0.0.1", "--port", "0", env=env
    )
    assert result.returncode == 1
    assert f"{bomb_file}:{bomb_line(bomb_file.read_text())}: x-lists.l3: aliases" in result.stderr
    assert "in force" not in result.stderr


async def longest_silence_until(pinwatch: Pinwatch, done: str) -> float:
    """Webhooks back to back until a reload ends with ``done``: the longest wait for an answer.

    Measured from one answer to the next, so a stalled event loop shows wherever it falls.
    """
    longest, last, sent = 0.0, time.monotonic(), 0
    async with asyncio.timeout(30):
        while True:
            body = delivery(security("PIN_CHANGED", phone="+44 20 7946 0018"), time=sent)
            status, _ = await pinwatch.post_webhook(body)
            assert status == 200
            sent += 1
            now = time.monotonic()
            longest, last = max(longest, now - last), now
            if await metric(pinwatch, "pinwatch_config_reloads_total", f'result="{done}"') >= 1:
                return longest


async def test_a_reload_refuses_an_alias_bomb_and_webhooks_are_answered_meanwhile(
    pinwatch: Pinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = await config_version(pinwatch)
    pinwatch.config_path.write_text(with_bomb(pinwatch.config_path.read_text()))

    assert await longest_silence_until(pinwatch, "refused") < 2.0
    assert await config_version(pinwatch) == before
    line = bomb_line(pinwatch.config_path.read_text())
    assert f"{pinwatch.config_path}:{line}: x-lists.l3: aliases expand this" in caplog.text

    status, _ = await pinwatch.post_webhook(REFERENCE_BODY)
    assert status == 200
    await pinwatch.slack.wait_for(
        lambda s: len(s.top_level("C0PAYMENTS")) == 1
    )  # the version in force still routes


def replace_file(path: Path, text: str) -> None:
    """Save as an editor does, in one rename: a 1 MB write is not atomic, and the watcher may
    read it half written (and refuse or apply that half) on a loaded machine."""
    partial = path.with_name(path.name + ".saving")
    partial.write_text(text)
    partial.replace(path)


def large_routing_file(config: str, routes: int = 5000) -> str:
    """The fixture's file with thousands of routes after its own: about 1 MB, like bench.reload."""
    extra = "".join(
        f"  - team: {('payments', 'support')[i % 2]}\n"
        f'    waba_ids: ["102290129340398", "1022901{i:08d}"]\n'
        f'    phone_numbers: ["+44 20 7{i:03d} {i % 10_000:04d}", "+1 (555) 01{i % 100:02d}"]\n'
        "    events: [PIN_RESET_REQUEST, PIN_REQUEST_SUCCESS, PIN_CHANGED]\n"
        for i in range(routes)
    )
    return config + extra


async def test_reloading_a_large_file_does_not_hold_up_webhooks(pinwatch: Pinwatch) -> None:
    before = await config_version(pinwatch)
    replace_file(pinwatch.config_path, large_routing_file(pinwatch.config_path.read_text()))

    silence = await longest_silence_until(pinwatch, "applied")
    assert await config_version(pinwatch) != before
    # Parsing it takes a second or more: on the event loop, that long without an answer.
    assert silence < 1.0


async def test_a_reload_whose_parsing_process_is_killed_keeps_the_version_in_force(
    pinwatch: Pinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = await config_version(pinwatch)
    earlier = set(multiprocessing.active_children())  # an earlier reload's may not have ended yet
    original = pinwatch.config_path.read_text()
    replace_file(pinwatch.config_path, large_routing_file(original))
    async with asyncio.timeout(20):
        while not (parsers := set(multiprocessing.active_children()) - earlier):
            await asyncio.sleep(0.01)
    for parser in parsers:
        parser.kill()  # as the kernel's out-of-memory killer would

    async def refused() -> bool:
        return await metric(pinwatch, "pinwatch_config_reloads_total", 'result="refused"') >= 1

    await eventually(refused, timeout=20)
    assert await config_version(pinwatch) == before
    assert "the process parsing it failed" in caplog.text

    # The watcher lives on: the next edit is read (a small one: on a loaded machine the parser,
    # at a lower priority, takes longer than the wait over a megabyte).
    replace_file(pinwatch.config_path, original + "# again\n")
    await wait_for_version_change(pinwatch, before)


async def test_a_reload_refuses_an_integer_too_long_to_read_and_the_watcher_lives_on(
    pinwatch: Pinwatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Python reads no integer of more than 4,300 digits: the file is refused like any other
    mistake, with its line, and the next edit is still read."""
    before = await config_version(pinwatch)
    original = pinwatch.config_path.read_text()
    long = "1" * 5000
    replace_file(pinwatch.config_path, original.replace("ack_timeout: 15m", f"ack_timeout: {long}"))

    async def refused() -> bool:
        return await metric(pinwatch, "pinwatch_config_reloads_total", 'result="refused"') >= 1

    await eventually(refused, timeout=RELOAD_WAIT)
    assert await config_version(pinwatch) == before
    assert f"{pinwatch.config_path}:3: yaml: an integer of 5000 digits is too long" in caplog.text

    replace_file(pinwatch.config_path, original + "# again\n")
    await wait_for_version_change(pinwatch, before)

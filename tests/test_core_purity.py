"""The pure core (events, config, routing, render) does no I/O and knows no adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BOT = Path(__file__).parent.parent / "bot"
CORE = [
    *("events", "catalog", "account_events", "account_text", "config", "routing", "render"),
    *("windows", "route_report", "commands/parse", "commands/requests", "commands/form"),
]
ADAPTERS = ["webhook", "store", "slack", "dispatcher", "app", "actions", "cli"]
ADAPTERS += ["commands.service", "commands.http"]
FORBIDDEN = ["aiohttp", "aiosqlite", "asyncio", "socket", "slack_sdk.web"] + [
    f"bot.{name}" for name in ADAPTERS
]


def imports_of(module: str) -> set[str]:
    return imports_in((BOT / f"{module}.py").read_text(encoding="utf-8"))


def imports_in(source: str) -> set[str]:
    """Every module a bot/ file imports, with `from bot import x` counted as bot.x."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .x import y
                base = "bot." + base if base else "bot"
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io_and_no_adapter(module: str) -> None:
    offending = sorted(
        name for name in imports_of(module) if any(is_within(name, bad) for bad in FORBIDDEN)
    )
    assert offending == []


@pytest.mark.parametrize(
    "module",
    [
        *("events", "catalog", "account_events", "account_text", "config", "routing"),
        *("windows", "commands/parse", "commands/requests"),
    ],
)
def test_core_module_does_not_use_slack_sdk(module: str) -> None:
    assert not any(is_within(name, "slack_sdk") for name in imports_of(module))


def test_render_uses_only_slack_sdk_models() -> None:
    slack = {name for name in imports_of("render") if is_within(name, "slack_sdk")}
    assert slack, "render is expected to build blocks with slack_sdk.models"
    assert all(is_within(name, "slack_sdk.models") for name in slack), sorted(slack)


def test_the_scan_sees_every_import_style_it_must_catch() -> None:
    source = (
        "import aiohttp.web\nimport socket as s\nfrom bot import store\n"
        "from . import slack\nfrom .app import build_app\n"
        "def later():\n    import asyncio\n"
    )
    assert {"aiohttp.web", "socket", "bot.store", "bot.slack", "bot.app", "asyncio"} <= (
        imports_in(source)
    )

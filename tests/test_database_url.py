"""DATABASE_URL: the PostgreSQL store is chosen by it, and its password never shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError
from tests.serve import free_port, start_serve

BASE = {"META_APP_SECRET": "m" * 8, "META_VERIFY_TOKEN": "v" * 8, "SLACK_SIGNING_SECRET": "s" * 8}


async def test_a_password_given_in_the_database_urls_query_is_never_printed(
    tmp_path: Path,
) -> None:
    """libpq (and asyncpg) take the password as ?password=: it is as secret as user:pass@."""
    secret = "query-password-never-printed"
    closed_port = free_port()  # nobody listens there once it is given back
    serve = start_serve(
        tmp_path,
        DATABASE_URL=f"postgresql://pinwatch@127.0.0.1:{closed_port}/pinwatch?password={secret}",
    )
    try:
        code = await asyncio.to_thread(serve.process.wait, 30)
    finally:
        serve.kill()
    output = serve.output()
    assert code == 1, output
    assert "cannot start" in output
    assert secret not in output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:secret-pw@127.0.0.1:99999/db",
        "postgresql://u:secret-pw@[::1/db",
        "postgresql://u:secret-pw@/db",
        "mysql://u:secret-pw@127.0.0.1/db",
    ],
)
def test_a_malformed_database_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**BASE, "DATABASE_URL": url})
    assert str(refused.value).startswith("DATABASE_URL ")
    assert "secret-pw" not in str(refused.value)


def test_both_places_for_a_password_are_redacted_from_logs() -> None:
    settings = Settings.from_env(
        {**BASE, "DATABASE_URL": "postgresql://u:in-userinfo@db:5432/p?password=in-query"}
    )
    assert {"in-userinfo", "in-query"} <= set(settings.secret_values())

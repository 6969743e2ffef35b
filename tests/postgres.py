"""A throwaway PostgreSQL cluster for the tests: started from the server binaries on a free port
under a temporary folder, stopped at the end. PINWATCH_TEST_DATABASE_URL uses a running server
instead. As root, the server runs as the `postgres` user (it refuses to run as root)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
from yarl import URL

TEST_DB_PASSWORD = "pinwatch-test-db-password"  # asserted absent from every log in the tests
ADMIN_USER = "pinwatch_admin"


class NoPostgres(Exception):
    pass


def _server_bin() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not candidates:
        found = shutil.which("initdb")
        if found is None:
            raise NoPostgres(
                "PostgreSQL's server binaries are not installed: `make test` installs Debian's"
                " postgresql package, or set PINWATCH_TEST_DATABASE_URL"
            )
        return Path(found).parent
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], *, as_user: str | None) -> None:
    command = ["runuser", "-u", as_user, "--", *args] if as_user else args
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise NoPostgres(f"{' '.join(args[:2])} failed: {result.stderr.strip()[-2000:]}")


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[URL]:
    """The admin URL of a new cluster, which is stopped and removed afterwards."""
    if url := os.environ.get("PINWATCH_TEST_DATABASE_URL"):
        yield URL(url)
        return
    bin_dir = _server_bin()
    as_user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="pinwatch-pg-"))
    data, run = folder / "data", folder / "run"
    run.mkdir()
    pwfile = folder / "pw"
    pwfile.write_text(TEST_DB_PASSWORD + "\n")
    if as_user:
        owner = pwd.getpwnam(as_user)
        for path in (folder, run, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                ADMIN_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ],
            as_user=as_user,
        )
        # Durability of the test server itself is not under test: skip its fsyncs.
        options = (
            f"-p {port} -k {run} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        _run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "server.log"),
                "-w",
                "start",
            ],
            as_user=as_user,
        )
        try:
            yield URL.build(
                scheme="postgresql",
                user=ADMIN_USER,
                password=TEST_DB_PASSWORD,
                host="127.0.0.1",
                port=port,
                path="/postgres",
            )
        finally:
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                as_user=as_user,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(cluster: URL, prefix: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on the cluster, dropped (connections and all) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(str(cluster))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield str(cluster.with_path(f"/{name}"))
    finally:
        admin = await asyncpg.connect(str(cluster))
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()

"""`pinwatch serve` as a real subprocess on loopback, for tests that need the whole process:
its signals, its listening socket, its memory."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import (
    META_APP_SECRET,
    META_VERIFY_TOKEN,
    SLACK_SIGNING_SECRET,
    TEST_CONFIG,
)

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_kib(self) -> int:
        """The process's resident memory, as the kernel counts it."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    async def wait_listening(self, timeout: float = 20.0) -> None:
        """Until GET /healthz answers: the port is open and the app has started."""
        async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"pinwatch exited early:\n{self.output()[-3000:]}")
                try:
                    async with session.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)  # bounded polling until the socket is up

    async def wait_for_output(self, text: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.output():
                await asyncio.sleep(0.05)  # the log file has no change notification

    async def terminate(self, timeout: float) -> float:
        """One SIGTERM; the seconds the process took to exit (raises if it did not)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.process.wait, timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_serve(tmp_path: Path, **env: str) -> Serve:
    """Dry run unless `env` gives SLACK_BOT_TOKEN; `env` adds or overrides variables."""
    config = tmp_path / "config.yaml"
    config.write_text(TEST_CONFIG.format(store=tmp_path / "pinwatch.db"))
    port = free_port()
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "META_", "METRICS_")) and k not in ("PORT", "PYTHONPATH")
    }
    environ.update(
        {
            "META_APP_SECRET": META_APP_SECRET,
            "META_VERIFY_TOKEN": META_VERIFY_TOKEN,
            "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
            "PYTHONPATH": str(ROOT),
        }
        | env  # overrides as well as adds
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        command = [sys.executable, "-m", "bot", "serve", "--config", str(config)]
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Serve(process=process, port=port, log=log)

"""Where pinwatch's time goes under a load: py-spy attached to ``pinwatch serve``, then a top-N.

py-spy is not a dependency: ``--profile`` needs it on PATH or at ``$PY_SPY`` (``pip install
py-spy`` into any environment). It records collapsed stacks (``--format raw``), one line per
distinct stack with its sample count; the summary gives each function's inclusive share (any
sample whose stack holds it) and its own share (samples where it is the innermost frame).
``python -m bench.profile FILE`` summarises a file recorded earlier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# "function (path/to/file.py:LINE)": the line is dropped, so a function is one row.
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^()]+?)(?::\d+)?\)$")
SAMPLE_RATE = 200
# Frames under which every sample of a thread runs: their share says nothing.
_ENTRY = re.compile(
    r"^(_run_module_as_main|_run_code|<module>|main|serve|run_app|Thread\.\w+"
    r"|BaseEventLoop\.(run_forever|run_until_complete|_run_once)|Handle\._run) "
)


def py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


async def record(pid: int, output: Path, *, seconds: float) -> asyncio.subprocess.Process:
    """Start py-spy on the process for `seconds`; the caller awaits the returned process."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("--profile needs py-spy on PATH or at $PY_SPY (pip install py-spy)")
    argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", str(SAMPLE_RATE), "--format", "raw", "--threads", "-o", str(output)]
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for package in ("/bot/", "/bench/", "/tests/"):
        if package in path:
            return package[1:] + path.split(package, 1)[1]
    return path


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['function']} ({_short_path(match['file'])})"


@dataclass(frozen=True, slots=True)
class Summary:
    samples: int
    inclusive: Counter[str]
    own: Counter[str]


def summarise(text: str) -> Summary:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        samples += n
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    return Summary(samples, inclusive, own)


def table(summary: Summary, *, top: int = 20) -> str:
    def share(n: int) -> str:
        return f"{100 * n / summary.samples:.1f} %" if summary.samples else "n/a"

    lines = ["| function | inclusive | own |", "|---|---|---|"]
    ranked = [
        (frame, n)
        for frame, n in summary.inclusive.most_common()
        if not frame.startswith(("process ", "thread ")) and not _ENTRY.match(frame)
    ]
    for frame, n in ranked[:top]:
        lines.append(f"| `{frame}` | {share(n)} | {share(summary.own[frame])} |")
    lines.append("")
    lines.append("| innermost frame | own |")
    lines.append("|---|---|")
    for frame, n in summary.own.most_common(top):
        lines.append(f"| `{frame}` | {share(n)} |")
    return "\n".join(lines)


def report(recording: Path, *, top: int = 20) -> str:
    summary = summarise(recording.read_text())
    return f"{summary.samples} samples\n{table(summary, top=top)}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("file", type=Path, help="py-spy's --format raw output")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(report(args.file, top=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

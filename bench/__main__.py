"""``python -m bench [--quick] [--only W1,W2]``: issue 6's scenarios, pinwatch beside a bare server.

Every load runs on 127.0.0.1 and is bounded in count and time. A full run (no --quick, no --only)
writes its table into bench/README.md between the result markers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.load import wrk_available
from bench.replicas import w1_postgres
from bench.scenarios import SCENARIOS, Context, Plan, Row, w3_w4

ALL = ("W1", "W1s", "W1PG", "W2", "W3", "W4", "W3s", "W5", "W6")
README = Path(__file__).with_name("README.md")
START = "<!-- results:start -->"
END = "<!-- results:end -->"


def _scenarios(text: str) -> list[str]:
    # Names are matched whatever their case: w1s, W1S and W1s are all W1s.
    by_key = {name.upper(): name for name in ALL}
    given = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in given if name.upper() not in by_key]
    chosen = [by_key[name.upper()] for name in given if name.upper() in by_key]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(ALL)}; not {unknown or text!r}")
    return chosen


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}; "
        f"Linux {platform.release()}; Python {platform.python_version()}, "
        f"aiohttp {aiohttp.__version__}, plain asyncio loop; "
        f"{wrk.splitlines()[0].split(' [')[0] if wrk else 'wrk ?'}"
    )


def _figure(value: float, unit: str) -> str:
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "%":
        return f"{value:+.1f} %"
    return f"{value:,.1f} {unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | measure | pinwatch | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        baseline = _figure(row.baseline, row.unit)
        if row.baseline_label != "bare aiohttp":
            baseline += f" ({row.baseline_label})"
        ratio = "n/a" if row.unit == "%" else f"{row.ratio:.2f}"
        lines.append(
            f"| {row.scenario} | {row.measure} | {_figure(row.pinwatch, row.unit)} | {baseline}"
            f" | {ratio} | {row.target} | {'yes' if row.met else '**no**'} |"
        )
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    return "\n".join(f"- {row.scenario}, {row.measure}: {row.note}" for row in rows if row.note)


def write_readme(rows: list[Row], header: str) -> None:
    text = README.read_text() if README.exists() else f"{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    block = f"{START}\n{header}\n\n{table(rows)}\n\n{notes(rows)}\n{END}"
    README.write_text(before + block + after)


async def run(chosen: list[str], plan: Plan, workdir: Path, *, profile: bool) -> list[Row]:
    rows: list[Row] = []

    def report(row: Row) -> None:
        rows.append(row)
        ratio = "" if row.unit == "%" else f"  ratio {row.ratio:.2f}"
        print(
            f"{row.scenario} {row.measure}: pinwatch {_figure(row.pinwatch, row.unit)}, "
            f"{row.baseline_label} {_figure(row.baseline, row.unit)}{ratio}  "
            f"target {row.target}: {'met' if row.met else 'MISSED'}",
            flush=True,
        )
        if row.note:
            print(f"    {row.note}", flush=True)

    def log(text: str) -> None:
        print(text, flush=True)

    ctx = Context(plan=plan, workdir=workdir, report=report, log=log, profile=profile)
    scenarios = SCENARIOS | {"W1PG": w1_postgres}
    for name in ("W1", "W1s", "W1PG", "W2", "W3", "W3s", "W5", "W6"):
        slack = name == "W3" and ("W3" in chosen or "W4" in chosen)
        if name not in chosen and not slack:
            continue
        started = time.monotonic()
        label = "W3/W4" if slack else name
        log(f"{label} …")
        if slack:
            await w3_w4(ctx, w3="W3" in chosen, w4="W4" in chosen)
        else:
            await scenarios[name](ctx)
        log(f"  ({label} took {time.monotonic() - started:.0f}s)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 2 min)")
    parser.add_argument("--only", type=_scenarios, default=list(ALL), metavar="W1,W2,…")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on pinwatch during each saturation run; prints its top 20 (bench/profile.py)",
    )
    args = parser.parse_args()
    if not wrk_available():
        print("bench: wrk is not installed (make bench installs it)", file=sys.stderr)
        return 2
    plan = Plan.quick() if args.quick else Plan.full()
    workdir = Path(tempfile.mkdtemp(prefix="pinwatch-bench-"))
    header = (
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
        f"{' (--quick)' if args.quick else ''} on {machine()}."
    )
    print(header, flush=True)
    started = time.monotonic()
    try:
        rows = asyncio.run(run(args.only, plan, workdir, profile=args.profile))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(rows))
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f}s")
    if not args.quick and args.only == list(ALL) and not args.profile:
        write_readme(rows, header)
        print(f"table written to {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

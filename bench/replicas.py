"""Issue 10's rows: W1 on PostgreSQL with one replica and with two, beside SQLite and the bare
server, all measured in this one scenario so that every figure shares the machine's state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path

from yarl import URL

from bench import servers
from bench.load import OpenLoopResult, WrkResult, open_loop, percentile, run_wrk, webhook_requests
from bench.payloads import security_bodies, write_lua_table
from bench.scenarios import Context, Row, _loop_note, _ms, _profiled, _warm
from tests.postgres import fresh_database, throwaway_cluster

# Each load is split this way over the replicas: the load balancer is the senders themselves.
REPLICAS = (1, 2)


@asynccontextmanager
async def _pinwatches(
    ctx: Context, name: str, *, replicas: int, cluster: URL | None
) -> AsyncIterator[list[servers.Server]]:
    """`replicas` pinwatch processes on one fresh store (SQLite when cluster is None), one sink."""
    workdir = ctx.fresh_dir(name)
    async with AsyncExitStack() as stack:
        sink = await stack.enter_async_context(servers.sink(workdir))
        database_url = None
        if cluster is not None:
            fresh = fresh_database(cluster, "pinwatch_bench")
            database_url = await stack.enter_async_context(fresh)
        started = []
        for n in range(replicas):
            folder = workdir / f"replica-{n}"
            folder.mkdir(exist_ok=True)
            started.append(
                await stack.enter_async_context(
                    servers.pinwatch(
                        folder, slack_url=sink.url + "/api/", database_url=database_url
                    )
                )
            )
        for server in started:
            await _warm(ctx, server.url)
        yield started


def _split_lua(ctx: Context, tag: str, count: int, parts: int) -> list[Path]:
    """Distinct bodies, split into one Lua file per sender so that none is sent twice."""
    bodies = security_bodies(count, tag=tag)
    return [
        write_lua_table(ctx.workdir / f"{tag}-{k}of{parts}.lua", bodies[k::parts])
        for k in range(parts)
    ]


async def _saturate(ctx: Context, targets: list[servers.Server], tag: str) -> list[WrkResult]:
    """One wrk per replica, at once, sharing W1's connection count between them."""
    plan = ctx.plan
    files = _split_lua(ctx, tag, plan.saturation_bodies, len(targets))
    runs = []
    for k, (target, bodies) in enumerate(zip(targets, files, strict=True)):
        folder = ctx.fresh_dir(f"{tag}-wrk-{k}")  # wrk's end marker is per folder
        runs.append(
            run_wrk(
                target.url,
                bodies,
                duration=plan.saturation_seconds,
                connections=plan.connections // len(targets),
                wrap=False,
                workdir=folder,
            )
        )
    return list(await asyncio.gather(*runs))


async def _fixed_rate(ctx: Context, targets: list[servers.Server], tag: str) -> OpenLoopResult:
    """W1's fixed rate shared evenly between the replicas, latencies merged."""
    plan = ctx.plan
    count = int(plan.fixed_rate * plan.fixed_seconds)
    bodies = security_bodies(count, tag=tag)
    share = len(targets)
    results = await asyncio.gather(
        *(
            open_loop(
                target.url,
                webhook_requests(bodies[k::share]),
                rate=plan.fixed_rate / share,
                count=len(bodies[k::share]),
                time_limit=plan.fixed_seconds + 5,
            )
            for k, target in enumerate(targets)
        )
    )
    merged = OpenLoopResult()
    for result in results:
        merged.latencies.extend(result.latencies)
        offset = len(merged.due_at)  # each sender numbers its own requests from 0
        merged.due_at.update({offset + i: due for i, due in result.due_at.items()})
        merged.not_ok += result.not_ok
        merged.errors += result.errors
        merged.elapsed = max(merged.elapsed, result.elapsed)
        merged.max_lag = max(merged.max_lag, result.max_lag)
    return merged


def _rate(results: list[WrkResult]) -> float:
    """Requests answered per second by all the replicas together."""
    return sum(r.rate for r in results)


def _wrk_notes(results: list[WrkResult]) -> str:
    parts = [f"{r.responses} in {r.elapsed:.1f}s" for r in results]
    bad = sum(r.not_ok + r.socket_errors for r in results)
    return " + ".join(parts) + (f" ({bad} non-200 or socket errors)" if bad else "")


async def w1_postgres(ctx: Context) -> None:
    with throwaway_cluster() as cluster:
        await _measure(ctx, cluster)


async def _measure(ctx: Context, cluster: URL) -> None:
    plan = ctx.plan
    async with servers.baseline(ctx.fresh_dir("w1pg-baseline")) as base:
        await _warm(ctx, base.url)
        [bare] = await _saturate(ctx, [base], "PGB")
        bare_fixed = await _fixed_rate(ctx, [base], "PGBF")
    async with _pinwatches(ctx, "w1pg-sqlite", replicas=1, cluster=None) as sqlite_one:
        on_sqlite = await _saturate(ctx, sqlite_one, "PGS")
        sqlite_fixed = await _fixed_rate(ctx, sqlite_one, "PGSF")
    sqlite_rate = _rate(on_sqlite)
    sqlite_p99 = _ms(percentile(sqlite_fixed.latencies, 99))
    ctx.log(
        f"  SQLite, same run: {sqlite_rate:,.0f} req/s at saturation ({_wrk_notes(on_sqlite)}),"
        f" p99 {sqlite_p99:.1f} ms at {plan.fixed_rate:.0f}/s; bare {bare.rate:,.0f} req/s,"
        f" p99 {_ms(percentile(bare_fixed.latencies, 99)):.1f} ms"
    )
    one_replica_rate = 0.0
    for replicas in REPLICAS:
        name = f"w1pg-{replicas}"
        async with _pinwatches(ctx, name, replicas=replicas, cluster=cluster) as started:
            # With --profile, py-spy records the one replica during its saturation run.
            recording = ctx.workdir / f"{name}.pyspy.txt"
            watched = (
                _profiled(ctx, started[0], recording, plan.saturation_seconds)
                if replicas == 1
                else nullcontext()
            )
            async with watched:
                saturated = await _saturate(ctx, started, f"PG{replicas}S")
            fixed = await _fixed_rate(ctx, started, f"PG{replicas}F")
        rate = _rate(saturated)
        if replicas == 1:
            one_replica_rate = rate
            target, met = "≥ 0.8 of SQLite's", rate >= 0.8 * sqlite_rate
        else:
            target, met = "> one replica's", rate > one_replica_rate
        clean = all(r.not_ok == 0 and r.socket_errors == 0 for r in saturated)
        label = "one replica" if replicas == 1 else f"{replicas} replicas"
        ctx.report(
            Row(
                "W1 PostgreSQL",
                f"{label}, req/s at saturation (-c{plan.connections} in all)",
                rate,
                bare.rate,
                "req/s",
                target,
                met and clean,
                note=f"{_wrk_notes(saturated)}; pinwatch on SQLite in the same run"
                f" {sqlite_rate:,.0f} req/s, so {rate / sqlite_rate:.2f} of SQLite's",
            )
        )
        p99 = _ms(percentile(fixed.latencies, 99))
        ctx.report(
            Row(
                "W1 PostgreSQL",
                f"{label} at {plan.fixed_rate:.0f}/s, p99 latency",
                p99,
                _ms(percentile(bare_fixed.latencies, 99)),
                "ms",
                "≤ 20 ms",
                p99 <= 20 and fixed.not_ok == 0 and fixed.errors == 0,
                note=f"{_loop_note(fixed)}, p50 {_ms(percentile(fixed.latencies, 50)):.1f} ms;"
                f" pinwatch on SQLite in the same run p99 {sqlite_p99:.1f} ms",
            )
        )

"""``python -m bench.render [--rounds N]``: how long one storm summary takes to render, in µs.

(a) a new summary: all 45 rows never rendered before, as when a flood opens a summary;
(b) a rewrite: 44 rows shown before and one joining, as each batch of a flood does to the
summary it adds to. Each round renders summaries of alerts with ids of their own, so no row is
in a cache before its round says it should be; the figure is the best round's time per
summary. The module timed is the one `bot.render` imports as: run with PYTHONPATH set to
another checkout to time its code.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time

from bot import render
from bot.events import Actor, Alert, SecurityEvent

ROWS = 45
SUMMARIES = 20  # per round
WHEN = 1_764_000_000


def _alerts(first_id: int, count: int) -> list[Alert]:
    """Unresolved PIN resets, every third already acknowledged: both row buttons are shown."""
    alerts = []
    for alert_id in range(first_id, first_id + count):
        event = SecurityEvent(
            waba_id="102290129340398",
            phone_number="15550783881",
            event="PIN_RESET_REQUEST",
            time=WHEN + alert_id,
            requester=f"6155582{alert_id:07d}",
            value={"display_phone_number": "15550783881", "event": "PIN_RESET_REQUEST"},
        )
        acknowledged = Actor("U0ALICE", "alice", WHEN + alert_id) if alert_id % 3 == 0 else None
        alerts.append(
            Alert(
                id=alert_id,
                event=event,
                received_at=WHEN + alert_id,
                team="payments",
                channel="C0PAYMENTS",
                mentions=("S0PAYSEC",),
                ack_deadline=WHEN + alert_id + 600.0,
                acknowledged=acknowledged,
                grouped=True,
            )
        )
    return alerts


def best_per_summary(rounds: int, *, joining: int) -> float:
    """µs per render_storm in the fastest round; `joining` rows of each summary are new. The
    rows shown before are read again as new objects, as the dispatcher reads them from the
    store."""
    first_ids = itertools.count(1, ROWS)
    best = float("inf")
    for _ in range(rounds):
        summaries = []
        for _ in range(SUMMARIES):
            first = next(first_ids)
            if joining < ROWS:
                shown = _alerts(first, ROWS - joining)
                render.render_storm(shown, threshold=10, window=60)  # before the round
            summaries.append(_alerts(first, ROWS))
        started = time.perf_counter_ns()
        for alerts in summaries:
            render.render_storm(alerts, threshold=10, window=60)
        best = min(best, time.perf_counter_ns() - started)
    return best / SUMMARIES / 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--rounds", type=int, default=50, help="rounds per case (default 50)")
    args = parser.parse_args()
    print(f"bot.render from {render.__file__}; best of {args.rounds} rounds of {SUMMARIES}")
    print(f"{'summary of ' + str(ROWS) + ' rows':<28} {'µs per render':>14}")
    gc.disable()  # a collection landing in one round would only add noise
    for name, joining in (("new (45 rows new)", ROWS), ("rewrite (1 row joining)", 1)):
        print(f"{name:<28} {best_per_summary(args.rounds, joining=joining):>14.1f}")
    gc.enable()


if __name__ == "__main__":
    main()

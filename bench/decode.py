"""``python -m bench.decode [--rounds N]``: how long `parse_delivery` takes per body, in µs.

(a) W1's security deliveries, which take both passes; (b) W2's `messages` and `statuses`
deliveries, which take the outline pass alone. Each round parses every body of its set once;
the figure is the best round's time divided by its bodies, so that other work on the machine
counts as little as it can. The module timed is the one `bot.webhook` imports as: run with
PYTHONPATH set to another checkout to time its code.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence

from bench.payloads import other_field_bodies, security_bodies
from bot import webhook

BODIES = 200


def best_per_call(bodies: Sequence[bytes], rounds: int) -> float:
    """µs per parse_delivery call in the fastest of `rounds` rounds."""
    parse = webhook.parse_delivery
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for body in bodies:
            parse(body)
        best = min(best, time.perf_counter_ns() - started)
    return best / len(bodies) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--rounds", type=int, default=200, help="rounds per set (default 200)")
    args = parser.parse_args()
    sets = {
        "W1 security": [s.body for s in security_bodies(BODIES, tag="decode")],
        "W2 messages/statuses": [s.body for s in other_field_bodies(BODIES)],
    }
    print(f"bot.webhook from {webhook.__file__}; best of {args.rounds} rounds of {BODIES} bodies")
    print(f"{'bodies':<22} {'bytes (mean)':>12} {'µs per call':>12}")
    gc.disable()  # a collection landing in one round would only add noise
    for name, bodies in sets.items():
        size = sum(map(len, bodies)) / len(bodies)
        print(f"{name:<22} {size:>12.0f} {best_per_call(bodies, args.rounds):>12.2f}")
    gc.enable()


if __name__ == "__main__":
    main()

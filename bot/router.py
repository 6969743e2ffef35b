"""Routes alerts with the config in force and the announced windows the store holds: at intake,
in the commit that stores them, and in the dispatcher for a row that was stored unrouted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from bot.config import LiveConfig
from bot.events import Alert, Assignment, Incoming
from bot.logs import AlertLog, for_alert
from bot.metrics import Metrics
from bot.routing import assign_all, happened_at
from bot.windows import Window

log = logging.getLogger(__name__)


class WindowSource(Protocol):
    async def windows_between(self, since: float, until: float) -> list[Window]: ...

    async def requests_in_windows(self, window_ids: Sequence[int]) -> set[tuple[int, str]]: ...


class Router:
    def __init__(self, *, config: LiveConfig, metrics: Metrics, windows: WindowSource) -> None:
        self._config = config
        self._metrics = metrics
        self._windows = windows

    async def route(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Alerts stored unrouted (nothing has happened to them yet: store.unrouted), each
        with its route, or as it was where routing failed."""
        incoming = [(alert.event, alert.received_at) for alert in alerts]
        assigned = await self._assign(incoming, lambda index: for_alert(log, alerts[index]))
        return [
            alert if assignment is None else assignment.new_alert(alert.id, *event_at)
            for alert, event_at, assignment in zip(alerts, incoming, assigned, strict=True)
        ]

    async def assign(self, incoming: Sequence[Incoming]) -> Sequence[Assignment | None]:
        """Each event's assignment, in order, or None where routing failed (logged)."""
        return await self._assign(incoming, lambda index: log)

    async def _assign(
        self, incoming: Sequence[Incoming], log_for: Callable[[int], logging.Logger | AlertLog]
    ) -> Sequence[Assignment | None]:
        """An empty batch reads nothing. Raises only StoreError, from reading the windows."""
        if not incoming:
            return []
        times = [happened_at(event, received_at) for event, received_at in incoming]
        windows = await self._windows.windows_between(min(times), max(times))
        requests = await self._windows.requests_in_windows([w.id for w in windows])
        config = self._config.config
        try:
            return assign_all(incoming, config, windows=windows, requests_in=requests)
        except Exception:
            log.exception("routing %d events failed; routing them one by one", len(incoming))
        # One event that routing fails on (a bug) must not hold up the others: it stays
        # unrouted (channel None), kept and retried, and the rest go on.
        assigned: list[Assignment | None] = []
        for index, (event, received_at) in enumerate(incoming):
            try:
                [alone] = assign_all(
                    [(event, received_at)], config, windows=windows, requests_in=requests
                )
            except Exception:
                log_for(index).exception(
                    "routing a %s event of WABA %s failed; left unrouted",
                    event.event[:64],
                    event.waba_id[:64],
                )
                assigned.append(None)
            else:
                assigned.append(alone)
        return assigned

    def stored(self, routed: Sequence[Alert]) -> None:
        """The routes are committed: count each alert once, under the team it went to."""
        self._metrics.count_events((alert.event.event, alert.team or "") for alert in routed)
        for alert in routed:
            if alert.expected is not None:
                for_alert(log, alert).info("expected: inside window %d", alert.expected.window_id)

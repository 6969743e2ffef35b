"""Routes alerts with the config in force and the announced windows the store holds: at intake,
in the commit that stores them, and in the dispatcher for a row that was stored unrouted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from bot.config import LiveConfig
from bot.events import Alert
from bot.logs import for_alert
from bot.metrics import Metrics
from bot.routing import happened, route_alerts
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
        """Each alert with its route, in order, or as it was where routing failed (logged); an
        empty batch reads nothing. Raises only StoreError, from reading the windows."""
        if not alerts:
            return []
        times = [happened(alert) for alert in alerts]
        windows = await self._windows.windows_between(min(times), max(times))
        requests = await self._windows.requests_in_windows([w.id for w in windows])
        config = self._config.config
        try:
            return route_alerts(alerts, config, windows=windows, requests_in=requests)
        except Exception:
            log.exception("routing %d alerts failed; routing them one by one", len(alerts))
        # One alert that routing fails on (a bug) must not hold up the others: it stays
        # unrouted (channel None), kept and retried, and the rest go on.
        routed = []
        for alert in alerts:
            try:
                [alone] = route_alerts([alert], config, windows=windows, requests_in=requests)
            except Exception:
                for_alert(log, alert).exception("routing failed; left unrouted")
                alone = alert
            routed.append(alone)
        return routed

    def stored(self, routed: Sequence[Alert]) -> None:
        """The routes are committed: count each alert once, under the team it went to."""
        for alert in routed:
            self._metrics.count_event(alert.event.event, alert.team or "")
            if alert.expected is not None:
                for_alert(log, alert).info("expected: inside window %d", alert.expected.window_id)

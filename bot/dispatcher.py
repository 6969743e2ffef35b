"""Deliver the outbox to Slack, one lane per channel, and escalate what waits too long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from enum import Enum
from functools import partial
from typing import TypeVar

from bot.catalog import FOLLOW_UP_EVENTS, is_follow_up
from bot.config import LiveConfig
from bot.events import (
    PINWATCH_ACTOR_ID,
    SECURITY_FIELD,
    Actor,
    Alert,
    Clock,
    EscalationKind,
)
from bot.logs import for_alert
from bot.metrics import Metrics
from bot.pagerduty.outbox import PagerDutyOutbox
from bot.render import (
    STORM_MAX_ROWS,
    Message,
    render_alert,
    render_escalation,
    render_escalation_note,
    render_follow_up,
    render_reminder,
    render_storm,
)
from bot.router import Router
from bot.routing import happened, team_destination
from bot.slack import Posted, SendKey, SlackCallError, SlackGateway
from bot.store import OutboxEntry, Store, StoreError
from bot.storm_history import ChannelHistory

log = logging.getLogger(__name__)

_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
# A replica that dies holds its channels' lanes this long at most; a live one renews every third.
LEASE_TTL = 15.0
# Alerts routed per pass: a pass holds the event loop while it routes, and 500 at once held it
# long enough to put W1's median webhook answer at 14 ms instead of 4 (bench/README.md, issue 14).
ROUTE_BATCH = 100


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for a channel whose last post failed, after slack_sdk's own quick retries."""

    first: float = 1.0
    limit: float = 300.0

    def delay(self, failures: int) -> float:
        return min(self.limit, self.first * 2.0 ** max(0, failures - 1))


class _Outcome(Enum):
    DONE = "done"
    WAITING = "waiting"  # depends on another alert that is not in Slack yet


@dataclass(frozen=True, slots=True)
class _Failed:
    """A failed job, and how long Slack asked us to wait before the next call (if it did)."""

    retry_after: float | None = None


Job = Callable[[], Awaitable[_Outcome | _Failed]]
# The lease of the lane a job runs in (each lane is a task, so each has its own value).
_lane_lease: ContextVar[str | None] = ContextVar("pinwatch_lane_lease", default=None)


class _LeaseLost(Exception):
    """The lane's lease ran out under it: another replica may be posting its channel now."""


_T = TypeVar("_T")


@dataclass(slots=True)
class _Backoff:
    failures: int = 0
    until: float = 0.0


_PAGED_ALONE = (EscalationKind.TAKEOVER, EscalationKind.CONFIRMED)


def _same_page(one: Alert, other: Alert) -> bool:
    """Whether one page may stand for both escalations."""
    if one.escalation_kind in _PAGED_ALONE or other.escalation_kind in _PAGED_ALONE:
        return one.escalation_kind == other.escalation_kind
    return True


def _escalations(alerts: list[Alert]) -> list[tuple[int, EscalationKind]]:
    """Each alert with the kind of the escalation being paged: the store records the page
    only for that escalation, not for one made since."""
    return [(a.id, a.escalation_kind) for a in alerts if a.escalation_kind is not None]


def _regardless(message: Message) -> Callable[[str | None], Message]:
    """A storm summary says nothing of a fallback; its rows keep their own notes."""
    return lambda _note: message


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        slack: SlackGateway,
        config: LiveConfig,
        router: Router,
        metrics: Metrics,
        clock: Clock,
        retry: RetryPolicy,
        poll_interval: float = 1.0,
        pass_gap: float = 0.01,
        storm_update_gap: float = 2.0,
        lease_ttl: float = LEASE_TTL,
        pagerduty: PagerDutyOutbox | None = None,
    ) -> None:
        self._store = store
        self._pagerduty = pagerduty
        self._slack = slack
        self._config = config
        self._router = router
        self._metrics = metrics
        self._clock = clock
        self._retry = retry
        self._poll_interval = poll_interval
        self._pass_gap = pass_gap
        # chat.update is rate-limited (Tier 3, ~50 a minute): a summary is rewritten at most
        # this often; what arrives meanwhile waits in the outbox and joins the next rewrite.
        self._storm_update_gap = storm_update_gap
        self._storm_hold: dict[str, float] = {}
        self._storm_history: dict[str, ChannelHistory] = {}
        self._wakeup = asyncio.Event()
        self._look_at_everything = True
        self._looked_at_everything = float("-inf")  # loop time
        self._busy: set[str] = set()
        self._backoff: dict[str, _Backoff] = {}
        self._lanes: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._lease_ttl = lease_ttl
        # Names this process in the leases it holds: unique even for two replicas on one host.
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._channel_ids: dict[str, str] = {}  # #name → ID, as Slack's answers showed
        self._warned_history_scope = False

    def wake(self) -> None:
        """Anything may have changed (a click, another replica's commit): the next pass looks
        at everything."""
        self._look_at_everything = True
        self._wakeup.set()

    def wake_for_deliveries(self) -> None:
        """New alerts, or a lane done: in a flood, passes come a hundred a second, and only
        the outbox needs them; the rest is looked at once every poll interval."""
        self._wakeup.set()

    def stop(self) -> None:
        """Start no new job; run() returns once the jobs under way are done."""
        self._stopping = True
        self.wake()

    @property
    def _pinwatch(self) -> Actor:
        return Actor(user_id=PINWATCH_ACTOR_ID, name="pinwatch", at=self._clock())

    async def run(self) -> None:
        """Until cancelled: hand each channel's unposted alerts, in order, to its lane."""
        try:
            loop = asyncio.get_running_loop()
            while not self._stopping:
                self._wakeup.clear()
                started = loop.time()
                everything = self._look_at_everything or (
                    started - self._looked_at_everything >= self._poll_interval
                )
                if everything:
                    self._look_at_everything, self._looked_at_everything = False, started
                try:
                    if everything:
                        await self._escalate_overdue()
                    await self._start_deliveries()
                    if everything:
                        await self._start_pages()
                        await self._start_reminders()
                        await self._start_pagerduty()
                except Exception:  # the outbox must keep draining whatever one pass hit
                    log.exception("dispatcher: delivery pass failed; retrying")
                await self._sleep()
                # In a burst every delivery wakes us: at most one pass per gap, so a burst is
                # read in a few passes; a lone event after a quiet spell waits for nothing.
                if (pause := started + self._pass_gap - loop.time()) > 0:
                    await asyncio.sleep(pause)
            # A job cut off between Slack's answer and the store's commit would post twice after
            # a restart: let the ones under way finish.
            await asyncio.gather(*self._lanes, return_exceptions=True)
        finally:
            for lane in self._lanes:
                lane.cancel()
            await asyncio.gather(*self._lanes, return_exceptions=True)

    async def _sleep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self._poll_interval
        waits = [b.until for b in self._backoff.values()] + list(self._storm_hold.values())
        for until in waits:
            if until > now:
                timeout = min(timeout, until - now)
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()

    async def _start_deliveries(self) -> None:
        # The intake routes what it stores; what it could not (or a replica of an older
        # version did not) is routed here.
        if waiting := await self._store.unrouted(limit=ROUTE_BATCH):
            routed = [a for a in await self._router.route(waiting) if a.channel is not None]
            # Another replica's pass may have routed some first: each is counted once.
            self._router.stored(await self._store.set_routes(routed))
            if len(waiting) == ROUTE_BATCH:
                self._wakeup.set()  # more may wait: the next pass comes without a poll
        by_channel: dict[str, list[OutboxEntry]] = {}
        # A channel whose lane is busy or backing off gets no job this pass: its alerts are not
        # read, and read or not, they never stand in the way of another channel's.
        now = asyncio.get_running_loop().time()
        skip = self._busy | {key for key, b in self._backoff.items() if b.until > now}
        # A channel whose summary is held back offers its head alone: all that can go out
        # before the hold ends comes before its first storm row (see _delivery_jobs), and in a
        # flood every pass read its whole backlog to find that out.
        held = {key for key, until in self._storm_hold.items() if until > now}
        for entry in await self._store.outbox(skip=skip, oldest_only=held):
            by_channel.setdefault(entry.channel, []).append(entry)
        for channel, entries in by_channel.items():
            if not self._lane_free(channel):
                continue
            if jobs := await self._delivery_jobs(channel, entries, held=channel in held):
                self._start_lane(channel, jobs)
        # A channel read as held whose hold ended meanwhile is read whole at once, not after
        # the poll interval (_sleep waits only for holds still to end).
        loop_now = asyncio.get_running_loop().time()
        if any(self._storm_hold.get(channel, 0.0) <= loop_now for channel in held):
            self._wakeup.set()

    async def _delivery_jobs(
        self, channel: str, alerts: list[OutboxEntry], *, held: bool
    ) -> list[Job]:
        """One job per alert, except that an alert arriving when `threshold` others reached
        this channel within `window` joins a storm summary instead of taking a message. `held`
        is as the outbox was read: a held channel gave its head alone, and folding that into
        the summary once its hold ended meanwhile would restart the hold for one row."""
        storm = self._config.config.defaults.storm
        since = min(a.received_at for a in alerts) - storm.window
        history = self._storm_history.setdefault(channel, ChannelHistory())
        newest = max(a.id for a in alerts)
        if (fetch := history.missing(since, up_to=newest)) is not None:
            history.add(
                await self._store.received_since(channel, fetch.since, after=fetch.after),
                read_to=newest,
            )
        history.drop_before(since)
        jobs: list[Job] = []
        stormed: list[int] = []
        for alert in alerts:
            recent = history.recent(alert.id, alert.received_at, storm.window)
            # A follow-up may belong under its request's thread: never fold it into a storm.
            if recent >= storm.threshold and alert.event not in FOLLOW_UP_EVENTS:
                if held:
                    break  # and what follows waits too, to keep the channel's order
                stormed.append(alert.id)
                continue
            if stormed:
                jobs.append(partial(self._deliver_storm, channel, stormed))
                stormed = []
            jobs.append(partial(self._deliver, alert.id))
        if stormed:
            jobs.append(partial(self._deliver_storm, channel, stormed))
        return jobs

    async def _escalate_overdue(self) -> None:
        for alert in await self._store.due_for_escalation(self._clock()):
            transition = await self._store.escalate(
                alert.id, self._pinwatch, EscalationKind.AUTOMATIC
            )
            if transition.changed:
                self._metrics.escalations.labels(EscalationKind.AUTOMATIC.value).inc()
                for_alert(log, alert).warning("not acknowledged in time, escalating")

    async def _start_pages(self) -> None:
        """One page per escalated alert, or per storm summary, whatever its size."""
        pages: dict[str, dict[tuple[str, str, str] | int, list[int]]] = {}
        for alert in await self._store.unpaged_escalations():
            channel = team_destination(alert.team, self._config.config).escalation.channel
            group: tuple[str, str, str] | int = alert.id
            if alert.grouped and alert.slack_channel and alert.slack_ts:
                # A takeover's page is not folded into the summary's (see _page).
                alone = str(alert.escalation_kind) if alert.escalation_kind in _PAGED_ALONE else ""
                group = (alert.slack_channel, alert.slack_ts, alone)
            pages.setdefault(channel, {}).setdefault(group, []).append(alert.id)
        for channel, groups in pages.items():
            self._start_lane(
                f"escalation {channel}", [partial(self._page, ids) for ids in groups.values()]
            )

    async def _start_reminders(self) -> None:
        """One reminder per acknowledged, unresolved alert (or storm summary) that is due, in
        its channel's reminder lane: its lease makes it one replica's, once per interval."""
        reminders: dict[str, dict[tuple[str, str] | int, int]] = {}
        for alert in await self._store.due_reminders(self._clock()):
            if alert.slack_channel is None or alert.slack_ts is None:
                continue
            group: tuple[str, str] | int = alert.id
            if alert.grouped:
                group = (alert.slack_channel, alert.slack_ts)
            reminders.setdefault(alert.slack_channel, {}).setdefault(group, alert.id)
        for channel, groups in reminders.items():
            self._start_lane(
                f"reminders {channel}", [partial(self._remind, i) for i in groups.values()]
            )

    async def _start_pagerduty(self) -> None:
        """PagerDuty hears of escalations, acknowledgements and resolutions in a lane per team:
        its lease makes each event one replica's, and a team's in order."""
        if self._pagerduty is None:
            return
        by_team: dict[str, list[int]] = {}
        for alert in await self._store.pagerduty_due():
            by_team.setdefault(alert.team or "", []).append(alert.id)
        for team, alert_ids in by_team.items():
            self._start_lane(
                f"pagerduty {team}", [partial(self._sync_pagerduty, i) for i in alert_ids]
            )

    async def _sync_pagerduty(self, alert_id: int) -> _Outcome | _Failed:
        assert self._pagerduty is not None
        later = await self._pagerduty.sync(alert_id, keep=self._keep)
        return _Outcome.DONE if later is None else _Failed(later.retry_after)

    def _lane_free(self, key: str) -> bool:
        backoff = self._backoff.get(key)
        now = asyncio.get_running_loop().time()
        return key not in self._busy and not (backoff and backoff.until > now)

    def _start_lane(self, key: str, jobs: list[Job]) -> None:
        """One lane per key at a time, so each channel's messages go out in order."""
        if not self._lane_free(key):
            return
        self._busy.add(key)
        lane = asyncio.create_task(self._run_lane(key, jobs), name=f"lane {key}")
        self._lanes.add(lane)
        lane.add_done_callback(self._lanes.discard)

    async def _run_lane(self, key: str, jobs: list[Job]) -> None:
        """Runs jobs in order; the first failure stops the lane so that order is kept on retry.
        A lane runs while this replica holds its lease: one replica posts a channel at a time."""
        posted_any = False
        held = asyncio.Event()
        try:
            acquired = await self._store.acquire_lease(
                key, holder=self.replica, ttl=self._lease_ttl
            )
        except StoreError as exc:
            log.warning("dispatcher: no lease for %s: %s", key, exc)
            acquired = False
        if not acquired:  # another replica is posting this channel, or the store is failing
            self._busy.discard(key)
            return
        held.set()
        _lane_lease.set(key)
        heartbeat = asyncio.create_task(self._renew(key, held), name=f"lease {key}")
        hold = 0.0
        try:
            for job in jobs:
                if self._stopping or not held.is_set():
                    return
                try:
                    outcome = await job()
                except _LeaseLost:
                    log.error("dispatcher: lease for %s lost before posting; stopping", key)
                    return
                except Exception:  # e.g. the store failing before Slack was called: retry later
                    log.exception("dispatcher: a job for %s failed", key)
                    outcome = _Failed()
                if isinstance(outcome, _Failed):
                    backoff = self._backoff.setdefault(key, _Backoff())
                    backoff.failures += 1
                    delay = max(self._retry.delay(backoff.failures), outcome.retry_after or 0.0)
                    backoff.until = asyncio.get_running_loop().time() + delay
                    hold = delay  # the other replicas wait too: Slack's limits are shared
                    log.warning("dispatcher: %s paused for %.1fs", key, delay)
                    return
                if outcome is _Outcome.WAITING:
                    return  # the lane posting what it waits for wakes the dispatcher
                posted_any = True
                self._backoff.pop(key, None)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(StoreError, asyncio.CancelledError):
                await self._store.release_lease(key, holder=self.replica, hold=hold)
            self._busy.discard(key)
            if posted_any:
                # What this lane posted may unblock another, or more may have come.
                self.wake_for_deliveries()

    async def _renew(self, key: str, held: asyncio.Event) -> None:
        """Renew a lane's lease while it runs; a lease lost (renewals failed for longer than
        its time) stops the lane after its current job, since another replica may have it."""
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                renewed = await self._store.acquire_lease(
                    key, holder=self.replica, ttl=self._lease_ttl
                )
            except StoreError as exc:
                log.warning("dispatcher: lease for %s not renewed: %s", key, exc)
                if loop.time() - renewed_at < self._lease_ttl:
                    continue
                renewed = False  # it has run out by now: another replica may hold it
            if renewed:
                renewed_at = loop.time()
            else:
                log.error("dispatcher: lease for %s lost; its lane stops after this job", key)
                held.clear()
                return

    async def _deliver(self, alert_id: int) -> _Outcome | _Failed:
        # Read again inside the lane: the pass that queued this job may have read the outbox
        # before an earlier lane for this channel committed its post.
        alert = await self._store.get(alert_id)
        if alert is None or alert.slack_ts is not None:
            return _Outcome.DONE
        try:
            if is_follow_up(alert.event.field, alert.event.event):
                window = team_destination(alert.team, self._config.config).correlation_window
                root = await self._store.root_for(alert, since=happened(alert) - window)
                if root is not None:
                    if root.slack_ts is None:
                        return _Outcome.WAITING
                    await self._post_under_root(alert, root)
                    return _Outcome.DONE
            await self._post_top_level(alert)
            return _Outcome.DONE
        except SlackCallError as exc:
            self._metrics.delivery_retries.inc()
            for_alert(log, alert).warning("not posted, will retry: %s", exc)
            # Bookkeeping only: a store failure here must not lose Slack's Retry-After.
            with contextlib.suppress(StoreError):
                await self._store.mark_attempt_failed(alert.id, exc.error)
            return _Failed(exc.retry_after)

    async def _post_top_level(self, alert: Alert) -> None:
        assert alert.channel is not None
        send = SendKey.alert(alert.id)
        posted, note = await self._post_or_fall_back(
            alert.channel, lambda note: render_alert(replace(alert, delivery_note=note)), send
        )
        await self._keep(
            "post",
            lambda: self._store.mark_posted(
                alert.id,
                slack_channel=posted.channel,
                ts=posted.ts,
                thread_ts=None,
                note=note,
                actor=self._pinwatch,
                send=send.key,
            ),
        )
        self._observe_posted(alert)

    async def _post_or_fall_back(
        self, channel: str, render: Callable[[str | None], Message], send: SendKey
    ) -> tuple[Posted, str | None]:
        """Post to the routed channel; one that Slack refuses for good falls back to the
        default channel, with a note saying why (render gets the note, or None)."""
        try:
            return await self._send(channel, render(None), send), None
        except SlackCallError as exc:
            fallback = self._config.config.defaults.channel
            if not exc.channel_unusable or channel == fallback:
                raise
            log.error("channel %s refused (%s); posting to %s", channel, exc.error, fallback)
            note = (
                f"Routed to {channel}, but Slack refused it ({exc.error}): "
                "invite pinwatch there or fix the routing file."
            )
            return await self._send(fallback, render(note), send), note

    async def _send(
        self,
        channel: str,
        message: Message,
        send: SendKey,
        *,
        thread_ts: str | None = None,
        reply_broadcast: bool = False,
    ) -> Posted:
        """Post a message once. The post is recorded as under way before the call; if an
        earlier attempt never finished (a crash, a lost answer, a timeout), its message may be
        in Slack already, and is looked for there, by its metadata, before posting again."""
        target = await self._channel_id(channel)
        for earlier_channel, since in await self._store.begin_send(
            send.key, channel=target, at=self._clock()
        ):
            # A reply not broadcast is in its thread only, not in the channel's history.
            thread = None if reply_broadcast else thread_ts
            if (found := await self._find_sent(send, earlier_channel, since, thread)) is not None:
                log.warning(
                    "%s was in Slack already (its answer was lost): %s %s",
                    send.key,
                    found.channel,
                    found.ts,
                )
                return found
        # Fencing: a slow look-up (or a store outage) may have outlived the lane's lease.
        if (lease := _lane_lease.get()) is not None and not await self._store.holds_lease(
            lease, holder=self.replica
        ):
            raise _LeaseLost(lease)
        try:
            posted = await self._slack.post(
                channel, message, send=send, thread_ts=thread_ts, reply_broadcast=reply_broadcast
            )
        except SlackCallError as exc:
            if exc.surely_not_sent:
                with contextlib.suppress(StoreError):
                    await self._store.end_send(send.key, channel=target)
            raise
        if posted.channel != target:
            await self._learn_channel_id(channel, posted.channel)
        return posted

    async def _find_sent(
        self, send: SendKey, channel: str, since: float, thread_ts: str | None
    ) -> Posted | None:
        try:
            if not _CHANNEL_ID.match(channel):
                # conversations.history takes IDs only, and this #name was never posted to.
                found = await self._slack.channel_id_of(channel)
                if found is None:
                    return None  # not a channel pinwatch can see: the post will say so
                await self._learn_channel_id(channel, found)
                channel = found
            return await self._slack.find_sent(channel, send, since=since, thread_ts=thread_ts)
        except SlackCallError as exc:
            if exc.error == "missing_scope":
                if not self._warned_history_scope:
                    self._warned_history_scope = True
                    log.warning(
                        "Slack refused %s (missing_scope): a post whose answer was lost is"
                        " posted again; add channels:history, groups:history, channels:read"
                        " and groups:read to the app (slack-app-manifest.yaml)",
                        exc.method,
                    )
                return None
            if exc.channel_unusable:
                return None  # posting will say what is wrong with the channel
            raise  # looking failed: posting now could post twice, so try again later

    async def _channel_id(self, channel: str) -> str:
        """conversations.history takes IDs only: a #name is known once a post has shown it."""
        if _CHANNEL_ID.match(channel):
            return channel
        if (known := self._channel_ids.get(channel)) is None:
            known = await self._store.channel_id(channel)
            if known is not None:
                self._channel_ids[channel] = known
        return known or channel

    async def _learn_channel_id(self, name: str, channel_id: str) -> None:
        if _CHANNEL_ID.match(name) or self._channel_ids.get(name) == channel_id:
            return
        with contextlib.suppress(StoreError):  # only a later lookup needs it
            await self._store.remember_channel_id(name, channel_id)
            self._channel_ids[name] = channel_id

    async def _deliver_storm(self, channel: str, alert_ids: list[int]) -> _Outcome | _Failed:
        """Add alerts as rows to the channel's open storm summary, or start a new one."""
        alerts = [a for a in await self._store.get_many(alert_ids) if a.slack_ts is None]
        if not alerts:
            return _Outcome.DONE
        storm = self._config.config.defaults.storm
        try:
            summary = await self._store.open_summary(channel)
            if summary is not None:
                slack_channel, ts, rows, last = summary
                room = STORM_MAX_ROWS - rows
                if room > 0 and last >= self._clock() - storm.window:
                    joining, alerts = alerts[:room], alerts[room:]
                    shown = await self._store.alerts_in_summary(slack_channel, ts)
                    # Slack first, then the store: a failed update leaves them in the outbox.
                    rows_now = [*shown, *(replace(a, slack_channel=slack_channel) for a in joining)]
                    await self._slack.update(
                        slack_channel,
                        ts,
                        render_storm(rows_now, threshold=storm.threshold, window=storm.window),
                    )
                    await self._mark_grouped(joining, slack_channel, ts, send=None)
            while alerts:
                chunk, alerts = alerts[:STORM_MAX_ROWS], alerts[STORM_MAX_ROWS:]
                summary_message = render_storm(
                    chunk, threshold=storm.threshold, window=storm.window
                )
                send = SendKey.storm(chunk[0].id)
                posted, _ = await self._post_or_fall_back(
                    channel, _regardless(summary_message), send
                )
                if posted.found:
                    # An earlier attempt's summary, rendered from the rows it had then: show
                    # every row it is about to hold (Slack first, then the store, as above).
                    await self._slack.update(posted.channel, posted.ts, summary_message)
                await self._mark_grouped(chunk, posted.channel, posted.ts, send=send)
        except SlackCallError as exc:
            self._metrics.delivery_retries.inc()
            log.warning(
                "storm in %s: %d alerts not posted, will retry: %s", channel, len(alerts), exc
            )
            return _Failed(exc.retry_after)
        self._storm_hold[channel] = asyncio.get_running_loop().time() + self._storm_update_gap
        return _Outcome.DONE

    async def _mark_grouped(
        self, alerts: list[Alert], slack_channel: str, ts: str, *, send: SendKey | None
    ) -> None:
        await self._keep(
            "storm",
            lambda: self._store.mark_grouped(
                [a.id for a in alerts],
                slack_channel=slack_channel,
                ts=ts,
                actor=self._pinwatch,
                send=send.key if send else None,
            ),
        )
        now = self._clock()
        for alert in alerts:
            self._metrics.receipt_to_post.observe(max(0.0, now - alert.received_at))
        # One line for a summary's rows: in a flood, a line per row took 2.5 % of the event
        # loop's time (bench/README.md, issue 14).
        log.info(
            "storm rows posted in %s %s: alerts %s",
            slack_channel,
            ts,
            " ".join(str(a.id) for a in alerts),
        )

    async def _post_under_root(self, follow_up: Alert, root: Alert) -> None:
        """A follow-up as a reply in its reset request's thread, then the request updated: a
        success turns verification off; a takeover event after that escalates the chain."""
        assert root.slack_channel is not None
        assert root.slack_ts is not None
        success = follow_up.event.field == SECURITY_FIELD
        if not success:
            # Before the reply: a crash in between retries the reply, never loses the page. The
            # store decides whether the request was completed, and pages it only once.
            await self._mark_takeover(root)
        send = SendKey.alert(follow_up.id)
        posted = await self._send(
            root.slack_channel,
            render_follow_up(follow_up, thread_ts=root.slack_ts),
            send,
            thread_ts=root.slack_ts,
            reply_broadcast=True,  # the whole channel must see how the story goes on
        )
        await self._keep(
            "post",
            lambda: self._store.mark_posted(
                follow_up.id,
                slack_channel=posted.channel,
                ts=posted.ts,
                thread_ts=root.slack_ts,
                note=None,
                actor=self._pinwatch,
                send=send.key,
            ),
        )
        self._observe_posted(follow_up)
        if success:
            transition = await self._keep(
                "verification_off",
                lambda: self._store.mark_verification_off(root.id, self._pinwatch),
            )
            root = transition.alert
        else:
            root = await self._store.get(root.id) or root
        await self.refresh_message(root)

    async def _mark_takeover(self, request: Alert) -> None:
        transition = await self._keep(
            "takeover", lambda: self._store.mark_takeover(request.id, self._pinwatch)
        )
        if transition.changed:  # once per chain, however many events or replicas follow
            self._metrics.escalations.labels(EscalationKind.TAKEOVER.value).inc()
            for_alert(log, request).warning("possible takeover, escalating")
            self.wake()  # the page goes out on the next pass

    async def _page(self, alert_ids: list[int]) -> _Outcome | _Failed:
        """Send one page for these alerts (one, or a storm summary's), then say so under the
        alert and in it."""
        # Read again inside the lane, as in _deliver.
        unpaged = [a for a in await self._store.get_many(alert_ids) if a.escalation_ts is None]
        if not unpaged:
            return _Outcome.DONE
        alert = unpaged[0]
        assert alert.slack_channel is not None
        assert alert.slack_ts is not None
        # A takeover, suspected or confirmed, is paged on its own even in a paged summary: one
        # page never stands for another kind of takeover, nor is one folded into an older page.
        # The rest wait for the next pass.
        unpaged = [a for a in unpaged if _same_page(a, alert)]
        if alert.grouped and alert.escalation_kind not in _PAGED_ALONE:
            shown = await self._store.alerts_in_summary(alert.slack_channel, alert.slack_ts)
            if (earlier := next((a for a in shown if a.escalation_ts), None)) is not None:
                # The summary already paged someone: say nothing twice, record where it went.
                assert earlier.escalation_channel is not None
                assert earlier.escalation_ts is not None
                await self._store.mark_paged(
                    _escalations(unpaged),
                    channel=earlier.escalation_channel,
                    ts=earlier.escalation_ts,
                    actor=self._pinwatch,
                    send=None,
                )
                await self.refresh_message(alert)
                return _Outcome.DONE
        config = self._config.config
        escalation = team_destination(alert.team, config).escalation
        try:
            page = render_escalation(
                alert, permalink=await self._permalink(alert), mentions=escalation.mention
            )
            send = SendKey.page(alert.id, alert.escalation_kind)
            posted, _ = await self._post_or_fall_back(escalation.channel, _regardless(page), send)
            await self._keep(
                "page",
                lambda: self._store.mark_paged(
                    _escalations(unpaged),
                    channel=posted.channel,
                    ts=posted.ts,
                    actor=self._pinwatch,
                    send=send.key,
                ),
            )
        except SlackCallError as exc:
            for_alert(log, alert).warning("escalation not paged, will retry: %s", exc)
            return _Failed(exc.retry_after)
        for_alert(log, alert).info("escalated to %s", posted.channel)
        note = render_escalation_note(alert, channel=escalation.channel)
        try:
            # Posted once, after the page is recorded: no earlier attempt to look for.
            await self._slack.post(
                alert.slack_channel,
                note,
                send=SendKey.note(alert.id, alert.escalation_kind),
                thread_ts=alert.slack_ts,
            )
        except SlackCallError as exc:
            for_alert(log, alert).warning("escalation note not posted: %s", exc)
        await self.refresh_message(alert)
        return _Outcome.DONE

    async def _remind(self, alert_id: int) -> _Outcome | _Failed:
        """A reply in the alert's thread naming who acknowledged it; for a storm summary, one
        reply for all its acknowledged, unresolved rows."""
        alert = await self._store.get(alert_id)  # read again inside the lane, as in _deliver
        now = self._clock()
        if alert is None or alert.next_reminder_at is None or alert.next_reminder_at > now:
            return _Outcome.DONE
        if alert.resolved is not None or alert.slack_channel is None or alert.slack_ts is None:
            return _Outcome.DONE
        rows = [alert]
        if alert.grouped:
            shown = await self._store.alerts_in_summary(alert.slack_channel, alert.slack_ts)
            rows = [a for a in shown if a.next_reminder_at is not None and a.resolved is None]
        due = [(row.id, row.next_reminder_at) for row in rows if row.next_reminder_at is not None]
        every = team_destination(alert.team, self._config.config).remind_every
        send = SendKey.reminder(alert.id, alert.next_reminder_at)
        try:
            await self._send(
                alert.slack_channel, render_reminder(rows), send, thread_ts=alert.slack_ts
            )
        except SlackCallError as exc:
            for_alert(log, alert).warning("reminder not posted, will retry: %s", exc)
            return _Failed(exc.retry_after)
        await self._keep(
            "reminder",
            lambda: self._store.mark_reminded(
                due, next_at=self._clock() + every, actor=self._pinwatch, send=send.key
            ),
        )
        for_alert(log, alert).info("reminded (%d alerts)", len(rows))
        return _Outcome.DONE

    async def _keep(self, what: str, write: Callable[[], Awaitable[_T]]) -> _T:
        """Record what Slack has accepted, retrying until the store takes it: were the write
        given up, the next pass would send the same message again."""
        failures = 0
        while True:
            try:
                return await write()
            except Exception as exc:  # whatever it is, sending again would be worse
                failures += 1
                delay = self._retry.delay(failures)
                self._metrics.store_write_retries.labels(what).inc()
                log.error(
                    "store: could not record a %s Slack accepted, retrying in %.1fs: %s",
                    what,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)

    async def _permalink(self, alert: Alert) -> str | None:
        """A page without a link beats no page: a deleted alert message must not block it."""
        assert alert.slack_channel is not None
        assert alert.slack_ts is not None
        try:
            return await self._slack.permalink(alert.slack_channel, alert.slack_ts)
        except SlackCallError as exc:
            for_alert(log, alert).warning("no permalink: %s", exc)
            return None

    async def refresh_message(self, alert: Alert) -> None:
        """Re-render a posted alert in place; a failure here loses nothing, so it is logged only."""
        # As the store has it now: the caller's copy may predate a click made meanwhile (a page
        # takes as long as Slack does), and rendering it would undo that click on screen.
        alert = await self._store.get(alert.id) or alert
        if alert.slack_channel is None or alert.slack_ts is None:
            return
        message = render_alert(alert)
        if alert.grouped:
            storm = self._config.config.defaults.storm
            shown = await self._store.alerts_in_summary(alert.slack_channel, alert.slack_ts)
            message = render_storm(shown, threshold=storm.threshold, window=storm.window)
        try:
            await self._slack.update(alert.slack_channel, alert.slack_ts, message)
        except SlackCallError as exc:
            for_alert(log, alert).warning("message not updated: %s", exc)

    def _observe_posted(self, alert: Alert) -> None:
        self._metrics.receipt_to_post.observe(max(0.0, self._clock() - alert.received_at))
        for_alert(log, alert).info("posted")

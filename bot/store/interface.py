"""What the rest of pinwatch may ask of durable state, whichever backend keeps it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.events import (
    Actor,
    Alert,
    Assignment,
    EscalationKind,
    Incoming,
    PagerDutyState,
    SecurityEvent,
    Verdict,
)
from bot.windows import Target, Window


class StoreError(Exception):
    """The backend failed (disk full, locked, connection lost): the caller may retry."""


# The tables a copy carries, parents first; both backends give them the same columns. Leases
# are not state worth keeping: they run out in seconds.
COPIED_TABLES = (
    "expected_windows",
    "alerts",
    "audit",
    "slack_signatures",
    "slack_sends",
    "slack_channel_ids",
)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    alert_id: int
    action: str
    actor: Actor
    detail: str | None


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    channel: str
    received_at: float
    event: str


@dataclass(frozen=True, slots=True)
class Transition:
    """The alert after a requested change, and whether this request made the change."""

    alert: Alert
    changed: bool


class IntakeRouter(Protocol):
    """Routes alerts as they are stored (bot/router.py): their channel is known at once, so an
    alert of a quiet channel never waits behind a flood's in a queue of unrouted ones."""

    async def assign(self, incoming: Sequence[Incoming]) -> Sequence[Assignment | None]:
        """Each event's assignment, or None where routing failed; raises only StoreError."""
        ...

    def stored(self, routed: Sequence[Alert]) -> None:
        """These routed alerts are committed (with their ids)."""
        ...


class Store(Protocol):
    async def close(self) -> None: ...

    def route_with(self, router: IntakeRouter) -> None:
        """From now on add_events stores each new alert routed. Without a router, or where
        routing fails, an alert is stored unrouted: `unrouted` gives it to the dispatcher."""
        ...

    def on_change(
        self, wake: Callable[[], None], *, new_alerts: Callable[[], None] | None = None
    ) -> None:
        """Call `wake` when another replica commits work for the outbox, or `new_alerts` (if
        given) when that work is new alerts and nothing else."""
        ...

    # --- copying a whole store (`pinwatch store copy`) ----------------------------------------

    async def is_empty(self) -> bool:
        """No row in any of COPIED_TABLES."""
        ...

    async def export_tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of COPIED_TABLES, from one snapshot, as plain values (booleans as 0, 1)."""
        ...

    async def import_tables(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        """Rows from export_tables, ids kept, all in one transaction: all or nothing."""
        ...

    # --- intake -------------------------------------------------------------------------------

    async def add_events(
        self, events: Sequence[SecurityEvent], *, received_at: float
    ) -> list[int | None]:
        """Commit the events, then return each one's new alert id, or None for a duplicate."""
        ...

    # --- reads --------------------------------------------------------------------------------

    async def get(self, alert_id: int) -> Alert | None: ...

    async def get_many(self, alert_ids: Sequence[int]) -> list[Alert]:
        """Those of the alerts that exist, in id order: one read for a storm's rows."""
        ...

    async def unrouted(self, *, limit: int = 500) -> list[Alert]:
        """Alerts not yet in Slack and not yet routed, oldest first."""
        ...

    async def outbox(
        self,
        *,
        per_channel: int = 500,
        skip: Collection[str] = (),
        oldest_only: Collection[str] = (),
    ) -> list[OutboxEntry]:
        """Routed alerts not yet in Slack, oldest first: just what scheduling needs. Each
        channel not in `skip` gives up to `per_channel` of its oldest, whatever the others
        hold, so that a flood in one channel never hides the first alert of another; one in
        `oldest_only` gives its oldest alone (a channel whose storm summary is held back: all
        that can go out before the hold ends is what comes before its first storm row)."""
        ...

    async def root_for(self, follow_up: Alert, *, since: float) -> Alert | None:
        """The reset request a follow-up (catalog.is_follow_up) threads under: the latest earlier
        one on the same WABA and route that happened since `since` (Meta's event time, else
        receipt). A success needs one for its number not yet completed; a takeover event takes
        any of the WABA's, a completed one first. A request resolved as a false alarm (or with
        no verdict, in PagerDuty) is closed: never a root."""
        ...

    async def due_for_escalation(self, now: float, *, limit: int = 100) -> list[Alert]: ...

    async def due_reminders(self, now: float, *, limit: int = 100) -> list[Alert]:
        """Acknowledged, unresolved alerts whose reminder is due, the longest due first."""
        ...

    async def pagerduty_due(self, *, limit: int = 100) -> list[Alert]:
        """Escalated alerts PagerDuty has to hear of: an escalation not yet sent (or decided
        not to be), or an acknowledgement or resolution since. Oldest first, at most `limit` of
        each team (its lane's), so that one team's backlog hides no other team's."""
        ...

    async def unpaged_escalations(self, *, limit: int = 100) -> list[Alert]:
        """Escalated alerts whose page has not reached Slack yet."""
        ...

    async def received_since(
        self, channel: str, since: float, *, after: int = 0
    ) -> list[tuple[int, float]]:
        """(id, received_at) of the alerts routed to a channel since a time, in id order, only
        those with ids above `after`: storm detection reads each alert once."""
        ...

    async def open_summary(self, channel: str) -> tuple[str, str, int, float] | None:
        """The newest storm summary for a routed channel: Slack channel, ts, rows, last receipt."""
        ...

    async def alerts_in_summary(self, slack_channel: str, ts: str) -> list[Alert]: ...

    async def audit_log(self, alert_id: int) -> list[AuditEntry]: ...

    async def count_unposted(self) -> tuple[int, float | None]:
        """How many alerts wait for Slack (never those routed `off`), and when the oldest of
        them arrived."""
        ...

    # --- writes -------------------------------------------------------------------------------

    async def set_routes(self, routed: Sequence[Alert]) -> list[Alert]:
        """Keep the route (team, channel, mentions, responders, deadline, severity) of each
        alert still unrouted, and return those: another replica may have routed one first."""
        ...

    async def first_sight(self, digest: str, *, expires_at: float, now: float) -> bool:
        """Remember a Slack request signature until it expires: False if it was seen before."""
        ...

    async def mark_posted(
        self,
        alert_id: int,
        *,
        slack_channel: str,
        ts: str,
        thread_ts: str | None,
        note: str | None,
        actor: Actor,
        send: str,
    ) -> None:
        """The alert is in Slack; `send` (see begin_send) is finished, in the same commit."""
        ...

    async def mark_grouped(
        self,
        alert_ids: Sequence[int],
        *,
        slack_channel: str,
        ts: str,
        actor: Actor,
        send: str | None,
    ) -> None:
        """Alerts shown as rows of a storm summary: posted, all in one transaction."""
        ...

    async def mark_paged(
        self,
        paged: Sequence[tuple[int, EscalationKind]],
        *,
        channel: str,
        ts: str,
        actor: Actor,
        send: str | None,
    ) -> None:
        """One page for these alerts (one, or a storm summary's rows), each given with the
        kind of the escalation paged (an alert has each kind at most once): one escalated
        again since (a takeover, suspected or confirmed) keeps waiting for its own page. One
        transaction."""
        ...

    async def mark_pagerduty(
        self,
        alert_id: int,
        *,
        kind: EscalationKind,
        state: PagerDutyState,
        was: tuple[EscalationKind | None, PagerDutyState | None],
        actor: Actor,
        detail: str | None = None,
        key_env: str | None = None,
    ) -> bool:
        """PagerDuty has this of the alert's escalation of `kind` now, if it still had `was`
        (another replica, or a webhook, may have moved it on): whether it changed. Audited,
        unless `state` is NONE. `key_env`: the routing key's variable a trigger went through,
        which its acknowledgement and resolution must use too (PagerDuty drops them if not)."""
        ...

    async def mark_reminded(
        self,
        reminded: Sequence[tuple[int, float]],
        *,
        next_at: float,
        actor: Actor,
        send: str,
    ) -> None:
        """A reminder is in Slack for these alerts, each given with the time it was due: the
        next is due at `next_at` (unless another replica reminded, or someone resolved, since)."""
        ...

    async def begin_send(self, key: str, *, channel: str, at: float) -> list[tuple[str, float]]:
        """Record that the message `key` is being posted to `channel`, before the call: the
        channel and first start of every earlier attempt that never finished (its message may
        be in Slack already: look there before posting again). A channel keeps its first start,
        so a look-up after a long outage still reaches back to it."""
        ...

    async def channel_id(self, name: str) -> str | None:
        """The ID of a channel the routing file names as #name, once a post has shown it."""
        ...

    async def remember_channel_id(self, name: str, channel_id: str) -> None: ...

    async def acquire_lease(self, name: str, *, holder: str, ttl: float) -> bool:
        """Hold `name` (a channel's lane) for `ttl` seconds from now, or renew it for this
        holder: False while another holder's lease runs. A replica that dies stops renewing,
        so its leases pass to another within `ttl`."""
        ...

    async def release_lease(self, name: str, *, holder: str, hold: float = 0.0) -> None:
        """Give `name` up; with `hold`, nobody (this holder included) may take it for that many
        seconds: a channel Slack rate-limited waits on every replica, not only this one."""
        ...

    async def holds_lease(self, name: str, *, holder: str) -> bool:
        """Whether `holder`'s lease on `name` still runs: checked right before each post, since
        a lane whose renewals failed may have lost its channel to another replica."""
        ...

    async def end_send(self, key: str, *, channel: str) -> None:
        """Slack said no in that channel: nothing was posted there, nothing to look for."""
        ...

    async def mark_attempt_failed(self, alert_id: int, error: str) -> None: ...

    async def add_audit(
        self, alert_id: int, action: str, actor: Actor, detail: str | None
    ) -> None: ...

    # --- transitions: a guarded update and its audit row; racing requests change it once ------

    async def mark_verification_off(self, alert_id: int, actor: Actor) -> Transition: ...

    async def mark_takeover(self, alert_id: int, actor: Actor) -> Transition:
        """A completed reset request, then a takeover event: escalated (TAKEOVER) and due for a
        page, whatever its acknowledgement or earlier escalation; once per request."""
        ...

    async def acknowledge(
        self,
        alert_id: int,
        actor: Actor,
        *,
        detail: str | None = None,
        remind_at: float | None = None,
    ) -> Transition:
        """Acknowledged once, and reminded of from `remind_at` until resolved; never once
        resolved."""
        ...

    async def escalate(
        self, alert_id: int, actor: Actor, kind: EscalationKind, *, detail: str | None = None
    ) -> Transition:
        """Escalated once; never once resolved."""
        ...

    async def resolve(
        self,
        alert_id: int,
        actor: Actor,
        verdict: Verdict | None,
        *,
        note: str | None,
        detail: str | None = None,
    ) -> Transition:
        """Resolved once, with its verdict (None: resolved in PagerDuty, which gives none) and
        note: no more reminders or escalations. A
        confirmed takeover is escalated (CONFIRMED) and due for a page in the same commit."""
        ...

    # --- announced windows (`/pinwatch expect`) -----------------------------------------------

    async def add_window(
        self,
        *,
        target: Target,
        events: Sequence[str],
        reason: str,
        team: str | None,
        channel: str,
        opened_by: Actor,
        until: float,
    ) -> Window:
        """A new window, not announced yet: it matches nothing until announce_window."""
        ...

    async def window(self, window_id: int) -> Window | None: ...

    async def announce_window(self, window_id: int, *, channel: str, ts: str) -> Window | None:
        """Its announcement is in Slack: from now on the window counts."""
        ...

    async def drop_window(self, window_id: int) -> None:
        """Its announcement failed: forget a window that never counted."""
        ...

    async def windows_between(self, since: float, until: float) -> list[Window]:
        """Announced windows that were open at some moment between `since` and `until`
        (cancelled ones too: a window counts for what happened before its cancellation)."""
        ...

    async def open_windows(self, now: float) -> list[Window]:
        """Announced, neither cancelled nor expired, oldest first."""
        ...

    async def cancel_window(self, window_id: int, actor: Actor) -> tuple[Window | None, bool]:
        """End an open window now: the window (None: no such one), and whether this call did
        it (False: it had ended already, or was never announced)."""
        ...

    async def requests_in_windows(self, window_ids: Sequence[int]) -> set[tuple[int, str]]:
        """(window id, phone digits) of the reset requests routed inside these windows: their
        successes are expected too."""
        ...

    async def unresolved(
        self, teams: Sequence[str], *, with_defaults: bool, limit: int
    ) -> tuple[list[Alert], int]:
        """The newest posted, unresolved alerts of these teams (and of no team, with_defaults),
        each as its message shows it (a thread's replies not counted), and how many there are."""
        ...

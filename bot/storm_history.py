"""How many alerts reached a channel just before each one: the count storm detection needs.

Pure: the dispatcher fetches from the store what `missing` asks for and hands it to `add`. Each
stored alert is read once, as it appears, and dropped once it is older than every window still
to be counted, so a pass costs what arrived since the last one, not the whole window of a flood.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Fetch:
    """The rows to read: the channel's alerts received since `since`, with ids above `after`."""

    since: float
    after: int


@dataclass(slots=True)
class ChannelHistory:
    """(id, receipt time) of a channel's alerts, in id order, from `floor` on."""

    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    floor: float | None = None  # every alert received since then is held; None: nothing is
    read_to: int = 0  # every alert with an id up to this one has been read

    def missing(self, since: float, *, up_to: int) -> Fetch | None:
        """What to read before counting windows that start at `since` for alerts with ids up
        to `up_to`; None when all of it is held (a pass over alerts already seen, such as the
        head of a channel whose summary is held back, reads nothing)."""
        if self.floor is None or since < self.floor:
            # Cold, or a window reaching back before what was kept (a longer window after a
            # reload, a clock stepped back): read it all again.
            self.ids, self.times, self.floor, self.read_to = [], [], since, 0
            return Fetch(since=since, after=0)
        if up_to <= self.read_to:
            return None
        return Fetch(since=since, after=self.read_to)

    def add(self, rows: list[tuple[int, float]], *, read_to: int) -> None:
        """Rows read as `missing` asked, in id order, when no id up to `read_to` was still to
        be committed (those of an outbox just read). SQLite takes ids in commit order; with
        several PostgreSQL replicas a row committed after a higher id was read is not counted,
        so a storm may begin an alert later (every alert is still posted, once)."""
        for alert_id, received_at in rows:
            if not self.ids or alert_id > self.ids[-1]:
                self.ids.append(alert_id)
                self.times.append(received_at)
        self.read_to = max(self.read_to, read_to, self.ids[-1] if self.ids else 0)

    def drop_before(self, since: float) -> None:
        """Forget alerts received before `since`: no window still to count starts earlier."""
        if self.floor is not None and since <= self.floor:
            return
        cut = bisect.bisect_left(self.times, since)
        del self.ids[:cut], self.times[:cut]
        self.floor = since

    def recent(self, alert_id: int, received_at: float, window: float) -> int:
        """How many alerts before this one (by id) were received within `window` before it."""
        index = bisect.bisect_left(self.ids, alert_id)
        return index - bisect.bisect_left(self.times, received_at - window, 0, index)

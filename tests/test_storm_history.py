"""Storm accounting read incrementally (bot/storm_history.py) counts what a full read counts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.storm_history import ChannelHistory, Fetch

Rows = list[tuple[int, float]]


def _read(stored: Rows, since: float, after: int) -> Rows:
    """What the store's received_since returns."""
    return [(i, t) for i, t in stored if t >= since and i > after]


def _counted(history: ChannelHistory, stored: Rows, batch: Rows, window: float) -> list[int]:
    """One dispatcher pass over a channel's outbox `batch`, as _delivery_jobs runs it."""
    since = min(t for _, t in batch) - window
    newest = max(i for i, _ in batch)
    if (fetch := history.missing(since, up_to=newest)) is not None:
        history.add(_read(stored, fetch.since, fetch.after), read_to=newest)
    history.drop_before(since)
    return [history.recent(i, t, window) for i, t in batch]


def _brute_force(stored: Rows, batch: Rows, window: float) -> list[int]:
    return [sum(1 for j, u in stored if j < i and u >= t - window) for i, t in batch]


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=120),
    passes=st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=20),
    windows=st.lists(st.sampled_from([3.0, 10.0, 60.0]), min_size=1, max_size=20),
)
def test_incremental_counts_match_a_full_read_of_the_window(
    gaps: list[float], passes: list[int], windows: list[float]
) -> None:
    """Alerts arrive; each pass reads the outbox (the oldest unposted ones) and posts them. The
    window may change between passes (a reload): a longer one must read the history again."""
    times = [sum(gaps[: k + 1]) for k in range(len(gaps))]
    arrived: Rows = list(enumerate(times, start=1))
    history = ChannelHistory()
    posted = 0
    for step, size in enumerate(passes):
        window = windows[step % len(windows)]
        visible = arrived[: min(len(arrived), posted + size + step)]
        batch = visible[posted : posted + size]
        if not batch:
            break
        assert _counted(history, visible, batch, window) == _brute_force(visible, batch, window)
        posted += len(batch)


def test_a_pass_reads_only_what_arrived_since_the_last_one() -> None:
    history = ChannelHistory()
    stored: Rows = [(i, float(i)) for i in range(1, 101)]
    _counted(history, stored[:50], stored[40:50], window=60.0)
    fetch = history.missing(50.0 - 60.0, up_to=51)
    assert fetch is not None
    assert fetch.after == 50  # rows up to 50 are held; only those after are read


def test_a_pass_over_alerts_already_read_reads_nothing() -> None:
    """A channel whose summary is held back offers the same oldest alert pass after pass."""
    history = ChannelHistory()
    stored: Rows = [(i, float(i)) for i in range(1, 101)]
    _counted(history, stored[:50], stored[40:50], window=60.0)
    assert history.missing(41.0 - 60.0, up_to=41) is None
    assert history.missing(45.0 - 60.0, up_to=50) is None
    assert history.missing(45.0 - 60.0, up_to=51) == Fetch(since=45.0 - 60.0, after=50)
    assert history.recent(41, 41.0, 60.0) == 40


def test_a_window_reaching_back_before_what_is_held_reads_it_all_again() -> None:
    history = ChannelHistory()
    stored: Rows = [(i, float(i)) for i in range(1, 101)]
    _counted(history, stored, stored[90:], window=10.0)  # holds from t=81 on
    fetch = history.missing(91.0 - 60.0, up_to=91)  # the window grew to 60 s by a reload
    assert fetch == Fetch(since=31.0, after=0)
    assert _counted(history, stored, stored[90:], window=60.0) == _brute_force(
        stored, stored[90:], 60.0
    )


def test_old_alerts_are_dropped() -> None:
    history = ChannelHistory()
    stored: Rows = [(i, float(i)) for i in range(1, 1001)]
    for start in range(0, 1000, 5):  # a flood read pass by pass
        _counted(history, stored[: start + 5], stored[start : start + 5], window=10.0)
    assert len(history.ids) <= 20  # the window, not the whole flood

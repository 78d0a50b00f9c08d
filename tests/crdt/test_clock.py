from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retailsync.crdt import HLC, ClockSkewError, InvalidOperation, Stamp


@dataclass
class FakeTime:
    ms: int

    def __call__(self) -> int:
        return self.ms


class TestStamp:
    """Stamps are totally ordered by wall time, then logical counter, then node."""

    def test_order(self) -> None:
        stamps = [Stamp(2, 0, "a"), Stamp(1, 5, "z"), Stamp(1, 5, "b"), Stamp(1, 6, "a")]
        assert sorted(stamps) == [
            Stamp(1, 5, "b"),
            Stamp(1, 5, "z"),
            Stamp(1, 6, "a"),
            Stamp(2, 0, "a"),
        ]

    def test_frozen(self) -> None:
        with pytest.raises(AttributeError):
            Stamp(1, 0, "a").wall_ms = 2  # type: ignore[misc]


class TestRules:
    """now() and observe() follow the rules of Kulkarni et al."""

    def test_now_follows_physical_time_and_counts_when_it_stalls(self) -> None:
        fake = FakeTime(100)
        clock = HLC("a", physical=fake)
        assert clock.now() == Stamp(100, 0, "a")
        assert clock.now() == Stamp(100, 1, "a")
        fake.ms = 90  # physical clock stepped back
        assert clock.now() == Stamp(100, 2, "a")
        fake.ms = 101
        assert clock.now() == Stamp(101, 0, "a")

    @pytest.mark.parametrize(
        ("physical", "remote", "expected"),
        [
            (200, Stamp(150, 7, "b"), Stamp(200, 0, "a")),  # physical time is ahead of both
            (100, Stamp(150, 7, "b"), Stamp(150, 8, "a")),  # remote is ahead: take its time
            (100, Stamp(100, 7, "b"), Stamp(100, 8, "a")),  # all equal: max of counters + 1
            (100, Stamp(90, 9, "b"), Stamp(100, 4, "a")),  # local is ahead: count on
        ],
    )
    def test_observe(self, physical: int, remote: Stamp, expected: Stamp) -> None:
        fake = FakeTime(100)
        clock = HLC("a", physical=fake)
        for _ in range(4):
            clock.now()  # local state: (100, 3)
        fake.ms = physical
        assert clock.observe(remote) == expected


class TestSkew:
    """A remote stamp beyond max drift is refused and changes nothing."""

    def test_refused_with_fields(self) -> None:
        clock = HLC("a", physical=FakeTime(1_000), max_drift_ms=250)
        clock.now()
        with pytest.raises(ClockSkewError) as refused:
            clock.observe(Stamp(1_251, 0, "b"))
        error = refused.value
        assert (error.remote_wall_ms, error.local_wall_ms, error.max_drift_ms) == (
            1_251,
            1_000,
            250,
        )
        assert "251 ms ahead" in str(error)
        assert clock.now() == Stamp(1_000, 1, "a")

    def test_exactly_max_drift_is_accepted(self) -> None:
        clock = HLC("a", physical=FakeTime(1_000), max_drift_ms=250)
        assert clock.observe(Stamp(1_250, 3, "b")) == Stamp(1_250, 4, "a")

    def test_negative_drift_is_refused(self) -> None:
        with pytest.raises(InvalidOperation, match="max_drift_ms"):
            HLC("a", max_drift_ms=-1)

    def test_default_clock_is_wall_time(self) -> None:
        stamp = HLC("a").now()
        assert abs(stamp.wall_ms - time.time_ns() // 1_000_000) < 5_000


class TestCausality:
    """Causally related events get increasing stamps, all within max drift of physical time."""

    @settings(max_examples=200, deadline=None)
    @given(
        offsets=st.lists(st.integers(-100, 100), min_size=3, max_size=3),
        events=st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 20)), max_size=60
        ),
    )
    def test_send_receive_chains(
        self, offsets: list[int], events: list[tuple[int, int, int]]
    ) -> None:
        fake = FakeTime(10_000)

        def physical(offset: int) -> Callable[[], int]:
            return lambda: fake.ms + offset

        clocks = [HLC(f"n{i}", physical=physical(offsets[i]), max_drift_ms=250) for i in range(3)]
        last = [clock.now() for clock in clocks]
        for sender, receiver, elapse in events:
            fake.ms += elapse
            sent = clocks[sender].now()
            assert sent > last[sender]
            received = clocks[receiver].observe(sent)
            assert received > sent
            assert received > last[receiver]
            last[sender], last[receiver] = sent, received
            for i, stamp in enumerate(last):
                assert stamp.wall_ms - (fake.ms + offsets[i]) <= 250

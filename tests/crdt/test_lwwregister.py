from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from retailsync.crdt import (
    HLC,
    ClockSkewError,
    InvalidOperation,
    LWWConflict,
    LWWEntry,
    LWWRegister,
    Stamp,
)
from tests.crdt.harness import (
    QUICK,
    THOROUGH,
    EventLog,
    assert_converges,
    assert_merge_laws,
    assert_round_trips,
    simulate,
)

PRIORITY = {"eu": 3, "us": 2, "apac": 1}
MAX_DRIFT_MS = 250


def register(replica: str) -> LWWRegister[str]:
    return LWWRegister(replica, region_priority=PRIORITY)


def declared_rank(entry: LWWEntry[str]) -> tuple[int, int, int, str]:
    """The order the issue declares: stamp time, then region priority, then node id."""
    return (entry.stamp.wall_ms, entry.stamp.logical, PRIORITY[entry.region], entry.stamp.node)


@dataclass
class TrueTime:
    ms: int = 1_700_000_000_000


@dataclass
class Node:
    """A replica's register with its HLC, and every write it has seen (the model).

    Receiving a register first shows its stamp to the HLC; a stamp too far ahead gets the
    whole message refused. Copies share the clock: the harness copies only to compare.
    """

    register: LWWRegister[str]
    clock: HLC
    time: TrueTime
    seen: EventLog = field(default_factory=EventLog)

    def merge(self, other: Node) -> None:
        if other.register.entry is not None:
            try:
                self.clock.observe(other.register.entry.stamp)
            except ClockSkewError:
                event("stamp beyond max drift refused")
                return
        self.register.merge(other.register)
        self.seen.merge(other.seen)

    def copy(self) -> Node:
        return Node(self.register.copy(), self.clock, self.time, self.seen.copy())


@dataclass(frozen=True)
class Write:
    value: str
    region: str
    elapse_ms: int

    def __call__(self, node: Node) -> Node:
        node.time.ms += self.elapse_ms
        stamp = node.clock.now()
        delta = node.register.assign(self.value, stamp, self.region)
        written = delta.entry
        assert written is not None
        for earlier in node.seen.live():
            assert declared_rank(written) > declared_rank(earlier), "a later write lost"
        seen = node.seen.write(written, removes=lambda _: False)
        return Node(delta, node.clock, node.time, seen)


OPS = st.builds(
    Write, st.sampled_from(["x", "y", "z"]), st.sampled_from(sorted(PRIORITY)), st.integers(0, 3)
)


def skewed_nodes(data: st.DataObject) -> tuple[TrueTime, list[int]]:
    # Clocks up to 400 ms apart: some stamps arrive beyond the 250 ms drift and are refused.
    return TrueTime(), data.draw(st.lists(st.integers(-200, 200), min_size=5, max_size=5))


def run(data: st.DataObject) -> tuple[list[Node], list[Node]]:
    time, offsets = skewed_nodes(data)

    def make(replica: str) -> Node:
        offset = offsets[int(replica.removeprefix("r"))]
        clock = HLC(replica, physical=lambda: time.ms + offset, max_drift_ms=MAX_DRIFT_MS)
        return Node(register(replica), clock, time)

    history = simulate(data, make, OPS, check=holds_the_highest_write_seen, max_steps=40)
    return history.replicas, history.deltas


def holds_the_highest_write_seen(node: Node) -> None:
    seen = node.seen.live()
    assert node.register.entry == (max(seen, key=declared_rank) if seen else None)


class TestClockSkew:
    """Under skewed clocks, a write made after observing another's stamp beats it, and each
    replica holds the highest write it has seen."""

    @THOROUGH
    @given(st.data())
    def test_causally_later_writes_win(self, data: st.DataObject) -> None:
        replicas, deltas = run(data)
        final = assert_converges(
            data, register, [n.register for n in replicas], [d.register for d in deltas]
        )
        written = [d.register.entry for d in deltas if d.register.entry is not None]
        assert final.entry == (max(written, key=declared_rank) if written else None)

    def test_write_after_observing_a_fast_clock_wins(self) -> None:
        fast = HLC("fast", physical=lambda: 1_200, max_drift_ms=MAX_DRIFT_MS)
        slow = HLC("slow", physical=lambda: 1_000, max_drift_ms=MAX_DRIFT_MS)
        a, b = register("a"), register("b")
        first = a.assign("x", fast.now(), "apac")
        b.merge(first)
        assert first.entry is not None
        slow.observe(first.entry.stamp)
        second = b.assign("y", slow.now(), "apac")
        a.merge(second)
        assert a.value == b.value == "y"


class TestTieBreak:
    """Equal stamp times are broken by region priority, then node id, in any merge order."""

    @pytest.mark.parametrize(
        ("one", "other", "winner"),
        [
            ((Stamp(5, 1, "a"), "eu"), (Stamp(5, 1, "z"), "us"), "a"),
            ((Stamp(5, 1, "a"), "us"), (Stamp(5, 1, "z"), "us"), "z"),
            ((Stamp(5, 2, "a"), "apac"), (Stamp(5, 1, "z"), "eu"), "a"),
        ],
    )
    def test_winner(self, one: tuple[Stamp, str], other: tuple[Stamp, str], winner: str) -> None:
        left, right = register("a"), register("z")
        from_left = left.assign(one[0].node, *one)
        from_right = right.assign(other[0].node, *other)
        left.merge(from_right)
        right.merge(from_left)
        assert left.value == right.value == winner

    def test_unknown_region_is_refused(self) -> None:
        with pytest.raises(InvalidOperation, match="region 'mars'"):
            register("a").assign("x", Stamp(1, 0, "a"), "mars")


class TestConflictReport:
    """merge_reporting joins like merge and names the different value that lost."""

    def test_displaced_and_rejected(self) -> None:
        a = register("a")
        old = a.assign("x", Stamp(1, 0, "a"), "eu")
        newer = register("b").assign("y", Stamp(2, 0, "b"), "us")
        x, y = LWWEntry("x", Stamp(1, 0, "a"), "eu", 3), LWWEntry("y", Stamp(2, 0, "b"), "us", 2)
        assert a.merge_reporting(newer) == LWWConflict(y, x, displaced=True)
        assert a.merge_reporting(old) == LWWConflict(y, x, displaced=False)
        assert a.value == "y"

    def test_same_value_is_no_conflict(self) -> None:
        a = register("a")
        a.assign("x", Stamp(1, 0, "a"), "eu")
        assert a.merge_reporting(register("b").assign("x", Stamp(2, 0, "b"), "us")) is None

    @QUICK
    @given(st.data())
    def test_report_agrees_with_merge(self, data: st.DataObject) -> None:
        replicas, _ = run(data)
        a, b = replicas[0].register, replicas[1].register
        reported, merged = a.copy(), a.copy()
        conflict = reported.merge_reporting(b)
        merged.merge(b)
        assert reported == merged
        if conflict is None:
            assert a.entry is None or b.entry is None or a.value == b.value or a.entry == b.entry
        else:
            assert conflict.winner == reported.entry
            assert {conflict.winner, conflict.loser} == {a.entry, b.entry}
            assert conflict.displaced == (conflict.loser == a.entry)


class TestMerge:
    """Merge is a join."""

    @QUICK
    @given(st.data())
    def test_laws(self, data: st.DataObject) -> None:
        a, b, c, *_ = (node.register for node in run(data)[0])
        assert_merge_laws(a, b, c)


class TestEncoding:
    """States and deltas survive the codec unchanged."""

    @QUICK
    @given(st.data())
    def test_round_trip(self, data: st.DataObject) -> None:
        replicas, deltas = run(data)
        for node in [*replicas, *deltas]:
            assert_round_trips(node.register)

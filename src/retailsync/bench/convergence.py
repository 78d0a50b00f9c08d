"""A long randomized replication run, checked against a reference model of add-wins semantics.

Replicas of each subject (Cart "counter", Cart "lww", AWSet) take random adds, removes and (lww)
quantity sets. Every delta is shipped encoded to every other replica over a network that delays
(so reorders), duplicates and drops messages; now and then one replica merges another's full
state (anti-entropy), which repairs drops. At checkpoints the network is drained and the
replicas sync all-to-all; then every replica must hold exactly the lines the model predicts.

The model knows nothing of dots or causal contexts. It names every write, records which writes
each replica has received (from a delta or inside a full state), and lets an operation that
removes or replaces a line cancel exactly the writes its replica had received. A line must be
present iff one of its writes was never cancelled, with the value those surviving writes give.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar

from retailsync.crdt import (
    HLC,
    AWSet,
    Cart,
    CartLine,
    Crdt,
    PriceSnapshot,
    QuantityRule,
    Stamp,
    decode_as,
    encode,
)

C = TypeVar("C", bound=Crdt)
Kind = Literal["add", "set", "remove"]

EPOCH_MS = 1_760_000_000_000
# Every this many operations the network is drained and every replica checked: often enough
# that a long run is checked at about a thousand quiescent points, and costing about 1%.
CHECK_EVERY = 1_000
PROGRESS_EVERY = 50_000
SKUS = 25  # a cart's worth of lines, so removes often race adds of the same line
REMOVE_SHARE, SET_SHARE = 0.25, 0.4  # of operations: removes, then lww sets up to 40%


@dataclass(frozen=True, slots=True)
class Write:
    """What one write put in its line: the facts a line's value is computed from."""

    quantity: int
    prices: tuple[PriceSnapshot, ...]
    stamp: Stamp | None


class Subject(Protocol[C]):
    """A replicated type under test, seen as SKU -> line."""

    @property
    def name(self) -> str: ...

    @property
    def replaces(self) -> bool:
        """Whether a write cancels the writes of its line that its replica has received."""
        ...

    @property
    def sets_quantity(self) -> bool: ...

    @property
    def merge(self) -> Callable[[C, C], None]: ...

    def make(self, replica: str) -> C: ...

    def lines(self, state: C) -> Mapping[str, object]: ...

    def write(self, state: C, kind: Kind, sku: str, rng: random.Random, stamp: Stamp) -> C:
        """Apply one operation; return its delta."""
        ...

    def written(self, delta: C, sku: str, stamp: Stamp) -> Write: ...

    def expected(self, writes: Sequence[Write]) -> object:
        """The line the surviving ``writes`` make under the declared semantics."""
        ...


def _price(sku: str, rng: random.Random) -> PriceSnapshot:
    # Two prices per SKU, so concurrent adds sometimes carry different snapshots.
    return PriceSnapshot(199 + int(sku[4:]) * 37 % 5000 + rng.choice((0, 100)), "EUR")


@dataclass(frozen=True)
class CartSubject:
    rule: QuantityRule
    # Replaceable, so a test can show the checks catch a broken merge.
    merge: Callable[[Cart, Cart], None] = Cart.merge

    @property
    def name(self) -> str:
        return f"Cart({self.rule})"

    @property
    def replaces(self) -> bool:
        return self.rule == "lww"

    @property
    def sets_quantity(self) -> bool:
        return self.rule == "lww"

    def make(self, replica: str) -> Cart:
        return Cart(replica, rule=self.rule)

    def lines(self, state: Cart) -> Mapping[str, object]:
        return state.value

    def write(self, state: Cart, kind: Kind, sku: str, rng: random.Random, stamp: Stamp) -> Cart:
        quantity = rng.randint(1, 3)
        if kind == "remove":
            return state.remove(sku)
        if kind == "set":
            return state.set_quantity(sku, quantity, stamp)
        lww = self.rule == "lww"
        return state.add(sku, quantity, _price(sku, rng), stamp=stamp if lww else None)

    def written(self, delta: Cart, sku: str, stamp: Stamp) -> Write:
        # The delta's own line: under lww a write carries "observed quantity + n", which only
        # the writing replica knew.
        line = delta.value[sku]
        return Write(line.quantity, line.price_snapshots, stamp if self.rule == "lww" else None)

    def expected(self, writes: Sequence[Write]) -> CartLine:
        prices = tuple(sorted({price for write in writes for price in write.prices}))
        if self.rule == "counter":
            return CartLine(sum(write.quantity for write in writes), prices)
        winner = max(writes, key=lambda w: (w.stamp, w.quantity, w.prices))
        return CartLine(winner.quantity, prices)


@dataclass(frozen=True)
class SetSubject:
    merge: Callable[[AWSet[str], AWSet[str]], None] = AWSet.merge  # replaceable, as above
    name: str = "AWSet"
    replaces: bool = True  # an add drops the dots of the element it observed
    sets_quantity: bool = False

    def make(self, replica: str) -> AWSet[str]:
        return AWSet(replica)

    def lines(self, state: AWSet[str]) -> Mapping[str, object]:
        return dict.fromkeys(state.value, True)

    def write(
        self, state: AWSet[str], kind: Kind, sku: str, rng: random.Random, stamp: Stamp
    ) -> AWSet[str]:
        return state.remove(sku) if kind == "remove" else state.add(sku)

    def written(self, delta: AWSet[str], sku: str, stamp: Stamp) -> Write:
        return Write(1, (), None)

    def expected(self, writes: Sequence[Write]) -> bool:
        return True


class Reference:
    """Which writes survive: each write is cancelled by any remove or replacing write made on
    a replica that had received it, and by nothing else."""

    def __init__(self, replicas: int) -> None:
        self.pending: dict[int, tuple[str, Write]] = {}  # write id -> (SKU, write), uncancelled
        self.by_line: defaultdict[str, set[int]] = defaultdict(set)  # SKU -> pending ids
        self.received: list[set[int]] = [set() for _ in range(replicas)]  # pending ids only
        self.adds_surviving_remove = 0  # removes that left a concurrent write standing
        self._next_id = 0

    def write(self, at: int, sku: str, write: Write, *, replaces: bool) -> int:
        if replaces:
            self.cancel(at, sku, remove=False)
        write_id = self._next_id
        self._next_id += 1
        self.pending[write_id] = (sku, write)
        self.by_line[sku].add(write_id)
        self.received[at].add(write_id)
        return write_id

    def cancel(self, at: int, sku: str, *, remove: bool = True) -> None:
        line = self.by_line[sku]
        gone = line & self.received[at]
        line -= gone
        for seen in self.received:
            seen -= gone  # a cancelled write no longer matters to anyone
        for write_id in gone:
            del self.pending[write_id]
        self.adds_surviving_remove += remove and bool(line)

    def deliver(self, to: int, write_id: int) -> None:
        if write_id in self.pending:
            self.received[to].add(write_id)

    def sync(self, to: int, source: int) -> None:
        self.received[to] |= self.received[source]

    def lines(self, expected: Callable[[Sequence[Write]], object]) -> dict[str, object]:
        return {
            sku: expected([self.pending[i][1] for i in ids])
            for sku, ids in self.by_line.items()
            if ids
        }


@dataclass(frozen=True)
class Network:
    drop: float = 0.02
    duplicate: float = 0.02
    max_delay: int = 32  # operations a message may wait in flight: deliveries reorder
    anti_entropy_every: int = 20  # operations between two full-state merges


NETWORK = Network()


class _Message(NamedTuple):
    to: int
    data: bytes
    write_id: int | None  # the write it carries, for the model; None for a remove


@dataclass
class Outcome:
    """What one subject's run did and what its checkpoints found."""

    subject: str
    ops: int = 0
    adds: int = 0  # and, in an lww cart, quantity sets
    removes: int = 0
    adds_surviving_remove: int = 0
    deliveries: int = 0
    duplicates: int = 0
    dropped: int = 0
    anti_entropy: int = 0
    checkpoints: int = 0
    lines_checked: int = 0
    lost_adds: int = 0  # (replica, line) pairs absent at a checkpoint that must be present
    resurrections: int = 0  # (replica, line) pairs present that every remove had cancelled
    wrong_lines: int = 0  # present as it must be, with another quantity or prices
    converged: bool = True
    seconds: float = 0.0


class _Run(Generic[C]):
    """One subject's replicas, the messages in flight between them, and the model."""

    def __init__(
        self, subject: Subject[C], replicas: int, rng: random.Random, network: Network
    ) -> None:
        self.subject, self.rng, self.network = subject, rng, network
        names = [f"replica-{i}" for i in range(replicas)]
        self.states = [subject.make(name) for name in names]
        self.now = EPOCH_MS
        self.clocks = [HLC(name, physical=lambda: self.now) for name in names]
        self.model = Reference(replicas)
        self.kind = type(self.states[0])
        self.inflight: defaultdict[int, list[_Message]] = defaultdict(list)
        self.outcome = Outcome(subject.name)

    def tick(self, tick: int) -> None:
        """Deliver what is due, maybe run anti-entropy, then one operation on one replica."""
        self.now = EPOCH_MS + tick
        for message in self.inflight.pop(tick, ()):
            self.deliver(message)
        if tick % self.network.anti_entropy_every == 0:
            self.sync(*self.rng.sample(range(len(self.states)), 2))
            self.outcome.anti_entropy += 1
        at, roll = self.rng.randrange(len(self.states)), self.rng.random()
        kind: Kind = "remove" if roll < REMOVE_SHARE else "set" if roll < SET_SHARE else "add"
        if kind == "set" and not self.subject.sets_quantity:
            kind = "add"
        # Removes and sets pick a line this replica shows, as a shopper would.
        present = sorted(self.subject.lines(self.states[at])) if kind != "add" else []
        if present:
            sku = self.rng.choice(present)
        else:
            kind, sku = "add", f"sku-{self.rng.randrange(SKUS):04d}"
        stamp = self.clocks[at].now()
        delta = self.subject.write(self.states[at], kind, sku, self.rng, stamp)
        write_id = None
        if kind == "remove":
            self.model.cancel(at, sku)
            self.outcome.removes += 1
        else:
            written = self.subject.written(delta, sku, stamp)
            write_id = self.model.write(at, sku, written, replaces=self.subject.replaces)
            self.outcome.adds += 1
        self.send(tick, at, encode(delta), write_id)

    def send(self, tick: int, at: int, data: bytes, write_id: int | None) -> None:
        """Ship a delta to every other replica: each copy may be dropped, delayed, doubled."""
        rng, network = self.rng, self.network
        for to in range(len(self.states)):
            if to == at:
                continue
            if rng.random() < network.drop:
                self.outcome.dropped += 1
                continue
            copies = 2 if rng.random() < network.duplicate else 1
            self.outcome.duplicates += copies - 1
            for _ in range(copies):
                due = tick + rng.randint(1, network.max_delay)
                self.inflight[due].append(_Message(to, data, write_id))

    def deliver(self, message: _Message) -> None:
        self.subject.merge(self.states[message.to], decode_as(message.data, self.kind))
        if message.write_id is not None:
            self.model.deliver(message.to, message.write_id)
        self.outcome.deliveries += 1

    def sync(self, to: int, source: int) -> None:
        """Anti-entropy: ``to`` merges the full state of ``source``, shipped as bytes."""
        self.subject.merge(self.states[to], decode_as(encode(self.states[source]), self.kind))
        self.model.sync(to, source)

    def checkpoint(self) -> None:
        """Drain the network, sync all-to-all through replica 0, and check every replica."""
        for due in sorted(self.inflight):
            for message in self.inflight.pop(due):
                self.deliver(message)
        for other in range(1, len(self.states)):
            self.sync(0, other)
        for other in range(1, len(self.states)):
            self.sync(other, 0)
        expected = self.model.lines(self.subject.expected)
        outcome = self.outcome
        for state in self.states:
            got = self.subject.lines(state)
            outcome.lost_adds += len(expected.keys() - got.keys())
            outcome.resurrections += len(got.keys() - expected.keys())
            outcome.wrong_lines += sum(got[k] != line for k, line in expected.items() if k in got)
            outcome.lines_checked += len(expected)
        outcome.converged &= all(state == self.states[0] for state in self.states)
        outcome.checkpoints += 1


def run_subject(
    subject: Subject[C],
    ops: int,
    replicas: int,
    rng: random.Random,
    network: Network = NETWORK,
    progress: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """``ops`` random operations on ``replicas`` replicas of ``subject``; what the checks found."""
    start = time.perf_counter()
    run = _Run(subject, replicas, rng, network)
    for tick in range(ops):
        run.tick(tick)
        done = tick + 1
        if done % CHECK_EVERY == 0 or done == ops:
            run.checkpoint()
        if done % PROGRESS_EVERY == 0 or done == ops:
            progress(f"{subject.name}: {done:,}/{ops:,} operations checked")
    outcome = run.outcome
    outcome.ops = ops
    outcome.adds_surviving_remove = run.model.adds_surviving_remove
    outcome.seconds = time.perf_counter() - start
    return outcome


SUBJECTS: tuple[Subject[Any], ...] = (CartSubject("counter"), CartSubject("lww"), SetSubject())


def run_convergence(
    ops: int,
    replicas: int,
    seed: int,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Split ``ops`` over the subjects and run each; the JSON-ready report."""
    outcomes = []
    for i, subject in enumerate(SUBJECTS):
        share = ops // len(SUBJECTS) + (i < ops % len(SUBJECTS))
        rng = random.Random(f"{seed}:{subject.name}")
        outcomes.append(run_subject(subject, share, replicas, rng, progress=progress))
    seconds = sum(o.seconds for o in outcomes)
    return {
        "ops": ops,
        "replicas": replicas,
        "seed": seed,
        "network": asdict(NETWORK),
        "seconds": round(seconds, 2),
        "ops_per_s": round(ops / seconds),
        "lost_adds": sum(o.lost_adds for o in outcomes),
        "resurrections": sum(o.resurrections for o in outcomes),
        "wrong_lines": sum(o.wrong_lines for o in outcomes),
        "converged": all(o.converged for o in outcomes),
        "subjects": {o.subject: asdict(o) | {"seconds": round(o.seconds, 2)} for o in outcomes},
    }

"""Merge throughput and delta/state sizes of the CRDT types, beside pycrdt (Yjs) where they meet.

Each type runs a seeded script of operations on three writer replicas kept in sync, and every
operation's delta is encoded as it would be shipped. A fresh replica then receives those bytes
in order and we time decode + merge, the path a region or POS takes for every change it is sent
(and, for comparison, merge alone of the already decoded deltas). pycrdt runs the same script
on a ``Y.Map`` with three docs and is timed on ``Doc.apply_update`` of the update each
operation's transaction emitted (``Doc.get_update(state_vector)`` sizes are reported too).

Client ids, replica ids, clocks and scripts are fixed, so every byte count is exact and repeats
on any machine; only the rates depend on the machine.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from retailsync.crdt import (
    HLC,
    AWSet,
    BoundedCounter,
    Cart,
    Crdt,
    LWWRegister,
    MVRegister,
    PNCounter,
    PriceSnapshot,
    Stamp,
    decode_as,
    encode,
)

if TYPE_CHECKING:
    from pycrdt import Map

C = TypeVar("C", bound=Crdt)
T = TypeVar("T")

WRITERS = ("pos-eu-01", "pos-us-02", "web-ap-03")  # codec.py's sizes use ids of this length
REGIONS = {"pos-eu-01": "eu", "pos-us-02": "us", "web-ap-03": "ap"}
REGION_PRIORITY = {"eu": 3, "us": 2, "ap": 1}
# Yjs draws client ids as random uint32s; fixed ones of that size keep the byte counts honest
# (small ids would encode shorter) and repeatable.
PEER_CLIENTS = (2_854_719_123, 1_183_746_521, 3_390_017_264)
PEER_RECEIVER = 4_012_345_678
EPOCH_MS = 1_760_000_000_000  # stamps have today's magnitude, so they encode at today's size

Kind = Literal["inc", "dec", "transfer", "add", "set", "remove", "assign"]


@dataclass(frozen=True, slots=True)
class Step:
    """One operation of a script, the same for our types and for pycrdt."""

    writer: int
    kind: Kind
    key: str  # SKU, element, register value, or the replica a transfer goes to
    amount: int


@dataclass(frozen=True, slots=True)
class Plan:
    ops: int  # operations per type
    repeats: int  # timed runs per measurement; the best one is reported
    seed: int = 1


QUICK = Plan(ops=400, repeats=2)
FULL = Plan(ops=20_000, repeats=3)


def counter_script(ops: int, rng: random.Random, *, bounded: bool) -> list[Step]:
    """Increments and decrements; a bounded counter also transfers, never beyond its rights."""
    rights = [0] * len(WRITERS)
    steps = []
    for i in range(ops):
        w, amount, roll = i % len(WRITERS), rng.randint(1, 5), rng.random()
        kind: Kind = "inc" if roll < 0.5 else "transfer" if bounded and roll > 0.85 else "dec"
        target = (w + 1) % len(WRITERS)
        if bounded:
            if kind != "inc" and rights[w] < amount:
                kind = "inc"
            rights[w] += amount if kind == "inc" else -amount
            if kind == "transfer":
                rights[target] += amount
        steps.append(Step(w, kind, WRITERS[target], amount))
    return steps


def keyed_script(ops: int, rng: random.Random, *, pool: int, set_share: float) -> list[Step]:
    """Adds over ``pool`` SKUs, and removes (and quantity sets) of lines that are present."""
    present: dict[str, None] = {}  # insertion-ordered, so choices repeat for a seed
    steps = []
    for i in range(ops):
        w, roll = i % len(WRITERS), rng.random()
        if present and roll < 0.25 + set_share:
            key = rng.choice(list(present))
            kind: Kind = "remove" if roll < 0.25 else "set"
        else:
            key, kind = f"sku-{rng.randrange(pool):06d}", "add"
        if kind == "remove":
            del present[key]
        else:
            present[key] = None
        steps.append(Step(w, kind, key, rng.randint(1, 3)))
    return steps


def register_script(ops: int, rng: random.Random) -> list[Step]:
    return [Step(i % len(WRITERS), "assign", f"v{rng.randrange(10**6):06d}", 0) for i in range(ops)]


def _price(sku: str) -> PriceSnapshot:
    return PriceSnapshot(199 + int(sku[4:]) * 37 % 5000, "EUR")


def _pn(c: PNCounter, step: Step, _: Stamp) -> PNCounter:
    return c.increment(step.amount) if step.kind == "inc" else c.decrement(step.amount)


def _bc(c: BoundedCounter, step: Step, _: Stamp) -> BoundedCounter:
    if step.kind == "transfer":
        return c.transfer(step.amount, to=step.key)
    return c.increment(step.amount) if step.kind == "inc" else c.decrement(step.amount)


def _aw(s: AWSet[str], step: Step, _: Stamp) -> AWSet[str]:
    return s.add(step.key) if step.kind == "add" else s.remove(step.key)


def _mv(r: MVRegister[str], step: Step, _: Stamp) -> MVRegister[str]:
    return r.assign(step.key)


def _lww(r: LWWRegister[str], step: Step, stamp: Stamp) -> LWWRegister[str]:
    return r.assign(step.key, stamp, REGIONS[stamp.node])


def _cart(c: Cart, step: Step, stamp: Stamp) -> Cart:
    if step.kind == "remove":
        return c.remove(step.key)
    if step.kind == "set":
        return c.set_quantity(step.key, step.amount, stamp)
    lww = c.rule == "lww"
    return c.add(step.key, step.amount, _price(step.key), stamp=stamp if lww else None)


@dataclass(frozen=True)
class Subject(Generic[C]):
    name: str
    make: Callable[[str], C]
    apply: Callable[[C, Step, Stamp], C]
    script: Callable[[int, random.Random], list[Step]]
    peer: Callable[[Map[Any], Step], None] | None = None  # the same step on a pycrdt Map
    peer_shape: str = ""


def _peer_member(m: Map[Any], step: Step) -> None:
    if step.kind == "add":
        m[step.key] = True
    else:
        del m[step.key]


def _peer_register(m: Map[Any], step: Step) -> None:
    m["value"] = step.key


def _peer_line(m: Map[Any], step: Step) -> None:
    if step.kind == "remove":
        del m[step.key]
        return
    held = m.get(step.key)
    quantity = step.amount if step.kind == "set" or held is None else int(held[0]) + step.amount
    price = _price(step.key)
    m[step.key] = [quantity, price.price_minor, price.currency]


def _carts(rule: Literal["counter", "lww"]) -> Subject[Cart]:
    return Subject(
        f"Cart({rule})",
        lambda replica: Cart(replica, rule=rule),
        _cart,
        # Only an lww cart sets quantities; a counter cart sums adds.
        lambda n, rng: keyed_script(n, rng, pool=40, set_share=0.15 if rule == "lww" else 0.0),
        _peer_line,
        "Y.Map SKU -> [quantity, price_minor, currency]",
    )


SUBJECTS: tuple[Subject[Any], ...] = (
    Subject("PNCounter", PNCounter, _pn, lambda n, rng: counter_script(n, rng, bounded=False)),
    Subject(
        "BoundedCounter",
        BoundedCounter,
        _bc,
        lambda n, rng: counter_script(n, rng, bounded=True),
    ),
    Subject(
        "AWSet",
        AWSet[str],
        _aw,
        lambda n, rng: keyed_script(n, rng, pool=200, set_share=0.0),
        _peer_member,
        "Y.Map element -> true",
    ),
    Subject("MVRegister", MVRegister[str], _mv, register_script),
    Subject(
        "LWWRegister",
        lambda replica: LWWRegister[str](replica, region_priority=REGION_PRIORITY),
        _lww,
        register_script,
        _peer_register,
        "one Y.Map key, overwritten",
    ),
    _carts("counter"),
    _carts("lww"),
)

NOTES = (
    "merges_per_s: deltas received from another replica as bytes, decode + merge, in order, "
    "into a fresh replica; best of the timed runs after a warm-up run. inmem_merges_per_s: "
    "merge alone of the same deltas, decoded beforehand.",
    "delta_bytes: mean encoded delta per operation (delta_bytes_max: largest); state_bytes: "
    "one replica's full state after the script. Sizes are exact and machine-independent.",
    "Each script runs on 3 writers that sync after every operation, round-robin.",
    "pycrdt: the same script on a Y.Map in 3 docs (fixed uint32 client ids). A delta is the "
    "update the writing doc emits for the operation's transaction (Doc.observe), the bytes a "
    "Yjs provider broadcasts per change, timed as Doc.apply_update into a fresh doc. "
    "peer_sync_delta_bytes: Doc.get_update(state vector before the operation) instead, the "
    "same items plus the doc's whole delete set, so it grows with deletions. State: "
    "Doc.get_update() of one writer.",
    "ratio = ours / pycrdt: above 1 is faster for merges/s, below 1 is smaller for bytes.",
    "Sets: pycrdt has no set type, so an AWSet is compared with a Y.Map keyed by element "
    "(value true): a Y.Array would need a scan to delete by value and keeps duplicates, while "
    "a key is set membership with a keyed delete. Y.Map settles a concurrent set and delete "
    "of one key by client order, not add-wins.",
    "Maps: LWWRegister is compared with one Y.Map key overwritten (a Y.Map entry is Yjs's "
    "last-writer-wins register); Cart with a Y.Map keyed by SKU. Yjs has no counter, so "
    "concurrent adds to one Y.Map line keep one writer's quantity where Cart(counter) sums.",
    "PNCounter, BoundedCounter and MVRegister have no pycrdt counterpart.",
)


def _best_rate(run: Callable[[], T], count: int, repeats: int) -> tuple[float, T]:
    """Operations per second of the fastest of ``repeats`` runs, after one untimed warm-up,
    and what the last run returned (to check it)."""
    result = run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return count / best, result


def _measure_ours(subject: Subject[C], steps: list[Step], repeats: int) -> dict[str, Any]:
    writers = [subject.make(name) for name in WRITERS]
    now = [EPOCH_MS]
    clocks = [HLC(name, physical=lambda: now[0]) for name in WRITERS]
    deltas: list[bytes] = []
    for step in steps:
        now[0] += 1
        writer = writers[step.writer]
        delta = subject.apply(writer, step, clocks[step.writer].now())
        deltas.append(encode(delta))
        for other in writers:
            if other is not writer:
                other.merge(delta)

    kind = type(writers[0])

    def over_wire() -> C:
        receiver = subject.make("bench-rx")
        for data in deltas:
            receiver.merge(decode_as(data, kind))
        return receiver

    decoded = [decode_as(data, kind) for data in deltas]

    def in_memory() -> C:
        receiver = subject.make("bench-rx")
        for delta in decoded:
            receiver.merge(delta)
        return receiver

    rate, received = _best_rate(over_wire, len(deltas), repeats)
    inmem_rate, _ = _best_rate(in_memory, len(deltas), repeats)
    if received.value != writers[0].value:
        raise RuntimeError(f"{subject.name}: the receiver did not converge with the writers")
    sizes = [len(data) for data in deltas]
    return {
        "ops": len(steps),
        "merges_per_s": round(rate),
        "inmem_merges_per_s": round(inmem_rate),
        "delta_bytes": round(sum(sizes) / len(sizes), 1),
        "delta_bytes_max": max(sizes),
        "state_bytes": len(encode(writers[0])),
    }


def _measure_peer(
    apply: Callable[[Map[Any], Step], None], steps: list[Step], repeats: int
) -> dict[str, Any]:
    from pycrdt import Doc, Map

    docs: list[Doc[Any]] = [Doc(client_id=client) for client in PEER_CLIENTS]
    maps: list[Map[Any]] = []
    for doc in docs:
        root: Map[Any] = Map()
        doc["m"] = root
        maps.append(root)
    updates: list[bytes] = []  # what the writing doc emitted for each operation
    sync_sizes: list[int] = []  # Doc.get_update(state vector before the operation)
    emitted: list[bytes] = []
    for step in steps:
        doc = docs[step.writer]
        before = doc.get_state()
        subscription = doc.observe(lambda event: emitted.append(event.update))
        with doc.transaction():  # one operation, one update, as a Yjs provider ships it
            apply(maps[step.writer], step)
        doc.unobserve(subscription)
        (update,) = emitted
        emitted.clear()
        updates.append(update)
        sync_sizes.append(len(doc.get_update(before)))
        for other in docs:
            if other is not doc:
                other.apply_update(update)

    def over_wire() -> Doc[Any]:
        receiver: Doc[Any] = Doc(client_id=PEER_RECEIVER)
        for update in updates:
            receiver.apply_update(update)
        return receiver

    rate, received = _best_rate(over_wire, len(updates), repeats)
    if received.get("m", type=Map).to_py() != maps[0].to_py():
        raise RuntimeError("pycrdt: the receiver did not converge with the writers")
    sizes = [len(update) for update in updates]
    return {
        "peer_merges_per_s": round(rate),
        "peer_delta_bytes": round(sum(sizes) / len(sizes), 1),
        "peer_delta_bytes_max": max(sizes),
        "peer_sync_delta_bytes": round(sum(sync_sizes) / len(sync_sizes), 1),
        "peer_state_bytes": len(docs[0].get_update()),
    }


def peer_version() -> str | None:
    """pycrdt's version, or None when it is not installed (``pip install retailsync[bench]``)."""
    try:
        import pycrdt
    except ImportError:
        return None
    return str(pycrdt.__version__)


def run_bench(plan: Plan, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure every type; the JSON-ready report."""
    version = peer_version()
    types: dict[str, dict[str, Any]] = {}
    for subject in SUBJECTS:
        progress(subject.name)
        steps = subject.script(plan.ops, random.Random(f"{plan.seed}:{subject.name}"))
        row = _measure_ours(subject, steps, plan.repeats)
        if subject.peer is not None and version is not None:
            peer = _measure_peer(subject.peer, steps, plan.repeats)
            row |= {
                "peer": {"name": "pycrdt", "version": version},
                "peer_shape": subject.peer_shape,
            }
            row |= peer
            for field in ("merges_per_s", "delta_bytes", "state_bytes"):
                # Three significant figures: a state ratio can be 0.0004.
                row[f"ratio_{field}"] = float(f"{row[field] / peer[f'peer_{field}']:.3g}")
        types[subject.name] = row
    notes = list(NOTES)
    if version is None:
        notes.append("pycrdt is not installed (pip install 'retailsync[bench]'): no peer figures.")
    return {
        "plan": {"ops_per_type": plan.ops, "repeats": plan.repeats, "seed": plan.seed},
        "python": sys.version.split()[0],
        "types": types,
        "notes": notes,
    }

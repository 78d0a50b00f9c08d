from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retailsync.crdt import (
    FORMAT_VERSION,
    AWSet,
    BoundedCounter,
    Cart,
    Crdt,
    CrdtDecodeError,
    InvalidOperation,
    LWWRegister,
    MVRegister,
    PNCounter,
    PriceSnapshot,
    Stamp,
    decode,
    decode_as,
    encode,
)

REPLICA = "pos-eu-01"
PRICE = PriceSnapshot(1999, "EUR")
STAMP = Stamp(1_700_000_000_000, 0, REPLICA)


def pack(*envelope: Any) -> bytes:
    return msgspec.msgpack.encode(envelope)


def samples() -> list[Crdt]:
    """One non-trivial state of each type, with removals and several replicas."""
    pn, bc = PNCounter(REPLICA), BoundedCounter(REPLICA)
    pn.increment(5)
    pn.decrement(2)
    bc.increment(5)
    bc.transfer(2, to="pos-eu-02")
    aw, other = AWSet[str](REPLICA), AWSet[str]("pos-eu-02")
    aw.add("a")
    aw.merge(other.add(("b", 1)))  # type: ignore[arg-type]
    aw.remove("a")
    mv = MVRegister[str](REPLICA)
    mv.assign("red")
    lww = LWWRegister[str](REPLICA, region_priority={"eu": 2, "us": 1})
    lww.assign("x", STAMP, "eu")
    cart, lww_cart = Cart(REPLICA, rule="counter"), Cart(REPLICA, rule="lww")
    cart.add("sku-1", 2, PRICE)
    cart.add("sku-2", 1, PRICE)
    cart.remove("sku-1")
    lww_cart.add("sku-1", 2, PRICE, stamp=STAMP)
    return [pn, bc, aw, mv, lww, cart, lww_cart]


class TestEnvelope:
    """Encodings are [version, tag, state]; decode_as checks the type."""

    @pytest.mark.parametrize("crdt", samples(), ids=lambda c: type(c).__name__)
    def test_round_trip(self, crdt: Crdt) -> None:
        data = encode(crdt)
        version, tag, _ = msgspec.msgpack.decode(data)
        assert version == FORMAT_VERSION
        assert isinstance(tag, str)
        back = decode_as(data, type(crdt))
        assert back == crdt
        assert back.replica == crdt.replica

    def test_decode_as_refuses_another_type(self) -> None:
        with pytest.raises(CrdtDecodeError, match="expected a Cart, got a PNCounter"):
            decode_as(encode(PNCounter("a")), Cart)

    def test_encode_refuses_what_it_does_not_know(self) -> None:
        with pytest.raises(InvalidOperation, match="dict is not a CRDT"):
            encode({})  # type: ignore[arg-type]


CORRUPT: list[tuple[str, bytes, str]] = [
    ("unknown version", pack(2, "pn", [["a"], [1], [0]]), "format version 2"),
    ("unknown tag", pack(1, "gset", []), "unknown type tag 'gset'"),
    ("not an envelope", msgspec.msgpack.encode({"v": 1}), "not a CRDT envelope"),
    ("trailing bytes", encode(PNCounter("a")) + b"\x00", "not a CRDT envelope"),
    ("invalid utf-8 tag", b"\x93\x01\xa2\xf0n\x90", "not a CRDT envelope"),
    ("invalid utf-8 id", b"\x93\x01\xa2pn\x93\x91\xa1\xf0\x91\x01\x91\x00", "corrupt 'pn'"),
    ("wrong state shape", pack(1, "pn", {"a": 1}), "corrupt 'pn' state"),
    ("negative count", pack(1, "pn", [["a"], [-1], [0]]), "corrupt 'pn' state"),
    ("empty replica table", pack(1, "pn", [[], [], []]), "replica table is empty"),
    ("misaligned table", pack(1, "aw", [["a"], [1, 2], [], []]), "does not match"),
    ("dot names no replica", pack(1, "aw", [["a"], [0], [], [[3, 1, "x"]]]), "replica #3"),
    ("two entries, one dot", pack(1, "mv", [["a"], [0], [], [[0, 1, "x"], [0, 1, "y"]]]), "dot"),
    ("map as element", pack(1, "aw", [["a"], [0], [], [[0, 1, {"k": 1}]]]), "map cannot"),
    ("negative rights", pack(1, "bc", [["a"], [0], [5], []]), "negative rights"),
    ("self transfer", pack(1, "bc", [["a"], [5], [0], [[0, 0, 1]]]), "transfers to itself"),
    ("unknown cart rule", pack(1, "cart", ["fifo", [["a"], [0], [], []]]), "corrupt 'cart'"),
    (
        "unstamped lww line",
        pack(1, "cart", ["lww", [["a"], [0], [], [[0, 1, ["s", 1, [[100, "EUR"]], None]]]]]),
        "must carry a stamp",
    ),
    (
        "line without price",
        pack(1, "cart", ["counter", [["a"], [0], [], [[0, 1, ["s", 1, [], None]]]]]),
        "corrupt 'cart'",
    ),
]


class TestRejection:
    """What is not an encoding this build reads raises CrdtDecodeError with a clear reason."""

    @pytest.mark.parametrize(
        ("data", "reason"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT]
    )
    def test_corrupt(self, data: bytes, reason: str) -> None:
        with pytest.raises(CrdtDecodeError, match=reason):
            decode(data)

    @pytest.mark.parametrize("crdt", samples(), ids=lambda c: type(c).__name__)
    def test_every_truncation(self, crdt: Crdt) -> None:
        data = encode(crdt)
        for end in range(len(data)):
            with pytest.raises(CrdtDecodeError):
                decode(data[:end])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_random_bytes(self, data: bytes) -> None:
        with pytest.raises(CrdtDecodeError):
            decode(data)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from([encode(c) for c in samples()]), st.data())
    def test_flipped_bytes_decode_to_a_valid_object_or_are_rejected(
        self, data: bytes, draw: st.DataObject
    ) -> None:
        at = draw.draw(st.integers(0, len(data) - 1))
        flipped = data[:at] + bytes([data[at] ^ draw.draw(st.integers(1, 255))]) + data[at + 1 :]
        try:
            decoded = decode(flipped)
        except CrdtDecodeError:
            return
        assert decode(encode(decoded)) == decoded


# (operation, the operation's own payload, delta bytes measured and documented in codec.py)
SIZES: list[tuple[str, Callable[[], Crdt], object, int]] = [
    ("PNCounter.increment", lambda: PNCounter(REPLICA).increment(5), 5, 21),
    ("BoundedCounter.increment", lambda: BoundedCounter(REPLICA).increment(5), 5, 22),
    ("AWSet.add", lambda: AWSet[str](REPLICA).add("sku-000042"), "sku-000042", 35),
    ("MVRegister.assign", lambda: MVRegister[str](REPLICA).assign("hello"), "hello", 30),
    (
        "LWWRegister.assign",
        lambda: LWWRegister[str](REPLICA, region_priority={"eu": 2, "us": 1}).assign(
            "hello", STAMP, "eu"
        ),
        ("hello", STAMP, "eu"),
        58,
    ),
    (
        "Cart.add (counter)",
        lambda: Cart(REPLICA, rule="counter").add("sku-000042", 2, PRICE),
        ("sku-000042", 2, PRICE),
        58,
    ),
    (
        "Cart.add (lww)",
        lambda: Cart(REPLICA, rule="lww").add("sku-000042", 2, PRICE, stamp=STAMP),
        ("sku-000042", 2, PRICE, STAMP),
        74,
    ),
]
# Envelope, the author's replica id (9 characters here) and one dot.
SMALL_CONSTANT = 24


class TestSize:
    """A delta encodes to at most twice its operation's payload plus a small constant, and
    removed set elements leave nothing per element behind."""

    @pytest.mark.parametrize(
        ("make", "payload", "measured"), [s[1:] for s in SIZES], ids=[s[0] for s in SIZES]
    )
    def test_delta_of_one_operation(
        self, make: Callable[[], Crdt], payload: object, measured: int
    ) -> None:
        size = len(encode(make()))
        assert size == measured, "update the sizes documented in retailsync/crdt/codec.py"
        assert size <= 2 * len(msgspec.msgpack.encode(payload)) + SMALL_CONSTANT

    def test_bounded_counter_delta_of_decrement_and_transfer(self) -> None:
        counter = BoundedCounter(REPLICA)
        counter.increment(5)
        assert len(encode(counter.decrement(3))) == 22
        transfer = counter.transfer(1, to="pos-eu-02")
        assert len(encode(transfer)) <= 2 * len(msgspec.msgpack.encode((1, "pos-eu-02"))) + 24

    def test_awset_metadata(self) -> None:
        replicas = [AWSet[str](f"pos-eu-0{i}") for i in range(3)]
        skus = [f"sku-{i:06d}" for i in range(100)]
        for i, sku in enumerate(skus):
            replicas[i % 3].add(sku)
        state = replicas[0]
        for other in replicas[1:]:
            state.merge(other)
        payload = sum(len(msgspec.msgpack.encode(sku)) for sku in skus)
        assert (payload, len(encode(state))) == (1_100, 1_445)
        for sku in skus[:90]:
            state.remove(sku)
        payload = sum(len(msgspec.msgpack.encode(sku)) for sku in skus[90:])
        assert (payload, len(encode(state))) == (110, 183)

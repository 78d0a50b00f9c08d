"""Typed delta-state CRDTs: the merge engine for multi-region replication and offline POS sync.

Every type is a replica acting for one replica id. Its operations apply locally and return a
*delta*, a small object of the same type; ship it (``codec.encode``) and ``merge`` it anywhere,
in any order, any number of times. A full state merges the same way, which is how a replica
that missed deltas catches up. See :class:`~retailsync.crdt.base.Crdt` for the contract.

A replica id names one writer for its whole life: never write through two objects with one id,
and never resume writing from a state older than deltas it already sent (take a fresh id).

    PNCounter        counter, increments and decrements
    BoundedCounter   escrow counter that never goes below zero
    AWSet            add-wins set (wishlists, collections)
    MVRegister       keeps concurrent values, for the caller to resolve
    LWWRegister      last writer by HLC stamp wins; losers reported
    Cart             SKU -> line, add-wins lines, quantity rule "counter" or "lww"
    HLC, Stamp       hybrid logical clock for LWW stamps
"""

from retailsync.crdt.awset import AWSet
from retailsync.crdt.base import Crdt
from retailsync.crdt.cart import Cart, CartLine, PriceSnapshot, QuantityRule
from retailsync.crdt.clock import HLC, Stamp, wall_clock_ms
from retailsync.crdt.codec import FORMAT_VERSION, decode, decode_as, encode
from retailsync.crdt.counters import BoundedCounter, CounterRow, PNCounter
from retailsync.crdt.errors import (
    ClockSkewError,
    CrdtDecodeError,
    CrdtError,
    InsufficientRights,
    InvalidOperation,
)
from retailsync.crdt.registers import LWWConflict, LWWEntry, LWWRegister, MVRegister

__all__ = [
    "FORMAT_VERSION",
    "HLC",
    "AWSet",
    "BoundedCounter",
    "Cart",
    "CartLine",
    "ClockSkewError",
    "CounterRow",
    "Crdt",
    "CrdtDecodeError",
    "CrdtError",
    "InsufficientRights",
    "InvalidOperation",
    "LWWConflict",
    "LWWEntry",
    "LWWRegister",
    "MVRegister",
    "PNCounter",
    "PriceSnapshot",
    "QuantityRule",
    "Stamp",
    "decode",
    "decode_as",
    "encode",
    "wall_clock_ms",
]

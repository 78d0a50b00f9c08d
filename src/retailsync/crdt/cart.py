"""A shopping cart that merges: lines keyed by SKU, with add-wins presence.

Every write to a line stores a :class:`LineDot` under a fresh dot (see :mod:`.causal`); the
line's live dots make the line. ``remove(sku)`` cancels only the dots it observed, so an add
made concurrently survives with just its own contribution, and a removed contribution never
comes back. How the live dots make a quantity is the cart's *rule*, fixed at construction:

``"counter"``
    Each ``add`` carries an increment; the quantity is the sum over live dots, so concurrent
    adds are never lost. Adds accumulate dots until the line is removed (a cart's lifetime).
``"lww"``
    Each ``add`` or ``set_quantity`` carries the line's new quantity and an HLC stamp, and
    replaces the dots it observed; of concurrent writes the highest stamp decides, the same on
    every replica. An ``add`` here means "observed quantity + n".

``CartLine.price_snapshots`` holds the distinct prices of the line's live dots, so concurrent
adds at different prices all show up for re-confirmation at checkout. Under ``"counter"`` each
surviving add keeps the price it was made at; under ``"lww"`` a write replaces the snapshots it
observed (``set_quantity`` carries them forward), so only concurrent ones remain side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, Self

import msgspec

from retailsync.crdt.causal import DotKernel, KernelCrdt, KernelWire, NonNegative, Positive
from retailsync.crdt.clock import Stamp
from retailsync.crdt.errors import CrdtDecodeError, InvalidOperation

QuantityRule = Literal["counter", "lww"]


class PriceSnapshot(msgspec.Struct, frozen=True, order=True, array_like=True):
    """The unit price a line was added at, in minor units of ``currency``."""

    price_minor: NonNegative
    currency: str


class CartLine(msgspec.Struct, frozen=True):
    """A line as the application sees it; more than one snapshot means prices diverged."""

    quantity: int
    price_snapshots: tuple[PriceSnapshot, ...]


class LineDot(msgspec.Struct, frozen=True, array_like=True):
    """What one write to a line carries: a quantity (the increment under ``"counter"``, the new
    quantity under ``"lww"``), the price snapshots it vouches for, and its stamp (``"lww"``)."""

    sku: str
    quantity: Positive
    prices: Annotated[tuple[PriceSnapshot, ...], msgspec.Meta(min_length=1)]
    stamp: Stamp | None = None


class CartWire(msgspec.Struct, array_like=True):
    rule: QuantityRule
    kernel: KernelWire[LineDot]


def _lww_order(dot: LineDot) -> tuple[Stamp, int, tuple[PriceSnapshot, ...]]:
    # Quantity and prices only separate writes that share a stamp, keeping the choice total.
    assert dot.stamp is not None  # every dot of an lww cart is stamped (checked on the way in)
    return (dot.stamp, dot.quantity, dot.prices)


class Cart(KernelCrdt[LineDot]):
    """A mergeable cart; ``value`` maps each SKU to its :class:`CartLine`."""

    __slots__ = ("_rule",)

    def __init__(self, replica: str, *, rule: QuantityRule) -> None:
        if rule not in ("counter", "lww"):
            raise InvalidOperation("Cart", f"rule must be 'counter' or 'lww', got {rule!r}")
        super().__init__(replica)
        self._rule: QuantityRule = rule

    @property
    def rule(self) -> QuantityRule:
        return self._rule

    @property
    def value(self) -> Mapping[str, CartLine]:
        by_sku: dict[str, list[LineDot]] = {}
        for dot in self._kernel.entries.values():
            by_sku.setdefault(dot.sku, []).append(dot)
        return {sku: self._line(dots) for sku, dots in sorted(by_sku.items())}

    def add(
        self, sku: str, quantity: int, price_snapshot: PriceSnapshot, *, stamp: Stamp | None = None
    ) -> Cart:
        """Add ``quantity`` (> 0) of ``sku`` at ``price_snapshot``; return the delta.

        A counter cart takes no ``stamp``; an lww cart requires one.
        """
        if quantity <= 0:
            raise InvalidOperation("add", f"quantity must be positive, got {quantity}")
        if self._rule == "counter":
            if stamp is not None:
                raise InvalidOperation("add", "a counter cart sums adds and takes no stamp")
            return self._with_kernel(
                self._kernel.add(self._replica, LineDot(sku, quantity, (price_snapshot,)))
            )
        if stamp is None:
            raise InvalidOperation("add", "an lww cart needs the stamp of each add")
        held = self._held(sku)
        observed = 0 if held is None else held.quantity
        return self._write(LineDot(sku, observed + quantity, (price_snapshot,), stamp))

    def set_quantity(self, sku: str, quantity: int, stamp: Stamp) -> Cart:
        """Set the quantity (> 0) of a line present here, keeping its price snapshots (lww only);
        return the delta."""
        if self._rule != "lww":
            raise InvalidOperation("set_quantity", "a counter cart sums adds; use an lww cart")
        if quantity <= 0:
            raise InvalidOperation("set_quantity", f"quantity must be positive, got {quantity}")
        held = self._held(sku)
        if held is None:
            raise InvalidOperation("set_quantity", f"{sku!r} is not in the cart; add it first")
        return self._write(LineDot(sku, quantity, held.price_snapshots, stamp))

    def remove(self, sku: str) -> Cart:
        """Remove the line as observed here; return the delta (empty if the line is absent)."""
        return self._with_kernel(self._kernel.remove(lambda dot: dot.sku == sku))

    def _write(self, written: LineDot) -> Cart:
        return self._with_kernel(
            self._kernel.replace(self._replica, written, lambda dot: dot.sku == written.sku)
        )

    def _held(self, sku: str) -> CartLine | None:
        dots = [dot for dot in self._kernel.entries.values() if dot.sku == sku]
        return self._line(dots) if dots else None

    def _line(self, dots: list[LineDot]) -> CartLine:
        if self._rule == "counter":
            quantity = sum(dot.quantity for dot in dots)
        else:
            quantity = max(dots, key=_lww_order).quantity
        prices = tuple(sorted({price for dot in dots for price in dot.prices}))
        return CartLine(quantity, prices)

    def _blank(self) -> Self:
        return type(self)(self._replica, rule=self._rule)

    def _config(self) -> object:
        return self._rule

    def to_wire(self) -> CartWire:
        return CartWire(self._rule, self._kernel.to_wire(self._replica))

    @classmethod
    def from_wire(cls, wire: CartWire) -> Cart:
        kernel = DotKernel.from_wire(wire.kernel, lambda dot: dot)
        made = cls(wire.kernel.replicas[0], rule=wire.rule)
        made._kernel = kernel
        stamped = wire.rule == "lww"
        if any((dot.stamp is not None) != stamped for dot in made._kernel.entries.values()):
            raise CrdtDecodeError("lww cart writes must carry a stamp, counter cart writes none")
        return made

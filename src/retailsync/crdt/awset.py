"""Add-wins observed-remove set, for wishlists and collections.

Each ``add`` stores the element under a fresh dot and drops the dots of that element it had
observed, so an element carries at most one dot per replica that added it concurrently.
``remove`` cancels only the dots it observed: an add it had not seen (a concurrent one) wins.
Removed elements leave nothing behind but their dots in the compact causal context.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, TypeVar

from retailsync.crdt.base import hashable_value
from retailsync.crdt.causal import DotKernel, KernelCrdt, KernelWire

E = TypeVar("E", bound=Hashable)


class AWSet(KernelCrdt[E]):
    """An add-wins set of hashable, msgspec-serializable elements (str, int, tuples of them)."""

    __slots__ = ()

    @property
    def value(self) -> frozenset[E]:
        return frozenset(self._kernel.entries.values())

    def add(self, element: E) -> AWSet[E]:
        """Add ``element``; return the delta."""
        return self._with_kernel(
            self._kernel.replace(self._replica, element, lambda held: held == element)
        )

    def remove(self, element: E) -> AWSet[E]:
        """Remove the observed adds of ``element``; return the delta (empty if absent)."""
        return self._with_kernel(self._kernel.remove(lambda held: held == element))

    def to_wire(self) -> KernelWire[E]:
        return self._kernel.to_wire(self._replica)

    @classmethod
    def from_wire(cls, wire: KernelWire[Any]) -> AWSet[Any]:
        kernel = DotKernel.from_wire(wire, hashable_value)
        made: AWSet[Any] = cls(wire.replicas[0])
        made._kernel = kernel
        return made

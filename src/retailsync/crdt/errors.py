"""Errors raised by ``retailsync.crdt``, all under :class:`retailsync.errors.RetailsyncError`.

    RetailsyncError
     +-- CrdtError                 base of the errors below
          +-- ClockSkewError       a remote HLC stamp is too far ahead of local physical time
          +-- InsufficientRights   a BoundedCounter replica asked for more rights than it holds
          +-- InvalidOperation     an argument an operation cannot take (names the operation)
          +-- CrdtDecodeError      bytes that are not an encoded CRDT this build can read

Every refusal is raised before anything changes: the replica is left as it was.
"""

from __future__ import annotations

from retailsync.errors import RetailsyncError


class CrdtError(RetailsyncError):
    """Base of the errors the CRDT library raises on purpose."""


class ClockSkewError(CrdtError):
    """A remote stamp is more than ``max_drift_ms`` ahead of the local physical clock."""

    def __init__(self, remote_wall_ms: int, local_wall_ms: int, max_drift_ms: int) -> None:
        self.remote_wall_ms = remote_wall_ms
        self.local_wall_ms = local_wall_ms
        self.max_drift_ms = max_drift_ms
        ahead = remote_wall_ms - local_wall_ms
        super().__init__(
            f"remote stamp at {remote_wall_ms} ms is {ahead} ms ahead of local physical time "
            f"{local_wall_ms} ms; at most {max_drift_ms} ms is accepted"
        )


class InsufficientRights(CrdtError):
    """A decrement or transfer asked for more than the replica's local rights."""

    def __init__(self, replica: str, requested: int, available: int) -> None:
        self.replica = replica
        self.requested = requested
        self.available = available
        super().__init__(
            f"replica {replica!r} asked for {requested} but holds only {available} rights"
        )


class InvalidOperation(CrdtError):
    """An operation was called with an argument it cannot take; ``operation`` names it."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"{operation}: {reason}")


class CrdtDecodeError(CrdtError):
    """The bytes are not an encoded CRDT this build can read; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot decode CRDT: {reason}")

"""The change event: one row change or logical message, as captured from the write-ahead log.

An event's ``id`` is derived from where it sits in the WAL: the commit LSN of its transaction
and its index in that transaction, both fixed once the transaction commits. Capturing the same
transaction twice (after a crash, before the slot's position advanced) yields the same ids,
which is what lets the log and every consumer drop duplicates.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Operation = Literal["insert", "update", "delete", "truncate", "message", "snapshot"]


def event_id(commit_lsn: int, index: int) -> str:
    """Sortable text id: commit LSN and index in the transaction, both zero-padded hex."""
    return f"{commit_lsn:016X}-{index:08X}"


class ChangeEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # event_id(commit_lsn, index)
    source: str  # the capture source (one slot), e.g. "retailsync"
    table: str  # "schema.table"; for a logical message, its prefix
    type: str  # the event type consumers subscribe to, e.g. "products.changed"
    op: Operation
    key: dict[str, Any] | None = None  # primary key (or configured key) columns
    before: dict[str, Any] | None = None  # old row, when the replica identity sends it
    after: dict[str, Any] | None = None  # new row; unchanged TOAST columns are left out ...
    unchanged_toast: tuple[str, ...] = ()  # ... and named here, never given a placeholder
    payload: str | None = None  # a logical message's content (text)
    xid: int
    commit_lsn: int
    commit_ts_us: int  # commit time, microseconds since the Unix epoch
    index: int  # position in the transaction, from 0
    last_in_tx: bool = False  # True on the transaction's last event: apply whole transactions


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ChangeEvent)


def encode_event(event: ChangeEvent) -> bytes:
    return _ENCODER.encode(event)


def decode_event(data: bytes) -> ChangeEvent:
    return _DECODER.decode(data)

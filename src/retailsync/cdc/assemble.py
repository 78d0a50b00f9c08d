"""From pgoutput messages to whole transactions of change events.

Row changes are held until their transaction's Commit (or, for a transaction the server
streamed while in progress, its Stream Commit; a Stream Abort discards the subtransaction's
changes), then given their ids, commit LSN and timestamp, and their index in the transaction,
and released together: a consumer sees a transaction whole, in commit order.

A non-transactional logical message is released at once as a transaction of its own. Our
heartbeats are such messages: they carry no event, but their position lets the capture
confirm progress on an idle database, so the slot never pins WAL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from retailsync.cdc import snapshot
from retailsync.cdc.events import ChangeEvent, Operation, event_id
from retailsync.cdc.pgoutput import RelationCache, Row, decode_message
from retailsync.cdc.pgoutput_types import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeMessage,
    Update,
)
from retailsync.cdc.replication import WalMessage
from retailsync.cdc.snapshot import Window, Windows
from retailsync.cdc.tables import CapturedTable

HEARTBEAT_PREFIX = "retailsync.heartbeat"


class _Change(msgspec.Struct, frozen=True):
    """A row change or message before its transaction committed (no id yet). A Struct, not
    a dataclass: one is built per change, and a frozen dataclass builds several times slower."""

    table: str
    type: str
    op: Operation
    key: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    unchanged_toast: tuple[str, ...] = ()
    payload: str | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    """A committed transaction's events. ``end_lsn``: confirm up to here once they are
    durable. A heartbeat is a transaction with no events."""

    xid: int
    commit_lsn: int
    end_lsn: int
    events: list[ChangeEvent]
    snapshot_windows: list[Window] = field(default_factory=list)  # chunks these events close


@dataclass(slots=True)
class _Open:
    xid: int
    changes: list[tuple[int, _Change]] = field(default_factory=list)  # (subxid, change)
    watermarks: list[tuple[str, str]] = field(default_factory=list)  # (prefix, chunk)


class Assembler:
    def __init__(
        self,
        source: str,
        tables: Mapping[str, CapturedTable],
        windows: Windows | None = None,
    ) -> None:
        """``windows``: snapshot chunks in flight (see ``snapshot.py``), or None."""
        self._source = source
        self._tables = tables
        self._windows = windows if windows is not None else Windows()
        self._relations = RelationCache()
        self._in_stream = False
        self._current: _Open | None = None  # the transaction between Begin and Commit
        self._streamed: dict[int, _Open] = {}  # in-progress transactions by top-level xid
        self._stream_xid = 0
        self._by_oid: dict[int, CapturedTable] = {}

    def feed(self, message: WalMessage) -> Transaction | None:
        decoded = decode_message(message.payload, protocol_version=2, in_stream=self._in_stream)
        match decoded:
            case Insert() | Update() | Delete():  # first: nearly every message is one
                self._add(decoded.xid, self._row_change(decoded))
            case Begin(xid=xid):
                self._current = _Open(xid)
            case Commit(commit_lsn=commit_lsn, end_lsn=end_lsn, commit_ts_us=ts):
                done, self._current = self._current, None
                assert done is not None, "Commit without Begin"
                return self._commit(done, commit_lsn, end_lsn, ts)
            case StreamStart(xid=xid):
                self._in_stream, self._stream_xid = True, xid
                self._streamed.setdefault(xid, _Open(xid))
            case StreamStop():
                self._in_stream = False
            case StreamCommit(xid=xid, commit_lsn=commit_lsn, end_lsn=end_lsn, commit_ts_us=ts):
                return self._commit(self._streamed.pop(xid, _Open(xid)), commit_lsn, end_lsn, ts)
            case StreamAbort(xid=xid, subxid=subxid):
                self._abort(xid, subxid)
            case Relation() | TypeMessage():
                self._relations.add(decoded)
                self._by_oid.clear()  # a table's definition (or name) may have changed
            case LogicalMessage(transactional=False, lsn=lsn):
                return self._standalone(decoded, lsn)
            case LogicalMessage(prefix=prefix) if prefix in (snapshot.LOW, snapshot.HIGH):
                # Acted on at commit, in commit order with the changes around it.
                open_tx = self._streamed[self._stream_xid] if self._in_stream else self._current
                assert open_tx is not None, "a watermark outside a transaction"
                open_tx.watermarks.append((prefix, decoded.content.decode()))
            case LogicalMessage():
                self._add(decoded.xid, _message(decoded))
            case Truncate(relation_oids=oids):
                for oid in oids:
                    table = self._table(oid)
                    self._add(decoded.xid, _Change(table.name, table.type, "truncate"))
        return None

    def _add(self, xid: int | None, change: _Change) -> None:
        if self._in_stream:
            self._streamed[self._stream_xid].changes.append((xid or self._stream_xid, change))
        else:
            assert self._current is not None, "a change outside a transaction"
            self._current.changes.append((self._current.xid, change))

    def _abort(self, xid: int, subxid: int) -> None:
        if subxid == xid:
            self._streamed.pop(xid, None)
            return
        open_tx = self._streamed.get(xid)
        if open_tx is not None:
            open_tx.changes = [(sub, c) for sub, c in open_tx.changes if sub != subxid]

    def _commit(self, done: _Open, commit_lsn: int, end_lsn: int, ts: int) -> Transaction:
        for _, change in done.changes:
            if change.key is not None:
                self._windows.changed(change.table, change.key)
        closed: list[Window] = []
        for prefix, chunk in done.watermarks:
            if prefix == snapshot.LOW:
                self._windows.low(chunk)
                continue
            window, rows = self._windows.high(chunk)
            if window is not None:
                closed.append(window)
                done.changes += [(0, self._snapshot_row(window, row)) for row in rows]
        last = len(done.changes) - 1
        events = [
            ChangeEvent(
                id=event_id(commit_lsn, index),
                source=self._source,
                table=change.table,
                type=change.type,
                op=change.op,
                key=change.key,
                before=change.before,
                after=change.after,
                unchanged_toast=change.unchanged_toast,
                payload=change.payload,
                xid=done.xid,
                commit_lsn=commit_lsn,
                commit_ts_us=ts,
                index=index,
                last_in_tx=index == last,
            )
            for index, (_, change) in enumerate(done.changes)
        ]
        return Transaction(done.xid, commit_lsn, end_lsn, events, closed)

    def _snapshot_row(self, window: Window, row: dict[str, Any]) -> _Change:
        table = self._tables.get(window.table) or CapturedTable(window.table, "snapshot")
        key = {column: row.get(column) for column in window.key_columns}
        return _Change(table.name, table.type, "snapshot", key=key, after=row)

    def _standalone(self, message: LogicalMessage, lsn: int) -> Transaction:
        if message.prefix == HEARTBEAT_PREFIX:
            return Transaction(0, lsn, lsn, [])
        standalone = _Open(0, [(0, _message(message))])
        return self._commit(standalone, lsn, lsn, 0)

    def _table(self, oid: int) -> CapturedTable:
        table = self._by_oid.get(oid)
        if table is None:
            table = self._by_oid[oid] = self._lookup(oid)
        return table

    def _lookup(self, oid: int) -> CapturedTable:
        relation = self._relations.relation(oid)
        name = f"{relation.namespace}.{relation.name}"
        table = self._tables.get(name)
        # The publication names only captured tables; anything else is a misconfiguration
        # we still pass on rather than drop.
        return table if table is not None else CapturedTable(name, f"{relation.name}.changed")

    def _row_change(self, message: Insert | Update | Delete) -> _Change:
        oid = message.relation_oid
        table = self._table(oid)
        before: Row | None = None
        after: Row | None = None
        if isinstance(message, Insert | Update):
            after = self._relations.row(oid, message.new)
        if isinstance(message, Update | Delete) and message.old is not None:
            before = self._relations.row(oid, message.old, key_only=message.old_kind == "K")
        key_names = table.key or self._relations.key_columns(oid)
        source = after if after is not None else before
        assert source is not None
        key = {name: source.values.get(name) for name in key_names}
        op: Operation = (
            "insert" if isinstance(message, Insert) else
            "update" if isinstance(message, Update) else "delete"
        )  # fmt: skip
        return _Change(
            table.name,
            table.type,
            op,
            key=key,
            before=None if before is None else before.values,
            after=None if after is None else after.values,
            unchanged_toast=() if after is None else after.unchanged_toast,
        )


def _message(message: LogicalMessage) -> _Change:
    # Domain events are text (JSON by convention); bytes that are not UTF-8 are replaced
    # visibly rather than dropped.
    payload = message.content.decode("utf-8", errors="replace")
    return _Change(message.prefix, message.prefix, "message", payload=payload)

"""Decoder for PostgreSQL's ``pgoutput`` logical replication protocol, versions 1 and 2.

Pure: bytes in, structs out (see :mod:`retailsync.cdc.pgoutput_types`), no I/O. Two parts:

- :func:`decode_message` turns one message (one CopyData payload after the ``w`` XLogData
  header, or one row of ``pg_logical_slot_peek_binary_changes``) into a struct.
- :class:`RelationCache` remembers Relation and Type messages and turns a tuple into a row
  ``{column: value}`` with Python values for the common types.

Text is decoded as UTF-8, so the database must use the UTF8 encoding (pgoutput sends values
in the database encoding, unconverted).

Row values (:meth:`RelationCache.row`), from the text format: bool; int2, int4, int8, oid ->
int; float4, float8 -> float; numeric -> Decimal; uuid -> UUID; json, jsonb -> parsed; date ->
date; timestamp -> naive datetime; timestamptz -> aware datetime with the offset the server
printed (this assumes DateStyle ISO, the default). A date or timestamp Python cannot hold
('infinity', BC, past 9999) stays text, as does every other type. Binary-format values stay
bytes. Datetimes rather than ISO strings because consumers compare and serialise them, and
msgspec writes them back as RFC 3339 anyway.

Speed matters (tens of thousands of changes a second in one process): fixed fields are read
with precompiled ``struct.Struct`` objects at offsets, so nothing is copied until a value is
built, and bounds are checked per field rather than per byte.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, Literal

import msgspec

from retailsync.cdc.pgoutput_types import (
    UNCHANGED_TOAST,
    Begin,
    ColumnValue,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    PgOutputError,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    TypeMessage,
    Unchanged,
    Update,
)

__all__ = [
    "PG_EPOCH_OFFSET_US",
    "UNCHANGED_TOAST",
    "Begin",
    "ColumnValue",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "PgOutputError",
    "Relation",
    "RelationCache",
    "RelationColumn",
    "Row",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TupleData",
    "TypeMessage",
    "Unchanged",
    "Update",
    "decode_message",
]

# The protocol counts time in microseconds from 2000-01-01 UTC; this shifts it to 1970.
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000

_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_BEGIN = struct.Struct("!QqI").unpack_from  # final LSN, commit time, xid
_COMMIT = struct.Struct("!BQQq").unpack_from  # flags, commit LSN, end LSN, commit time
_ORIGIN = struct.Struct("!Q").unpack_from
_ATTRIBUTE = struct.Struct("!Ii").unpack_from  # type oid, type modifier (signed: -1 is none)
_TRUNCATE = struct.Struct("!IB").unpack_from  # relation count, flags
_MESSAGE = struct.Struct("!BQ").unpack_from  # flags, LSN
_STREAM_START = struct.Struct("!IB").unpack_from
_STREAM_COMMIT = struct.Struct("!IBQQq").unpack_from
_STREAM_ABORT = struct.Struct("!II").unpack_from

_KIND_TEXT, _KIND_NULL, _KIND_UNCHANGED, _KIND_BINARY = b"tnub"
_TUPLE_NEW, _TUPLE_KEY, _TUPLE_OLD = b"NKO"
_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_IDENTITY = 2
_MESSAGE_TRANSACTIONAL = 1

# Below this size, slicing bytes then decoding beats a memoryview slice (no view object to
# build); above it, the memoryview saves copying a large (TOAST-sized) value twice.
_LARGE_VALUE = 4096


class _Truncated(Exception):
    """A field runs past the end of the message; reported by decode_message with its type."""


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise _Truncated
    return buf[pos:end].decode(), end + 1


def _namespace(buf: bytes, pos: int) -> tuple[str, int]:
    name, pos = _cstring(buf, pos)
    return name or "pg_catalog", pos  # the server abbreviates pg_catalog to ""


def _tuple(buf: bytes, pos: int) -> tuple[TupleData, int]:
    (count,) = _U16(buf, pos)
    pos += 2
    size = len(buf)
    u32 = _U32  # a local is cheaper than a global lookup once per column (~10% here)
    values: list[ColumnValue] = []
    append = values.append
    for _ in range(count):
        kind = buf[pos]
        if kind == _KIND_TEXT:
            (length,) = u32(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > size:
                raise _Truncated
            if length < _LARGE_VALUE:
                append(buf[start:pos].decode())
            else:
                append(str(memoryview(buf)[start:pos], "utf-8"))
        elif kind == _KIND_NULL:
            append(None)
            pos += 1
        elif kind == _KIND_UNCHANGED:
            append(UNCHANGED_TOAST)
            pos += 1
        elif kind == _KIND_BINARY:
            (length,) = u32(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > size:
                raise _Truncated
            append(buf[start:pos])
        else:
            raise PgOutputError(f"unknown tuple column kind {chr(kind)!r}")
    return tuple(values), pos


def _begin(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    final_lsn, ts, begin_xid = _BEGIN(buf, pos)
    return Begin(final_lsn, ts + PG_EPOCH_OFFSET_US, begin_xid), pos + 20


def _commit(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    flags, commit_lsn, end_lsn, ts = _COMMIT(buf, pos)
    return Commit(flags, commit_lsn, end_lsn, ts + PG_EPOCH_OFFSET_US), pos + 25


def _origin(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    (lsn,) = _ORIGIN(buf, pos)
    name, pos = _cstring(buf, pos + 8)
    return Origin(lsn, name), pos


def _relation(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    (oid,) = _U32(buf, pos)
    namespace, pos = _namespace(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    replica_identity = chr(buf[pos])
    (count,) = _U16(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = buf[pos]
        column, pos = _cstring(buf, pos + 1)
        type_oid, type_modifier = _ATTRIBUTE(buf, pos)
        pos += 8
        columns.append(RelationColumn(flags, column, type_oid, type_modifier))
    return Relation(xid, oid, namespace, name, replica_identity, tuple(columns)), pos


def _type(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    (oid,) = _U32(buf, pos)
    namespace, pos = _namespace(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    return TypeMessage(xid, oid, namespace, name), pos


def _insert(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    (oid,) = _U32(buf, pos)
    if buf[pos + 4] != _TUPLE_NEW:
        raise PgOutputError(f"Insert: expected 'N' before the tuple, got {chr(buf[pos + 4])!r}")
    new, pos = _tuple(buf, pos + 5)
    return Insert(xid, oid, new), pos


def _update(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    (oid,) = _U32(buf, pos)
    tag = buf[pos + 4]
    pos += 5
    old_kind: Literal["K", "O"] | None = None
    old = None
    if tag == _TUPLE_KEY:
        old_kind = "K"
    elif tag == _TUPLE_OLD:
        old_kind = "O"
    if old_kind is not None:
        old, pos = _tuple(buf, pos)
        tag = buf[pos]
        pos += 1
    if tag != _TUPLE_NEW:
        expected = "'N' after the old tuple" if old_kind else "'K', 'O' or 'N'"
        raise PgOutputError(f"Update: expected {expected}, got {chr(tag)!r}")
    new, pos = _tuple(buf, pos)
    return Update(xid, oid, old_kind, old, new), pos


def _delete(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    (oid,) = _U32(buf, pos)
    tag = buf[pos + 4]
    if tag != _TUPLE_KEY and tag != _TUPLE_OLD:
        raise PgOutputError(f"Delete: expected 'K' or 'O', got {chr(tag)!r}")
    old, pos = _tuple(buf, pos + 5)
    return Delete(xid, oid, "K" if tag == _TUPLE_KEY else "O", old), pos


def _truncate(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    count, flags = _TRUNCATE(buf, pos)
    pos += 5
    end = pos + 4 * count
    if end > len(buf):  # checked first so a corrupt count cannot build a huge format
        raise _Truncated
    oids = struct.unpack_from(f"!{count}I", buf, pos)
    cascade = bool(flags & _TRUNCATE_CASCADE)
    return Truncate(xid, cascade, bool(flags & _TRUNCATE_RESTART_IDENTITY), oids), end


def _message(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    flags, lsn = _MESSAGE(buf, pos)
    prefix, pos = _cstring(buf, pos + 9)
    (length,) = _U32(buf, pos)
    end = pos + 4 + length
    if end > len(buf):
        raise _Truncated
    transactional = bool(flags & _MESSAGE_TRANSACTIONAL)
    return LogicalMessage(xid, transactional, lsn, prefix, buf[pos + 4 : end]), end


def _stream_start(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    stream_xid, first_segment = _STREAM_START(buf, pos)
    return StreamStart(stream_xid, first_segment == 1), pos + 5


def _stream_stop(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    return StreamStop(), pos


def _stream_commit(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    stream_xid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT(buf, pos)
    message = StreamCommit(stream_xid, flags, commit_lsn, end_lsn, ts + PG_EPOCH_OFFSET_US)
    return message, pos + 29


def _stream_abort(buf: bytes, pos: int, xid: int | None) -> tuple[Message, int]:
    stream_xid, subxid = _STREAM_ABORT(buf, pos)
    return StreamAbort(stream_xid, subxid), pos + 8


_Reader = Callable[[bytes, int, int | None], tuple[Message, int]]

# type byte -> (name for errors, reader, carries an xid inside a stream, protocol 2 only)
_READERS: Final[dict[int, tuple[str, _Reader, bool, bool]]] = {
    ord("B"): ("Begin message", _begin, False, False),
    ord("C"): ("Commit message", _commit, False, False),
    ord("O"): ("Origin message", _origin, False, False),
    ord("R"): ("Relation message", _relation, True, False),
    ord("Y"): ("Type message", _type, True, False),
    ord("I"): ("Insert message", _insert, True, False),
    ord("U"): ("Update message", _update, True, False),
    ord("D"): ("Delete message", _delete, True, False),
    ord("T"): ("Truncate message", _truncate, True, False),
    ord("M"): ("Logical message", _message, True, False),
    ord("S"): ("Stream Start message", _stream_start, False, True),
    ord("E"): ("Stream Stop message", _stream_stop, False, True),
    ord("c"): ("Stream Commit message", _stream_commit, False, True),
    ord("A"): ("Stream Abort message", _stream_abort, False, True),
}


def decode_message(
    data: bytes | bytearray | memoryview, *, protocol_version: int, in_stream: bool
) -> Message:
    """Decode one pgoutput message.

    ``in_stream`` is True between a StreamStart and its StreamStop (protocol 2): there the
    row, relation, type, truncate and logical messages carry a leading xid. The caller tracks
    it because only the message sequence tells. Raises :class:`PgOutputError` on an empty,
    truncated or over-long message, an unknown type byte, or a streaming message under
    protocol 1.
    """
    if protocol_version != 1 and protocol_version != 2:
        raise PgOutputError(f"unsupported pgoutput protocol version {protocol_version}")
    # bytes has find() for the NUL-terminated strings; a view or bytearray is copied once.
    buf = data if type(data) is bytes else bytes(data)
    if not buf:
        raise PgOutputError("empty pgoutput message")
    entry = _READERS.get(buf[0])
    if entry is None:
        raise PgOutputError(f"unknown pgoutput message type {chr(buf[0])!r}")
    name, reader, carries_xid, streaming = entry
    if protocol_version < 2 and in_stream:
        raise PgOutputError("streamed transactions need protocol version 2, got 1")
    if protocol_version < 2 and streaming:
        raise PgOutputError(f"{name} needs protocol version 2, got 1")
    try:
        if in_stream and carries_xid:
            (xid,) = _U32(buf, 1)
            message, end = reader(buf, 5, xid)
        else:
            message, end = reader(buf, 1, None)
    except (struct.error, IndexError, _Truncated) as exc:
        raise PgOutputError(f"truncated {name} ({len(buf)} bytes)") from exc
    except UnicodeDecodeError as exc:
        raise PgOutputError(f"{name}: text is not UTF-8 ({exc.reason})") from exc
    if end != len(buf):
        raise PgOutputError(f"{name} has {len(buf) - end} bytes past its end")
    return message


# --- rows -------------------------------------------------------------------------------


class Row(msgspec.Struct, frozen=True):
    """A tuple as Python values by column name. Unchanged TOAST columns are left out of
    ``values`` and named in ``unchanged_toast``: the server did not send them."""

    values: dict[str, Any]
    unchanged_toast: tuple[str, ...] = ()


_Converter = Callable[[str], Any]

_BOOLS: Final = {"t": True, "f": False}


def _bool(text: str) -> bool:
    return _BOOLS[text]


def _timestamp(text: str) -> datetime | str:
    """ISO text (the server's default DateStyle) to a datetime: aware, with the offset the
    server printed, for timestamptz; naive for timestamp. 'infinity', '-infinity', BC and
    past-9999 values have no datetime and stay as the server's text."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        if _beyond_python(text):
            return text
        raise


def _date(text: str) -> date | str:
    """As :func:`_timestamp`, for date."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        if _beyond_python(text):
            return text
        raise


def _beyond_python(text: str) -> bool:
    return text.endswith(("infinity", " BC")) or text.find("-") > 4


# Built-in types converted from the text format: oid -> (type name, converter); any other
# type stays text. The name finds the converter for a domain, which a Type message names by
# its base type. text, varchar, bpchar (padding kept) and name are already str.
_BUILTINS: Final[dict[int, tuple[str, _Converter]]] = {
    16: ("bool", _bool),
    20: ("int8", int),
    21: ("int2", int),
    23: ("int4", int),
    26: ("oid", int),
    700: ("float4", float),  # float() reads 'NaN', 'Infinity', '-Infinity' as the server writes
    701: ("float8", float),
    1700: ("numeric", Decimal),  # exact; 'NaN' and 'Infinity' included
    2950: ("uuid", uuid.UUID),
    114: ("json", msgspec.json.decode),
    3802: ("jsonb", msgspec.json.decode),
    1082: ("date", _date),
    1114: ("timestamp", _timestamp),
    1184: ("timestamptz", _timestamp),
}
_BY_OID: Final = {oid: convert for oid, (_, convert) in _BUILTINS.items()}
_BY_NAME: Final = dict(_BUILTINS.values())


class _Entry:
    __slots__ = ("columns", "key_columns", "key_flags", "relation")

    def __init__(self, relation: Relation, converters: Iterable[_Converter | None]) -> None:
        self.relation = relation
        self.columns = tuple(zip((c.name for c in relation.columns), converters, strict=True))
        self.key_flags = tuple(c.is_key for c in relation.columns)
        self.key_columns = tuple(c.name for c in relation.columns if c.is_key)


class RelationCache:
    """What a consumer must remember between messages: each Relation by oid, and the Type
    messages that say which user types (domains) are built-in types underneath.

    Feed it every Relation and TypeMessage (:meth:`add`) before converting tuples of that
    relation; pgoutput sends a type's message before the relation that uses it, and a new
    Relation whenever the table's definition changes, which replaces the old one here.
    """

    def __init__(self) -> None:
        self._relations: dict[int, _Entry] = {}
        self._type_converters: dict[int, _Converter] = {}

    def add(self, message: Relation | TypeMessage) -> None:
        if isinstance(message, TypeMessage):
            convert = _BY_NAME.get(message.name) if message.namespace == "pg_catalog" else None
            if convert is None:
                self._type_converters.pop(message.oid, None)
            else:
                self._type_converters[message.oid] = convert
            return
        converters = (self._converter(c.type_oid) for c in message.columns)
        self._relations[message.oid] = _Entry(message, converters)

    def _converter(self, type_oid: int) -> _Converter | None:
        return _BY_OID.get(type_oid) or self._type_converters.get(type_oid)

    def relation(self, oid: int) -> Relation:
        return self._entry(oid).relation

    def key_columns(self, oid: int) -> tuple[str, ...]:
        """Names of the replica identity columns (flag bit 1), in table order. With REPLICA
        IDENTITY FULL that is every column; with NOTHING, none."""
        return self._entry(oid).key_columns

    def row(self, oid: int, data: TupleData, *, key_only: bool = False) -> Row:
        """Convert a tuple of relation ``oid``. Text values of the types in ``_BUILTINS``
        become Python values (datetimes as :func:`_timestamp` says); other text stays str,
        and binary-format values stay bytes, as their meaning depends on the type's send
        function. ``key_only`` keeps only the key columns: use it for an old tuple of kind
        'K', where the other columns are NULL placeholders, not values."""
        entry = self._entry(oid)
        if len(data) != len(entry.columns):
            raise PgOutputError(
                f"tuple has {len(data)} columns but relation {entry.relation.namespace}."
                f"{entry.relation.name} has {len(entry.columns)}"
            )
        values: dict[str, Any] = {}
        unchanged: list[str] = []
        name = ""
        value: ColumnValue = None
        try:
            for (name, convert), value, is_key in zip(
                entry.columns, data, entry.key_flags, strict=True
            ):
                if key_only and not is_key:
                    continue
                if type(value) is str:
                    values[name] = value if convert is None else convert(value)
                elif value is UNCHANGED_TOAST:
                    unchanged.append(name)
                else:
                    values[name] = value
        except (ValueError, KeyError, ArithmeticError, msgspec.DecodeError) as exc:
            raise PgOutputError(
                f"column {name} of {entry.relation.name}: cannot convert {value!r}: {exc}"
            ) from exc
        return Row(values, tuple(unchanged))

    def _entry(self, oid: int) -> _Entry:
        try:
            return self._relations[oid]
        except KeyError:
            raise PgOutputError(f"no Relation message seen for relation oid {oid}") from None

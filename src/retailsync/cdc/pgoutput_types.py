"""The messages of PostgreSQL's ``pgoutput`` logical replication protocol, versions 1 and 2.

One frozen struct per message type, as :func:`retailsync.cdc.pgoutput.decode_message` returns
them. Field conventions:

- LSNs are unsigned ints (``0/16B3748`` is ``0x16B3748``).
- Timestamps (``*_ts_us``) are microseconds since the Unix epoch: the protocol counts from
  2000-01-01 and the decoder shifts them so they compare with everything else in the package.
- ``xid`` on row, relation, type, truncate and logical messages is the (sub)transaction id
  that protocol 2 sends inside a stream block, and ``None`` everywhere else.
- A tuple is one entry per column, by type: ``str`` (text format, 't'), ``bytes`` (binary
  format, 'b'), ``None`` (SQL NULL, 'n') or :data:`UNCHANGED_TOAST` ('u': an out-of-line value
  the change did not touch; the server does not send it, so it must never be read as a value).
"""

from __future__ import annotations

import enum
from typing import Final, Literal, TypeAlias

import msgspec

from retailsync.errors import RetailsyncError


class PgOutputError(RetailsyncError):
    """Bytes that are not a well-formed pgoutput message, or a tuple that does not fit the
    relation it names. The message says which message type and what was wrong."""


class Unchanged(enum.Enum):
    """Type of :data:`UNCHANGED_TOAST`; an enum so the marker is a typed singleton that
    survives pickling and can never be mistaken for a column value (it is not a str)."""

    TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = Unchanged.TOAST

ColumnValue: TypeAlias = str | bytes | Literal[Unchanged.TOAST] | None
TupleData: TypeAlias = tuple[ColumnValue, ...]

# Structs rather than dataclasses: a frozen dataclass assigns each field through
# object.__setattr__, several times slower to build, and the decoder builds one per change.


class Begin(msgspec.Struct, frozen=True):
    final_lsn: int  # LSN of the transaction's commit record
    commit_ts_us: int
    xid: int


class Commit(msgspec.Struct, frozen=True):
    flags: int  # unused by the server so far; kept so nothing it sends is dropped
    commit_lsn: int
    end_lsn: int  # end of the commit record: where a consumer confirms up to
    commit_ts_us: int


class Origin(msgspec.Struct, frozen=True):
    """Sent after Begin when the transaction came from a replication origin."""

    lsn: int  # the commit LSN on the origin server
    name: str


class RelationColumn(msgspec.Struct, frozen=True):
    flags: int  # bit 1: part of the replica identity (the key)
    name: str
    type_oid: int
    type_modifier: int  # atttypmod: -1 for none, else type-specific (varchar length + 4...)

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


class Relation(msgspec.Struct, frozen=True):
    """Describes a table before the first change to it (and again after it changes)."""

    xid: int | None
    oid: int
    namespace: str  # the server sends "" for pg_catalog; decoded as "pg_catalog"
    name: str
    replica_identity: str  # 'd' default (primary key), 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


class TypeMessage(msgspec.Struct, frozen=True):
    """Names a non-built-in column type. For a domain, ``oid`` is the domain's and the name
    is its base type's."""

    xid: int | None
    oid: int
    namespace: str  # "" on the wire for pg_catalog, decoded as "pg_catalog"
    name: str


class Insert(msgspec.Struct, frozen=True):
    xid: int | None
    relation_oid: int
    new: TupleData


class Update(msgspec.Struct, frozen=True):
    """``old_kind`` 'K': ``old`` holds the replica identity columns (the others NULL), sent
    when the key changed; 'O': the whole old row (REPLICA IDENTITY FULL); None: no old row
    was sent."""

    xid: int | None
    relation_oid: int
    old_kind: Literal["K", "O"] | None
    old: TupleData | None
    new: TupleData


class Delete(msgspec.Struct, frozen=True):
    xid: int | None
    relation_oid: int
    old_kind: Literal["K", "O"]  # as in Update
    old: TupleData


class Truncate(msgspec.Struct, frozen=True):
    xid: int | None
    cascade: bool
    restart_identity: bool
    relation_oids: tuple[int, ...]


class LogicalMessage(msgspec.Struct, frozen=True):
    """From ``pg_logical_emit_message``. A non-transactional one arrives at once, outside any
    Begin/Commit, even if its transaction later rolls back."""

    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


class StreamStart(msgspec.Struct, frozen=True):
    """Protocol 2: the messages up to StreamStop belong to in-progress transaction ``xid``."""

    xid: int
    first_segment: bool


class StreamStop(msgspec.Struct, frozen=True):
    pass


class StreamCommit(msgspec.Struct, frozen=True):
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


class StreamAbort(msgspec.Struct, frozen=True):
    """Discard what was streamed for ``subxid``; ``subxid == xid`` aborts the whole
    transaction."""

    xid: int
    subxid: int


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMessage
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)

"""Refusals raised inside our SQL functions, turned back into the domain's errors.

A function that refuses (migration 0013) raises one of our own SQLSTATEs, with the Python
error's two arguments as the exception's message and detail. asyncpg knows none of these codes
and raises ``UnknownPostgresError``; ``sql_refusals`` maps it, and lets any other error pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import asyncpg

from retailsync.errors import CartNotOpen, DomainError, NotFound, Refused

_ERRORS: dict[str, Callable[[str, str], DomainError]] = {
    "RSNF0": NotFound,
    "RSREF": Refused,
    "RSCNO": CartNotOpen,
}


@contextmanager
def sql_refusals() -> Iterator[None]:
    try:
        yield
    except asyncpg.PostgresError as exc:
        error = _ERRORS.get(exc.sqlstate or "")
        if error is None:
            raise
        raise error(exc.message, exc.detail or "") from None

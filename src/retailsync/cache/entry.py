"""A cached value and the version of the source it was made from.

Every entry carries its source's version (a row's ``version``, which only grows, or for a
value derived from many rows the commit LSN of the last change it reflects). Both tiers keep,
per key, the highest version known to exist (the *floor*), even after the value itself is
gone. The rules, the same in L1 and in L2:

- a value is stored only if its version is at least the floor and the value held (an equal
  version replaces it: a refresh after the TTL, of the same source state);
- an invalidation at version v raises the floor to v and drops a value older than v, and
  does nothing if the floor was already v or more (a replayed or late invalidation).

So a write of an older version, a reordered invalidation, or a slow reader putting back what
it read before a change can never take a cache back in time; and once the source's new
version is read, it may be cached again.
"""

from __future__ import annotations

import msgspec


class Entry(msgspec.Struct, frozen=True):
    value: bytes  # the encoded document, as the API sends it
    version: int  # of the source; compared, never interpreted
    expires_at: float  # time.time() after which the entry is stale
    tag: str = ""  # the document's entity tag (from its rows' versions), for ETag headers
    cost_s: float = 0.0  # how long the load took: the early-refresh rule weighs it


def admits(version: int, floor: int | None, held: int | None) -> bool:
    """Whether a value of ``version`` may be stored, given the key's floor and the version of
    the value it holds (None: none)."""
    return (floor is None or version >= floor) and (held is None or version >= held)

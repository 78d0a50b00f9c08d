"""How fast a log takes appends: events per second for a given batch size."""

from __future__ import annotations

import secrets
import time

from retailsync.cdc.events import ChangeEvent, event_id
from retailsync.eventlog.base import EventLog


def _event(commit_lsn: int, index: int, last: bool) -> ChangeEvent:
    """A product update of typical size (a row of a few columns, before and after)."""
    sku = f"SKU-{commit_lsn % 100_000:05d}-{index:04d}"
    row = {"sku": sku, "title": f"Product {sku}", "category": "shoes/running", "version": 2}
    return ChangeEvent(
        id=event_id(commit_lsn, index),
        source="bench",
        table="public.products",
        type="products.changed",
        op="update",
        key={"sku": sku},
        before={**row, "version": 1},
        after=row,
        xid=commit_lsn & 0xFFFF_FFFF,
        commit_lsn=commit_lsn,
        commit_ts_us=time.time_ns() // 1000,
        index=index,
        last_in_tx=last,
    )


async def append_throughput(log: EventLog, events: int, batch: int) -> float:
    """Append ``events`` new events in batches of ``batch``; return events per second.

    Each batch is one transaction's events. The ids start at a random LSN, so a second run
    against the same log measures appends, not dropped duplicates. Building the events is
    left out of the timing.
    """
    base_lsn = secrets.randbits(48) << 8
    batches = []
    for start in range(0, events, batch):
        size = min(batch, events - start)
        batches.append([_event(base_lsn + start, i, i == size - 1) for i in range(size)])
    started = time.perf_counter()
    for chunk in batches:
        await log.append(chunk)
    return events / (time.perf_counter() - started)

"""Escrow: stock split into allotments, each promised by one lane of one process alone.

A lane (a group committer of its own, owner ``<engine>/<n>``) takes an allotment of a sku at a
location from the stock row (``reserved`` grows by it), then writes holds against that
allotment without touching the stock row: lanes never wait for each other, in one process or
across many. Every hold is still durably recorded before its answer, and the database keeps
``free >= 0`` on each allotment, so a lane can never promise what it was not given.

- **Refill**: a lane short of units takes a chunk sized to recent demand, at most a quarter
  of what is available above the low-stock threshold. Stock below the threshold is never
  allotted: the last units are sold from the row itself, by group commit, where every process
  sees them; when a refill finds the row that low, every lane of the process gives its
  allotment of the sku back at once, and a hold the row refuses while a lane still has units
  is tried again after they are given back. Another process's lanes give theirs back within
  ``REBALANCE_SECONDS``: until then a sold-out answer may come early by what they hold.
- **Rebalance**: every second, allotments of skus now below the threshold, or idle for
  ``IDLE_SECONDS``, are given back to the row.
- **Leases**: a lane renews its allotments' lease; a process that dies leaves them to expire,
  and any other process's reclaim chore gives their free units back (``reclaim_expired``).

The in-process count of each lane's free units is only a routing hint: the database decides.
When it says an allotment is missing or short, the hold takes the direct path instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from retailsync.chores import every
from retailsync.db.database import Connection, Database
from retailsync.errors import DatabaseUnavailable
from retailsync.inventory import metrics
from retailsync.inventory.batched import GroupCommitter, NotCovered
from retailsync.inventory.ledger import lock_stock_rows
from retailsync.inventory.model import Hold, HoldRequest, StrategyName

log = logging.getLogger(__name__)

Place = tuple[str, str]  # (sku, location)
MIN_CHUNK = 16
LOW_MEMORY_S = 1.0  # how long a place found low goes straight to the row
ALLOT_SHARE = 4  # a refill takes at most a quarter of the units above the floor
DEMAND_HORIZON_S = 0.5  # a refill covers about this much of the recent demand
IDLE_SECONDS = 5.0
REBALANCE_SECONDS = 1.0


@dataclass(slots=True)
class Lane:
    owner: str
    committer: GroupCommitter
    free: dict[Place, int] = field(default_factory=dict)
    last_use: dict[Place, float] = field(default_factory=dict)
    refilling: dict[Place, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))

    def covers(self, request: HoldRequest) -> bool:
        return all(
            self.free.get(p, 0) >= line.quantity
            for p, line in zip(request.places, request.lines, strict=True)
        )

    def take(self, request: HoldRequest) -> None:
        now = time.monotonic()
        for place, line in zip(request.places, request.lines, strict=True):
            self.free[place] = self.free.get(place, 0) - line.quantity
            self.last_use[place] = now

    def put_back(self, request: HoldRequest) -> None:
        """Undo ``take`` (the request took nothing: a replay, a refusal)."""
        for place, line in zip(request.places, request.lines, strict=True):
            self.free[place] = self.free.get(place, 0) + line.quantity


async def allot(
    conn: Connection,
    owner: str,
    place: Place,
    *,
    need: int,
    wanted: int,
    floor: int,
    lease_s: float,
) -> tuple[int, int | None]:
    """Move up to ``wanted`` units (at least ``need``, never below ``floor`` left in the row)
    into ``owner``'s allotment; return (units moved, units left available in the row; None
    when the row does not exist)."""
    sku, location = place
    available = await conn.fetchval(
        "SELECT on_hand - reserved FROM stock WHERE sku = $1 AND location = $2 FOR NO KEY UPDATE",
        sku,
        location,
    )
    if available is None:
        return 0, None
    above = available - floor
    grant = min(wanted, max(need, above // ALLOT_SHARE))
    if grant < need or grant > above:
        return 0, available
    await conn.execute(
        "UPDATE stock SET reserved = reserved + $3 WHERE sku = $1 AND location = $2",
        sku,
        location,
        grant,
    )
    await conn.execute(
        "INSERT INTO escrow_allotments (owner, sku, location, free, lease_until) "
        "VALUES ($1, $2, $3, $4, clock_timestamp() + $5 * interval '1 second') "
        "ON CONFLICT (owner, sku, location) DO UPDATE "
        "SET free = escrow_allotments.free + EXCLUDED.free, lease_until = EXCLUDED.lease_until",
        owner,
        sku,
        location,
        grant,
        lease_s,
    )
    metrics.ESCROW_UNITS.labels("allotted").inc(grant)
    return grant, available - grant


async def give_back(conn: Connection, owners: Sequence[str], places: Sequence[Place]) -> int:
    """Return the free units of these owners' allotments of these places to the stock rows
    and close the allotments; return the units returned."""
    skus = [sku for sku, _ in places]
    locations = [location for _, location in places]
    await lock_stock_rows(conn, skus, locations)
    # Allotment rows next, in (sku, location, owner) order: a lane's batch locks its own in
    # (sku, location) order, so the two can never wait on each other in a circle.
    await conn.execute(
        "SELECT 1 FROM escrow_allotments a JOIN unnest($2::text[], $3::text[]) AS x(sku, location) "
        "ON a.sku = x.sku AND a.location = x.location WHERE a.owner = ANY($1) "
        "ORDER BY a.sku, a.location, a.owner FOR NO KEY UPDATE OF a",
        list(owners),
        skus,
        locations,
    )
    returned = await conn.fetch(
        "DELETE FROM escrow_allotments a USING unnest($2::text[], $3::text[]) AS x(sku, location) "
        "WHERE a.owner = ANY($1) AND a.sku = x.sku AND a.location = x.location "
        "RETURNING a.sku, a.location, a.free",
        list(owners),
        skus,
        locations,
    )
    if returned:
        await conn.execute(
            "UPDATE stock s SET reserved = s.reserved - d.free "
            "FROM (SELECT sku, location, sum(free) AS free "
            "      FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(sku, location, free) "
            "      GROUP BY 1, 2) AS d "
            "WHERE s.sku = d.sku AND s.location = d.location",
            [row["sku"] for row in returned],
            [row["location"] for row in returned],
            [row["free"] for row in returned],
        )
    return sum(row["free"] for row in returned)


async def reclaim_expired(db: Database) -> int:
    """Give back the allotments whose lease ran out (their process died); return units."""
    stale = await db.fetch(
        "SELECT owner, sku, location FROM escrow_allotments "
        "WHERE lease_until < statement_timestamp()"
    )
    total = 0
    for row in stale:
        async with db.transaction() as conn:
            await lock_stock_rows(conn, [row["sku"]], [row["location"]])
            still = await conn.fetchval(
                "SELECT lease_until < clock_timestamp() FROM escrow_allotments "
                "WHERE owner = $1 AND sku = $2 AND location = $3 FOR UPDATE",
                row["owner"],
                row["sku"],
                row["location"],
            )
            if still:
                total += await give_back(conn, [row["owner"]], [(row["sku"], row["location"])])
    if total:
        log.warning("took back %d units from escrow allotments whose lease ran out", total)
        metrics.ESCROW_UNITS.labels("reclaimed").inc(total)
    return total


class Escrow:
    def __init__(
        self,
        db: Database,
        *,
        engine_id: str,
        lanes: int,
        lease_seconds: float,
        fallback: Callable[[HoldRequest, Sequence[int | None]], Awaitable[Hold]],
        floor_of: Callable[[str], int],
        demand_of: Callable[[str], float],
        max_batch: int = 512,
    ) -> None:
        """``floor_of(sku)``: units never allotted (the low-stock threshold);
        ``demand_of(sku)``: its recent units requested per second."""
        self._db = db
        self._lease_s = lease_seconds
        self._fallback = fallback
        self._floor_of = floor_of
        self._demand_of = demand_of
        self._lanes = [
            Lane(
                f"{engine_id}/{n}",
                GroupCommitter(
                    db,
                    strategy=StrategyName.ESCROW,
                    owner=f"{engine_id}/{n}",
                    lanes=1,
                    max_batch=max_batch,
                ),
            )
            for n in range(lanes)
        ]
        self._turn = 0
        self.low: dict[Place, float] = {}  # places found below the floor, and when
        self._chores = [
            asyncio.create_task(every(lease_seconds / 3, "escrow lease renewal", self._renew)),
            asyncio.create_task(every(REBALANCE_SECONDS, "escrow rebalance", self._rebalance)),
        ]

    @property
    def owners(self) -> list[str]:
        return [lane.owner for lane in self._lanes]

    async def hold(self, request: HoldRequest, limits: Sequence[int | None]) -> Hold:
        lane = self._lanes[self._turn % len(self._lanes)]
        self._turn += 1
        now = time.monotonic()
        if any(now - self.low.get(place, -1e9) < LOW_MEMORY_S for place in request.places):
            return await self._fallback(request, limits)  # found low a moment ago: the row
        if not lane.covers(request):
            await self._refill(lane, request)
        if lane.covers(request):
            lane.take(request)
            try:
                hold = await lane.committer.submit(request, limits)
            except NotCovered:
                await self._resync(lane, request.places)  # the database knows better
            except BaseException:
                lane.put_back(request)
                raise
            else:
                if hold.replayed:
                    lane.put_back(request)
                return hold
        return await self._fallback(request, limits)

    def may_hold(self, places: Sequence[Place]) -> bool:
        """Whether a lane of this process may have free units of any of ``places``, by the
        lanes' own counts (hints: ``stranded`` asks the database)."""
        return any(lane.free.get(place, 0) > 0 for lane in self._lanes for place in places)

    def busy_skus(self) -> set[str]:
        """Skus a lane of this process may have free units of (by the lanes' counts), or
        found low a moment ago: their holds take the engine's way (``may_hold``, the row)."""
        now = time.monotonic()
        self.low = {place: at for place, at in self.low.items() if now - at < LOW_MEMORY_S}
        busy = {sku for sku, _ in self.low}
        busy.update(sku for lane in self._lanes for (sku, _), free in lane.free.items() if free > 0)
        return busy

    async def stranded(self, places: Sequence[Place]) -> list[Place]:
        """Those of ``places`` that this process's lanes still have free units of, as the
        database says (the lanes' own counts are only hints)."""
        rows = await self._db.fetch(
            "SELECT DISTINCT a.sku, a.location FROM escrow_allotments a "
            "JOIN unnest($2::text[], $3::text[]) AS x(sku, location) "
            "ON a.sku = x.sku AND a.location = x.location WHERE a.owner = ANY($1) AND a.free > 0",
            self.owners,
            [sku for sku, _ in places],
            [location for _, location in places],
        )
        return [(row["sku"], row["location"]) for row in rows]

    async def _resync(self, lane: Lane, places: Sequence[Place]) -> None:
        """Set a lane's counts of ``places`` to what its allotments hold in the database."""
        rows = await self._db.fetch(
            "SELECT sku, location, free FROM escrow_allotments "
            "WHERE owner = $1 "
            "AND (sku, location) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            lane.owner,
            [sku for sku, _ in places],
            [location for _, location in places],
        )
        found = {(row["sku"], row["location"]): row["free"] for row in rows}
        for place in places:
            lane.free[place] = found.get(place, 0)

    async def _refill(self, lane: Lane, request: HoldRequest) -> None:
        for place, line in zip(request.places, request.lines, strict=True):
            async with lane.refilling[place]:
                short = line.quantity - lane.free.get(place, 0)
                if short <= 0:
                    continue
                sku = place[0]
                wanted = max(
                    short,
                    MIN_CHUNK,
                    int(self._demand_of(sku) * DEMAND_HORIZON_S / len(self._lanes)),
                )
                try:
                    async with self._db.transaction() as conn:
                        granted, left = await allot(
                            conn, lane.owner, place, need=short,
                            wanted=wanted, floor=self._floor_of(sku), lease_s=self._lease_s,
                        )  # fmt: skip
                except DatabaseUnavailable:
                    return  # the direct path reports it
                if granted:
                    lane.free[place] = lane.free.get(place, 0) + granted
                elif left is not None:
                    # Low: the last units are sold from the row, so bring every lane's back.
                    self.low[place] = time.monotonic()
                    with contextlib.suppress(DatabaseUnavailable):
                        if await self.stranded([place]):
                            await self.give_back_places([place])
                    return

    async def give_back_places(self, places: Sequence[Place]) -> None:
        """Return every lane's allotments of these places (the sku went low or cold)."""
        async with self._db.transaction() as conn:
            returned = await give_back(conn, self.owners, places)
        for lane in self._lanes:  # only once the database has them back
            for place in places:
                lane.free[place] = 0
        if returned:
            metrics.ESCROW_UNITS.labels("returned").inc(returned)

    async def close(self) -> None:
        for chore in self._chores:
            chore.cancel()
        for chore in self._chores:
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        for lane in self._lanes:
            await lane.committer.close()
        places = {place for lane in self._lanes for place in lane.free}
        if places:
            with contextlib.suppress(DatabaseUnavailable):  # then the leases run out instead
                await self.give_back_places(sorted(places))

    async def _renew(self) -> None:
        # Locked in (sku, location, owner) order first, as give_back does (see there).
        await self._db.execute(
            "WITH mine AS (SELECT ctid FROM escrow_allotments WHERE owner = ANY($1) "
            "  ORDER BY sku, location, owner FOR NO KEY UPDATE) "
            "UPDATE escrow_allotments "
            "SET lease_until = clock_timestamp() + $2 * interval '1 second' "
            "WHERE ctid IN (SELECT ctid FROM mine)",
            self.owners,
            self._lease_s,
        )

    async def _rebalance(self) -> None:
        """Give back allotments of places now low on stock, or idle (as the database has
        them, whatever the lanes' counts say)."""
        now = time.monotonic()
        mine = await self._db.fetch(
            "SELECT DISTINCT sku, location FROM escrow_allotments WHERE owner = ANY($1)",
            self.owners,
        )
        held = {(row["sku"], row["location"]) for row in mine}
        if not held:
            return
        rows = await self._db.fetch(
            "SELECT sku, location, on_hand - reserved AS available FROM stock "
            "WHERE (sku, location) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            [sku for sku, _ in held],
            [location for _, location in held],
        )
        below = {
            (r["sku"], r["location"]) for r in rows if r["available"] < self._floor_of(r["sku"])
        }
        idle = {
            place
            for place in held
            if all(now - lane.last_use.get(place, 0.0) > IDLE_SECONDS for lane in self._lanes)
        }
        for place in below:
            self.low[place] = now
        if below | idle:
            await self.give_back_places(sorted(below | idle))

"""Holds under faults, against real servers: kill -9 of `retailsync serve` in the middle of a
hold load on one hot sku (escrow included), and a PostgreSQL restart under load.

What must hold whatever dies when: an acknowledged hold (201) is in the database; a request
whose answer was lost, retried with the same Idempotency-Key and body, gets its original hold
back (replayed) or, if it never committed, a new one, and never a second hold for the key; no
unit leaks or is counted twice (the inventory check, and reserved = open hold lines); escrow
units of a dead process stay reserved until its lease runs out, then come back to the row;
and the workers of a multi-worker `retailsync serve` killed with kill -9 stop with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from retailsync.api.app import create_app
from retailsync.config import ServerTarget, load_settings
from retailsync.db.database import Database
from retailsync.db.embedded import EmbeddedPostgres
from retailsync.db.migrate import migrate
from retailsync.inventory.check import check_inventory
from retailsync.models import Channel
from retailsync.services.keys import create_key
from tests.inventory.conftest import stocked
from tests.processes import RETAILSYNC, Serve, serve_env, wait_for

pytestmark = pytest.mark.slow  # every test here starts servers of its own

LEASE_SECONDS = 2
# Low enough that a handful of shoppers make HOT hot: the auto strategy then takes escrow.
ESCROW_SETTINGS = {
    "RETAILSYNC_ESCROW_LEASE_SECONDS": str(LEASE_SECONDS),
    "RETAILSYNC_HOT_SKU_RPS": "5",
    "RETAILSYNC_LOG_LEVEL": "warning",
}
SHOPPERS = 8
LAST_UNITS = 40  # of LAST, at each location: it sells out under the PostgreSQL restart load
TTL_MS = 10 * 60 * 1000  # nothing expires during a test: every hold stays open


# --- processes ---------------------------------------------------------------------------


def _proc_state(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state[1] not in ("Z", "X")  # a zombie has finished


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (state := _proc_state(int(entry.name))) is not None:
            children.setdefault(state[0], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class TunedServe(Serve):
    """`Serve` with RETAILSYNC_* settings in the child's environment, and a crash."""

    def __init__(self, db_url: str, *, workers: int = 1, settings: dict[str, str]) -> None:
        super().__init__(db_url, workers=workers)
        self.settings = settings
        self.tree: list[int] = []

    def __enter__(self) -> TunedServe:
        args = ["--db-url", self.db_url, "serve", "--port", str(self.port)]
        args += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(
            [*RETAILSYNC, *args],
            env={**serve_env(), **self.settings},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        if not wait_for(self._healthy, timeout=60) or self.process.poll() is not None:
            self.kill()
            raise AssertionError(f"serve did not start: {self.stderr()}")
        pid = self.process.pid

        def workers_up() -> bool:  # its worker processes (read now: a scan of /proc takes ms)
            self.tree = descendants(pid)
            spawned = [p for p in self.tree if b"spawn_main" in _cmdline(p)]
            return self.workers == 1 or len(spawned) >= self.workers

        assert wait_for(workers_up, timeout=30), self.stderr()
        return self

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def answers(self) -> bool:
        try:
            with httpx.Client(timeout=1) as client:
                return client.get(f"{self.base_url}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def crash(self) -> None:
        """SIGKILL the whole service at once, supervisor and worker processes (a machine or
        container dying): nothing gets to clean up."""
        assert self.process is not None
        tree = [pid for pid in self.tree if _alive(pid)]
        for pid in tree:  # the workers first: they are the ones answering
            os.kill(pid, signal.SIGKILL)
        self.process.kill()
        self.process.wait(10)
        assert wait_for(lambda: not any(_alive(pid) for pid in tree), timeout=10)
        assert not self.answers(), "something still serves the killed service's port"


# --- load --------------------------------------------------------------------------------


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def crash_when(
    server: TunedServe,
    shoppers: list[asyncio.Task[None]],
    condition: Callable[[], Awaitable[bool]],
    what: str,
) -> None:
    """kill -9 the service once ``condition`` holds under the shoppers' load (none of them
    may have stopped before), then let each end on the request the dead server never
    answered."""

    async def ready() -> bool:
        if any(task.done() for task in shoppers):
            raise AssertionError(f"a shopper stopped early: {server.stderr()}")
        return await condition()

    try:
        await until(ready, what)
        server.crash()
        await asyncio.wait_for(asyncio.gather(*shoppers), 15)
    finally:
        for task in shoppers:
            task.cancel()


def hold_body(shopper: int, serial: int, *, mixed: bool = False) -> dict[str, Any]:
    """One unit of HOT at eu-dc1; ``mixed``: every third hold also takes 2 HOT at eu-store1,
    every third 1 LAST there (a sku that sells out, refusing the whole hold)."""
    lines = [{"sku": "HOT", "location": "eu-dc1", "quantity": 1}]
    if mixed and serial % 3 == 1:
        lines.append({"sku": "HOT", "location": "eu-store1", "quantity": 2})
    if mixed and serial % 3 == 2:
        lines.append({"sku": "LAST", "location": "eu-store1", "quantity": 1})
    return {"lines": lines, "ttl_ms": TTL_MS, "customer_id": f"shopper-{shopper}"}


@dataclass
class Ledger:
    """What the clients saw, key by key."""

    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)  # key -> hold id answered with 201
    in_flight: set[str] = field(default_factory=set)  # sent, no answer (the server died)
    unavailable: set[str] = field(default_factory=set)  # answered 503
    refused: set[str] = field(default_factory=set)  # answered 409 insufficient-stock
    unexpected: list[str] = field(default_factory=list)

    def answered(self, key: str, response: httpx.Response) -> None:
        status = response.status_code
        if status == 201:
            if response.headers.get("idempotent-replayed") == "true":
                self.unexpected.append(f"{key}: a fresh key answered as a replay")
            self.acked[key] = response.json()["id"]
        elif status == 503 and _problem(response) == "unavailable":
            self.unavailable.add(key)
        elif status == 409 and _problem(response) == "insufficient-stock":
            short = {(s["sku"], s["location"]) for s in response.json()["shortages"]}
            if short != {("LAST", "eu-store1")}:  # only LAST can run out
                self.unexpected.append(f"{key}: 409 for {short}")
            self.refused.add(key)
        else:
            self.unexpected.append(f"{key}: {status} {response.text[:300]}")


def _problem(response: httpx.Response) -> str:
    try:
        kind = response.json().get("type", "")
    except ValueError:
        return ""
    return str(kind).removeprefix("urn:retailsync:problem:")


async def post_hold(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/reservations", json=body, headers={"Idempotency-Key": key})


async def post_hold_when_up(
    client: httpx.AsyncClient, key: str, body: dict[str, Any]
) -> httpx.Response:
    """As a client does after an outage: a 503 is tried again after its Retry-After (the
    database's breaker may still be open a moment after the restart), for up to 10 s."""
    for _ in range(10):
        response = await post_hold(client, key, body)
        if response.status_code != 503:
            break
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    return response


async def shopper_over_http(
    n: int, base_url: str, secret: str, ledger: Ledger, stop: asyncio.Event | None = None
) -> None:
    """Holds back to back, each under a fresh key, until the server goes away (or ``stop``).
    The key it had no answer for when the server went away is noted as in flight."""
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
        serial = 0
        while stop is None or not stop.is_set():
            key = f"s{n}-{uuid.uuid4().hex}"
            ledger.bodies[key] = body = hold_body(n, serial)
            serial += 1
            try:
                response = await post_hold(client, key, body)
            except httpx.TransportError:
                ledger.in_flight.add(key)  # sent (or about to be) when the process died
                return
            ledger.answered(key, response)


# --- the database ------------------------------------------------------------------------


async def holds_of(db: Database, scope: str) -> dict[str, asyncpg.Record]:
    rows = await db.fetch(
        "SELECT idempotency_key, id::text AS id, state, strategy FROM holds WHERE key_scope = $1",
        scope,
    )
    return {row["idempotency_key"]: row for row in rows}


async def lines_of(db: Database, scope: str) -> dict[str, list[tuple[str, str, int]]]:
    rows = await db.fetch(
        "SELECT h.idempotency_key, r.sku, r.location, r.quantity FROM holds h "
        "JOIN reservations r ON r.hold_id = h.id WHERE h.key_scope = $1 "
        "ORDER BY r.sku, r.location",
        scope,
    )
    found: dict[str, list[tuple[str, str, int]]] = {}
    for row in rows:
        found.setdefault(row["idempotency_key"], []).append(
            (row["sku"], row["location"], row["quantity"])
        )
    return found


def wanted_lines(body: dict[str, Any]) -> list[tuple[str, str, int]]:
    return sorted((line["sku"], line["location"], line["quantity"]) for line in body["lines"])


async def assert_stock_consistent(db: Database, *, escrow_free_allowed: bool) -> None:
    """The inventory check passes, and per stock row: reserved (as the channels see it) is
    the open hold lines, on_hand - available is held + committed units; with no escrow
    allotment left, the row itself has exactly those units reserved."""
    async with db.connection() as conn:
        check = await check_inventory(conn)
    assert check.ok, check.problems()
    assert check.stock.rows_checked > 0
    rows = await db.fetch(
        "SELECT v.sku, v.location, v.on_hand, v.reserved, v.available, v.in_escrow, "
        "       s.on_hand - s.reserved AS row_available, coalesce(o.units, 0) AS open_units "
        "FROM stock_levels v JOIN stock s USING (sku, location) "
        "LEFT JOIN (SELECT sku, location, sum(quantity) AS units FROM reservations "
        "           WHERE state IN ('held', 'committed') GROUP BY 1, 2) AS o USING (sku, location)"
    )
    total_reserved = sum(row["reserved"] for row in rows)
    total_open = await db.fetchval(
        "SELECT coalesce(sum(r.quantity), 0) FROM reservations r JOIN holds h ON h.id = r.hold_id "
        "WHERE h.state IN ('held', 'committed') AND r.state IN ('held', 'committed')"
    )
    assert total_reserved == total_open, (total_reserved, total_open)
    for row in rows:
        where = f"{row['sku']}@{row['location']}"
        assert row["on_hand"] - row["available"] == row["open_units"], (where, dict(row))
        assert row["reserved"] == row["open_units"], (where, dict(row))
        # The row itself has the open lines reserved, plus what sits in escrow allotments.
        assert row["row_available"] == row["available"] - row["in_escrow"], (where, dict(row))
        if not escrow_free_allowed:
            assert row["in_escrow"] == 0, (where, dict(row))
            assert row["row_available"] == row["available"], (where, dict(row))


async def new_key(db: Database) -> tuple[str, str]:
    """(scope of its holds: the key id as text, secret)."""
    async with db.transaction() as conn:
        key, secret = await create_key(conn, Channel.WEB, label="faults")
    return str(key.id), secret


# --- kill -9 of serve --------------------------------------------------------------------


@pytest.mark.processes
@pytest.mark.parametrize("workers", [1, 2])
async def test_kill_9_of_serve_mid_hold_load(db: Database, database_dsn: str, workers: int) -> None:
    """kill -9 of the whole service while shoppers hold the hot sku: every acknowledged hold
    survives, every in-flight key retried gets its original hold or exactly one new one, and
    the dead process's escrow units come back to the row once its lease has run out."""
    await stocked(db, {"HOT": 1000})
    scope, secret = await new_key(db)
    ledger = Ledger()

    with TunedServe(database_dsn, workers=workers, settings=ESCROW_SETTINGS) as server:
        shoppers = [
            asyncio.create_task(shopper_over_http(n, server.base_url, secret, ledger))
            for n in range(SHOPPERS)
        ]

        async def escrow_busy() -> bool:
            row = await db.fetchrow(
                "SELECT (SELECT count(*) FROM holds WHERE key_scope = $1 AND strategy = 'escrow') "
                "AS escrowed, (SELECT coalesce(sum(free), 0) FROM escrow_allotments) AS free, "
                "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                " AND state = 'active' AND query LIKE '%inventory_hold_batch(%' "
                " AND pid <> pg_backend_pid()) AS batching",
                scope,
            )
            assert row is not None
            # Each shopper has one request outstanding at most: with more units free than
            # shoppers, some are still in an allotment when the process is gone. And a batch
            # of holds is running in PostgreSQL right now: it commits with no one to answer.
            return (
                len(ledger.acked) >= 60
                and row["escrowed"] >= 20
                and row["free"] > SHOPPERS
                and row["batching"] > 0
            )

        # Mid-load, with units of the hot sku sitting in this process's escrow allotments.
        await crash_when(
            server, shoppers, escrow_busy, "holds through escrow, with units left in an allotment"
        )

    assert not ledger.unexpected, ledger.unexpected[:10]
    assert len(ledger.in_flight) == SHOPPERS

    async def quiet() -> bool:  # the dead service's last statements have finished
        return not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'"
        )

    await until(quiet, "the killed service's statements to end")
    before = await holds_of(db, scope)
    # Every acknowledged hold is in the database, as answered; nothing else is there.
    assert set(ledger.acked) <= set(before), set(ledger.acked) - set(before)
    assert {key: before[key]["id"] for key in ledger.acked} == ledger.acked
    assert set(before) <= set(ledger.acked) | ledger.in_flight
    assert all(row["state"] == "held" for row in before.values())
    assert {row["strategy"] for row in before.values()} >= {"escrow"}

    committed_unanswered = ledger.in_flight & set(before)

    # The dead process's allotments: their free units are still reserved in the row.
    dead = await db.fetch("SELECT owner, sku, location, free, lease_until FROM escrow_allotments")
    stranded = sum(row["free"] for row in dead if row["location"] == "eu-dc1")
    assert stranded > 0, [dict(row) for row in dead]
    await assert_stock_consistent(db, escrow_free_allowed=True)
    row_available = await db.fetchval(
        "SELECT on_hand - reserved FROM stock WHERE sku = 'HOT' AND location = 'eu-dc1'"
    )
    open_units = await db.fetchval(
        "SELECT coalesce(sum(quantity), 0) FROM reservations "
        "WHERE sku = 'HOT' AND location = 'eu-dc1' AND state = 'held'"
    )
    assert row_available == 1000 - open_units - stranded

    lease_of = {(row["owner"], row["sku"], row["location"]): row["lease_until"] for row in dead}
    with TunedServe(database_dsn, workers=workers, settings=ESCROW_SETTINGS) as again:
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=again.base_url, headers=headers, timeout=10) as c:
            # Each in-flight key twice at once, with the same body: one hold for the key.
            for key in sorted(ledger.in_flight):
                first, second = await asyncio.gather(
                    post_hold(c, key, ledger.bodies[key]), post_hold(c, key, ledger.bodies[key])
                )
                assert (first.status_code, second.status_code) == (201, 201), (
                    first.text,
                    second.text,
                )
                assert first.json()["id"] == second.json()["id"]
                replayed = [r.headers.get("idempotent-replayed") == "true" for r in (first, second)]
                if key in before:  # it committed before the kill: the original hold
                    assert all(replayed), key
                    assert first.json()["id"] == before[key]["id"]
                else:  # it never committed: one new hold, the other answer its replay
                    assert replayed.count(False) == 1, key
                ledger.acked[key] = first.json()["id"]
            # Acknowledged keys replay their hold.
            for key in sorted(ledger.acked)[:10]:
                response = await post_hold(c, key, ledger.bodies[key])
                assert response.status_code == 201
                assert response.headers.get("idempotent-replayed") == "true"
                assert response.json()["id"] == ledger.acked[key]

        # The restarted service takes the dead allotments back, and not before their lease
        # ran out.
        async def reclaimed() -> bool:
            rows = await db.fetch(
                "SELECT owner, sku, location, clock_timestamp() AS now FROM escrow_allotments "
                "UNION ALL SELECT NULL, NULL, NULL, clock_timestamp()"
            )
            now = rows[-1]["now"]
            left = {(r["owner"], r["sku"], r["location"]) for r in rows[:-1]}
            for place, lease_until in lease_of.items():
                if place not in left:
                    assert now >= lease_until, f"{place} taken back before its lease ran out"
            stale = await db.fetchval(
                "SELECT count(*) FROM escrow_allotments WHERE lease_until < clock_timestamp()"
            )
            return not (left & set(lease_of)) and stale == 0

        await until(reclaimed, "the dead process's allotments to be reclaimed", within=15)
        await assert_stock_consistent(db, escrow_free_allowed=True)
    # SIGTERM: the restarted service gives its own allotments back on the way out.

    after = await holds_of(db, scope)
    assert set(after) == set(ledger.acked), "one hold per key, acknowledged or retried"
    assert {key: row["id"] for key, row in after.items()} == ledger.acked
    lines = await lines_of(db, scope)
    assert {key: lines[key] for key in after} == {
        key: wanted_lines(ledger.bodies[key]) for key in after
    }
    assert await db.fetchval("SELECT count(*) FROM escrow_allotments") == 0
    await assert_stock_consistent(db, escrow_free_allowed=False)
    assert await db.fetchval(
        "SELECT reserved FROM stock_levels WHERE sku = 'HOT' AND location = 'eu-dc1'"
    ) == len(after)
    print(
        f"workers {workers}: {len(after)} holds, {len(ledger.in_flight)} keys unanswered at the "
        f"kill ({len(committed_unanswered)} had committed), {stranded} units stranded in escrow"
    )


@pytest.mark.processes
async def test_kill_9_of_a_multi_worker_serve_stops_its_workers(
    db: Database, database_dsn: str
) -> None:
    """kill -9 of `retailsync serve --workers 2` kills the uvicorn supervisor only; uvicorn
    leaves its workers running, and orphans would keep serving on the port and renewing their
    escrow leases, so nobody could take their units back. Ours follow their supervisor
    (PR_SET_PDEATHSIG, in app_from_environment): within a lease's length none is left, no
    lease was renewed, the port is closed."""
    await stocked(db, {"HOT": 1000})
    _, secret = await new_key(db)
    ledger = Ledger()
    stop = asyncio.Event()
    with TunedServe(database_dsn, workers=2, settings=ESCROW_SETTINGS) as server:
        workers = server.tree
        assert workers
        try:
            shoppers = [
                asyncio.create_task(shopper_over_http(n, server.base_url, secret, ledger, stop))
                for n in range(4)
            ]

            async def allotted() -> bool:
                free = await db.fetchval("SELECT coalesce(sum(free), 0) FROM escrow_allotments")
                return len(ledger.acked) >= 40 and bool(free)

            try:
                await until(allotted, "units in escrow allotments")
                stop.set()
                await asyncio.wait_for(asyncio.gather(*shoppers), 15)
            finally:
                for task in shoppers:
                    task.cancel()
            server.kill()  # SIGKILL of the `retailsync serve` process, as `kill -9 PID` does
            # Read once the supervisor is gone (kill waits for it): a renewal already running
            # when it died may still commit, and one read before the kill, on a slow machine,
            # counted that renewal as made after the death (CI saw 2).
            killed_at = await db.fetchval("SELECT clock_timestamp()")

            # Watch for a lease's length: nobody may renew a lease after its owner died.
            renewed = 0
            deadline = time.monotonic() + LEASE_SECONDS + 0.5
            while time.monotonic() < deadline:
                renewed = max(
                    renewed,
                    await db.fetchval(
                        "SELECT count(*) FROM escrow_allotments "
                        "WHERE lease_until > $1::timestamptz + $2 * interval '1 second'",
                        killed_at,
                        LEASE_SECONDS + 0.2,
                    ),
                )
                await asyncio.sleep(0.1)
            orphans = [pid for pid in workers if _alive(pid)]
            answers = server.answers()
            found = {"renewed leases": renewed, "orphans": orphans, "port answers": answers}
            assert found == {"renewed leases": 0, "orphans": [], "port answers": False}, (
                f"kill -9 of serve left its workers running: {found}"
            )
        finally:
            for pid in workers:  # ours: started by the serve this test started
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=10)


# --- PostgreSQL restart ------------------------------------------------------------------


async def _server_major(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


async def _crash(server: EmbeddedPostgres) -> None:
    """Immediate shutdown (SIGQUIT to the postmaster): every backend exits at once, commits
    whose answer was not sent yet included, and the next start runs crash recovery."""
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGQUIT)

    async def gone() -> bool:
        return not _alive(postmaster)

    await until(gone, "the postmaster to exit", within=30)
    server.stop()  # forget the exited server (it reaps it)


@pytest.mark.parametrize("shutdown", ["fast", "immediate"])
async def test_postgresql_restart_under_hold_load(
    pg_admin_dsn: str, tmp_path: Path, shutdown: str
) -> None:
    """PostgreSQL goes away while shoppers keep holding, in-process through the ASGI app, and
    comes back on the same data folder: by a fast shutdown (sessions aborted mid-transaction)
    or an immediate one (backends gone at once, then crash recovery). Every answer is 201, 409
    or 503, never 500; every acknowledged hold is there with all its lines; every 503'd key
    retried gets its original hold (replayed) or one new one; the ledger balances."""
    major = await _server_major(pg_admin_dsn)  # the same PostgreSQL as the rest of the suite
    binaries = Path(f"/usr/lib/postgresql/{major}/bin") if major != 18 else None
    server = EmbeddedPostgres(tmp_path / "pg", binaries=binaries)
    dsn = server.start()
    try:
        target = ServerTarget(dsn=dsn, pool_min=0, pool_max=4, command_timeout=10.0)
        db = await Database.connect(target)
        async with db.connection() as conn:
            await migrate(conn)
        await stocked(db, {"HOT": 5000, "LAST": LAST_UNITS})
        scope, secret = await new_key(db)
        await db.close()

        settings = load_settings(
            {"db_url": dsn, "hot_sku_rps": 5, "escrow_lease_seconds": LEASE_SECONDS},
            environ={},
        )
        app = create_app(settings)
        ledger = Ledger()
        stop = asyncio.Event()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Bearer {secret}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=transport, base_url="http://retailsync.test", headers=headers
            ) as client,
        ):

            async def shopper(n: int) -> None:
                serial = 0
                while not stop.is_set():
                    key = f"s{n}-{uuid.uuid4().hex}"
                    ledger.bodies[key] = body = hold_body(n, serial, mixed=True)
                    serial += 1
                    ledger.answered(key, await post_hold(client, key, body))
                    if key in ledger.unavailable:
                        await asyncio.sleep(0.02)  # pacing while the database is away

            shoppers = [asyncio.create_task(shopper(n)) for n in range(SHOPPERS)]

            async def acked_at_least(count: int) -> bool:
                if any(task.done() for task in shoppers):
                    raise AssertionError([task.exception() for task in shoppers if task.done()])
                return len(ledger.acked) >= count

            async def refused_while_down() -> bool:
                return len(ledger.unavailable) >= 20

            try:
                await until(lambda: acked_at_least(80), "holds before the restart")
                if shutdown == "fast":  # from a thread: the shoppers keep going meanwhile
                    await asyncio.to_thread(server.stop)
                else:
                    await _crash(server)
                await until(refused_while_down, "503s while PostgreSQL is down")
                server.start()  # from the main thread: its parent-death signal is per thread
                mark = len(ledger.acked)
                await until(lambda: acked_at_least(mark + 80), "holds after the restart", 30)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*shoppers), 15)
            finally:
                for task in shoppers:
                    task.cancel()

            assert not ledger.unexpected, ledger.unexpected[:10]
            assert ledger.unavailable
            db = await Database.connect(target)
            before = await holds_of(db, scope)
            assert set(ledger.acked) <= set(before), set(ledger.acked) - set(before)
            assert {key: before[key]["id"] for key in ledger.acked} == ledger.acked
            assert set(before) <= set(ledger.bodies)
            assert not set(before) & ledger.refused

            # Every 503'd key again, with the same body: the hold it made, or a new one (or,
            # if it never committed and wants LAST, sold out by now, a refusal).
            acked_in_load = len(ledger.acked)
            replays = 0
            for key in sorted(ledger.unavailable):
                response = await post_hold_when_up(client, key, ledger.bodies[key])
                replayed = response.headers.get("idempotent-replayed") == "true"
                if key in before:
                    assert (response.status_code, replayed) == (201, True), (key, response.text)
                    assert response.json()["id"] == before[key]["id"]
                    replays += 1
                elif response.status_code == 409:
                    assert _problem(response) == "insufficient-stock", response.text
                    assert "LAST" in {line["sku"] for line in ledger.bodies[key]["lines"]}
                    continue
                else:
                    assert (response.status_code, replayed) == (201, False), (key, response.text)
                ledger.acked[key] = response.json()["id"]

        # The app has shut down: its escrow lanes gave their allotments back.
        after = await holds_of(db, scope)
        assert set(after) == set(ledger.acked)
        assert {key: row["id"] for key, row in after.items()} == ledger.acked
        lines = await lines_of(db, scope)  # never half-applied: every line of every hold
        assert {key: lines.get(key) for key in after} == {
            key: wanted_lines(ledger.bodies[key]) for key in after
        }
        assert await db.fetchval("SELECT count(*) FROM escrow_allotments") == 0
        await assert_stock_consistent(db, escrow_free_allowed=False)
        last_held = await db.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM reservations "
            "WHERE sku = 'LAST' AND location = 'eu-store1' AND state = 'held'"
        )
        if ledger.refused:  # sold out exactly: every unit held once, none lost or oversold
            assert last_held == LAST_UNITS
        else:
            assert last_held <= LAST_UNITS
        await db.close()
        print(
            f"{shutdown}: LAST held {last_held}; "
            f"acked {acked_in_load}, refused {len(ledger.refused)}, "
            f"503 {len(ledger.unavailable)} (of which committed: {replays}), "
            f"strategies {sorted({row['strategy'] for row in after.values()})}"
        )
    finally:
        server.stop()

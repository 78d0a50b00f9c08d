"""``retailsync bench``: each capability measured beside its baseline or peer.

The work lives in :mod:`.crdt` and :mod:`.convergence`, imported when a command runs, so the
rest of the CLI starts without them (and without pycrdt, an optional extra).
"""

from __future__ import annotations

from asyncio import AbstractEventLoop
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer
from rich.console import Console

bench_app = typer.Typer(
    help="Benchmarks: each capability beside its baseline or peer.", no_args_is_help=True
)
_err = Console(stderr=True)
_out = Console()

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables")]


def _progress(message: str) -> None:
    _err.print(f"[dim]{message}[/]", highlight=False)


def _report(
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
    printer: Callable[[dict[str, Any], Console], None],
    as_json: bool,
    *,
    loop_factory: Callable[[], AbstractEventLoop] | None = None,
) -> dict[str, Any]:
    """Run an async benchmark (on ``loop_factory``'s loop, asyncio's by default); print its
    report as JSON or tables; a RetailsyncError (a bad setting, a server that would not start)
    is one line and exit code 1."""
    import asyncio

    from retailsync.bench.report import print_json
    from retailsync.errors import RetailsyncError

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            report = runner.run(run())
    except RetailsyncError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print_json(report)
    else:
        printer(report, _out)
    return report


@bench_app.command("crdt")
def crdt_bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: seconds instead of about a minute")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Merge throughput and delta/state sizes of the CRDT types, beside pycrdt (Yjs).

    pycrdt runs the same operations where it has a counterpart: map updates and set updates.
    """
    from retailsync.bench.crdt import FULL, QUICK, run_bench
    from retailsync.bench.report import print_crdt, print_json

    report = run_bench(
        QUICK if quick else FULL, progress=lambda name: _progress(f"measuring {name}")
    )
    if as_json:
        print_json(report)
    else:
        print_crdt(report, _out)


@bench_app.command("crdt-convergence")
def crdt_convergence(
    ops: Annotated[
        int,
        typer.Option(min=1, max=100_000_000, help="Operations in all, split over the subjects"),
    ] = 1_000_000,
    replicas: Annotated[int, typer.Option(min=2, max=64, help="Replicas of each subject")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same run")] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Long random run checking add-wins semantics and convergence of Cart and AWSet.

    Replicas of Cart ("counter" and "lww") and AWSet take random adds and removes over a
    network that reorders, duplicates and drops deltas. A reference model checks for lost adds
    and resurrected removals, and that all replicas converge. Exits 1 if any check fails.
    """
    from retailsync.bench.convergence import run_convergence
    from retailsync.bench.report import print_convergence, print_json

    report = run_convergence(ops, replicas, seed, progress=_progress)
    if as_json:
        print_json(report)
    else:
        print_convergence(report, _out)
    if report["lost_adds"] or report["resurrections"] or report["wrong_lines"]:
        _err.print("[bold red]error:[/] the CRDTs broke add-wins semantics (see above)")
        raise typer.Exit(1)
    if not report["converged"]:
        _err.print("[bold red]error:[/] the replicas did not converge")
        raise typer.Exit(1)


def _nats_here() -> list[str]:
    """The local NATS server's URL if one answers on 4222: then JetStream is measured too."""
    import secrets
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", 4222)) == 0:
            # A stream of its own per run, deleted afterwards (see bench/cdc.py).
            return [f"nats://127.0.0.1:4222?stream=retailsync-bench-{secrets.token_hex(4)}"]
    return []


@bench_app.command("cdc")
def cdc_bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="20,000 changes and 3 s of latency, not 200,000/10 s")
    ] = False,
    event_log: Annotated[
        list[str] | None,
        typer.Option(
            "--event-log",
            help="Event log URL to measure (repeat for several); default: postgres, and "
            "nats://127.0.0.1:4222 when a server answers there",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change data capture into each event log: changes/s drained from one slot beside
    pg_recvlogical on its own slot, and commit-to-log latency at 5,000 changes/s."""
    from retailsync.bench.cdc import FULL, QUICK, run_cdc_bench
    from retailsync.bench.report import print_cdc
    from retailsync.errors import RetailsyncError
    from retailsync.eventlog.factory import check_event_log_url

    urls = event_log or ["postgres", *_nats_here()]
    try:
        for url in urls:  # before starting anything
            check_event_log_url(url)
    except RetailsyncError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    plan = QUICK if quick else FULL
    _report(lambda: run_cdc_bench(plan, urls, _progress), print_cdc, as_json)


@bench_app.command("inventory")
def inventory_bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="1 s per cell and 2,000 skus: about a minute")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Durable holds/s of every reservation strategy beside a raw conditional UPDATE, on one
    hot sku and a Zipf spread, at 1, 32 and 256 clients; a flash sale per strategy; the same
    holds through `retailsync serve`. Exits 1 if any unit was oversold."""
    from retailsync.bench.inventory import FULL, QUICK, run_inventory_bench
    from retailsync.bench.report import print_inventory

    plan = QUICK if quick else FULL
    report = _report(lambda: run_inventory_bench(plan, _progress), print_inventory, as_json)
    if report["summary"]["oversold_total"]:
        _err.print("[bold red]error:[/] units were oversold (see above)")
        raise typer.Exit(1)


@bench_app.command("cache")
def cache_bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="3 s per mode and 2,000 skus: under a minute")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Cached product reads kept fresh by the change stream beside cache-aside with a TTL only
    (hit ratio, stale reads, commit-to-L1 freshness), the L1 hit's latency, and cached GETs
    through `retailsync serve` beside a bare ASGI hello-world."""
    from retailsync.bench.cache import FULL, QUICK, run_cache_bench
    from retailsync.bench.report import print_cache

    _report(lambda: run_cache_bench(QUICK if quick else FULL, _progress), print_cache, as_json)


@bench_app.command("overload")
def overload_bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="4 s per level and 1,000 products: about 2 minutes")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """`retailsync serve` offered 1x, 3x and 10x its measured capacity (open model: constant
    arrivals, latency from the intended send time) in a browse-heavy mix, with traffic
    management on and off: per class offered, goodput, shed and p50/p99/p99.9."""
    from retailsync.bench.overload import FULL, QUICK, run_overload_bench
    from retailsync.bench.report import print_overload

    try:  # a dependency wherever uvicorn uses it (not on Windows)
        from uvloop import new_event_loop
    except ImportError:
        new_event_loop = None  # type: ignore[assignment]
    # The load generator shares the two cores with the server: on uvloop it costs less a
    # request, and what it leaves is the server's.
    _report(
        lambda: run_overload_bench(QUICK if quick else FULL, _progress),
        print_overload,
        as_json,
        loop_factory=new_event_loop,
    )

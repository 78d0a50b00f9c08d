"""``retailsync bench``: the CRDT benchmark's report, and a convergence checker that can fail."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
from typer.testing import CliRunner

from retailsync.bench.convergence import CartSubject, Reference, SetSubject, Write, run_subject
from retailsync.cli import app

runner = CliRunner()

TYPES = {
    "PNCounter",
    "BoundedCounter",
    "AWSet",
    "MVRegister",
    "LWWRegister",
    "Cart(counter)",
    "Cart(lww)",
}
SHARED_WITH_PYCRDT = {"AWSet", "LWWRegister", "Cart(counter)", "Cart(lww)"}
SUBJECTS = [SetSubject(), CartSubject("counter"), CartSubject("lww")]


def test_bench_crdt_reports_every_type_beside_pycrdt() -> None:
    result = runner.invoke(app, ["bench", "crdt", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["types"]) == TYPES
    for name, row in report["types"].items():
        for field in ("merges_per_s", "inmem_merges_per_s", "delta_bytes", "state_bytes"):
            assert row[field] > 0, (name, field)
        assert row["delta_bytes"] <= row["delta_bytes_max"]
        assert ("peer" in row) == (name in SHARED_WITH_PYCRDT), name
    for name in SHARED_WITH_PYCRDT:
        row = report["types"][name]
        assert row["peer"]["name"] == "pycrdt"
        for field in ("merges_per_s", "delta_bytes", "state_bytes"):
            assert row[f"peer_{field}"] > 0, (name, field)
            ratio = row[field] / row[f"peer_{field}"]
            assert row[f"ratio_{field}"] == pytest.approx(ratio, rel=1e-2)


def test_convergence_run_loses_nothing_and_converges() -> None:
    result = runner.invoke(app, ["bench", "crdt-convergence", "--ops", "900", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["lost_adds"], report["resurrections"], report["wrong_lines"]) == (0, 0, 0)
    assert report["converged"] is True
    assert set(report["subjects"]) == {"Cart(counter)", "Cart(lww)", "AWSet"}
    for outcome in report["subjects"].values():
        assert outcome["ops"] == 300
        # Not vacuous: removes raced concurrent adds, and the network dropped and duplicated.
        assert outcome["adds_surviving_remove"] > 0
        assert outcome["dropped"] > 0
        assert outcome["duplicates"] > 0


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--ops", "0"], "--ops"),
        (["--replicas", "1"], "--replicas"),
        (["--ops", "many"], "--ops"),
    ],
)
def test_bad_convergence_options_are_usage_errors(args: list[str], complaint: str) -> None:
    result = runner.invoke(app, ["bench", "crdt-convergence", *args])
    assert result.exit_code == 2
    assert complaint in result.output
    assert "Traceback" not in result.output


def test_reference_lets_a_concurrent_add_survive_a_remove() -> None:
    model = Reference(replicas=2)
    line = Write(1, (), None)
    first = model.write(0, "sku-1", line, replaces=False)
    model.cancel(1, "sku-1")  # replica 1 has not received the add: it cannot remove it
    assert model.lines(lambda writes: len(writes)) == {"sku-1": 1}
    model.deliver(1, first)
    model.cancel(1, "sku-1")
    assert model.lines(lambda writes: len(writes)) == {}


# Deliberately broken merges, reaching into the dot kernel the real merge uses.


def forget_payloads(into: Any, other: Any) -> None:
    """Learns the other side's dots but not what they hold: adds made elsewhere vanish."""
    into._kernel.context.join(other._kernel.context)


def ignore_removals(into: Any, other: Any) -> None:
    """Takes the other side's new entries but never drops one it removed: removals undone."""
    ours, theirs = into._kernel, other._kernel
    for dot, payload in theirs.entries.items():
        if dot not in ours.context:
            ours.entries[dot] = payload
    ours.context.join(theirs.context)


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda subject: subject.name)
def test_checker_catches_lost_adds(subject: Any) -> None:
    broken = dataclasses.replace(subject, merge=forget_payloads)
    outcome = run_subject(broken, 300, 5, random.Random(1))
    assert outcome.lost_adds > 0
    assert not outcome.converged


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda subject: subject.name)
def test_checker_catches_resurrections(subject: Any) -> None:
    broken = dataclasses.replace(subject, merge=ignore_removals)
    outcome = run_subject(broken, 300, 5, random.Random(1))
    assert outcome.resurrections > 0
    assert outcome.lost_adds == 0
    assert not outcome.converged

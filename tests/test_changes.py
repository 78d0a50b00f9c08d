"""GET /v1/changes: the event log as Server-Sent Events, resumable with Last-Event-ID."""

from __future__ import annotations

import json

import pytest

from retailsync.cdc.events import ChangeEvent, event_id
from retailsync.eventlog.postgres import PostgresEventLog
from tests.support import POS, Api


def change(index: int, event_type: str) -> ChangeEvent:
    return ChangeEvent(
        id=event_id(1000 + index, 0),
        source="test",
        table="public.products",
        type=event_type,
        op="update",
        key={"sku": f"S{index}"},
        after={"sku": f"S{index}", "title": "t"},
        xid=index,
        commit_lsn=1000 + index,
        commit_ts_us=0,
        index=0,
        last_in_tx=True,
    )


def parse(body: str) -> list[dict[str, str]]:
    frames = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "id" in fields:
            frames.append(fields)
    return frames


@pytest.fixture
async def logged(api: Api) -> Api:
    log = PostgresEventLog(api.db)
    kinds = ["products.changed", "prices.changed", "products.changed", "stock.changed"]
    await log.append([change(i, kind) for i, kind in enumerate(kinds)])
    return api


async def test_streams_in_order_and_resumes(logged: Api) -> None:
    response = await logged.call("GET", "/v1/changes?limit=4", as_=POS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = parse(response.text)
    assert [f["event"] for f in frames] == [
        "products.changed",
        "prices.changed",
        "products.changed",
        "stock.changed",
    ]
    assert json.loads(frames[0]["data"])["key"] == {"sku": "S0"}
    resumed = await logged.call(
        "GET", "/v1/changes?limit=2", as_=POS, headers={"Last-Event-ID": frames[1]["id"]}
    )
    assert [f["id"] for f in parse(resumed.text)] == [frames[2]["id"], frames[3]["id"]]


async def test_filters_by_type(logged: Api) -> None:
    response = await logged.call("GET", "/v1/changes?limit=2&types=products.changed", as_=POS)
    frames = parse(response.text)
    assert [json.loads(f["data"])["key"]["sku"] for f in frames] == ["S0", "S2"]


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("?from=-1", {}, 422),
        ("?limit=0", {}, 422),
        ("?types=Not%20A%20Type", {}, 422),
        ("?limit=1", {"Last-Event-ID": "abc"}, 400),
    ],
)
async def test_bad_requests(api: Api, query: str, headers: dict[str, str], status: int) -> None:
    response = await api.call("GET", f"/v1/changes{query}", headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


async def test_needs_a_key(api: Api) -> None:
    response = await api.client.get("/v1/changes?limit=1")
    assert response.status_code == 401

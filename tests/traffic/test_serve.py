"""The traffic gate in `retailsync serve` with two worker processes: rate limits shared
through the machine's Redis, and the class metrics summed over workers."""

from __future__ import annotations

import httpx
import pytest
import redis

from tests.cache.conftest import REDIS_URL
from tests.processes import Serve
from tests.test_processes import _create_key


@pytest.mark.processes
def test_rate_limits_are_shared_by_the_workers(database_dsn: str) -> None:
    key = _create_key(database_dsn, "web")
    env = {
        "RETAILSYNC_RATE_LIMIT_KEY": "30/minute",
        "RETAILSYNC_RATE_LIMIT_URL": REDIS_URL,
    }
    try:
        with Serve(database_dsn, workers=2, env=env) as server:
            statuses: list[int] = []
            # A connection each, so that both workers answer (each keeps its connections).
            clients = [
                httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"})
                for _ in range(6)
            ]
            for _ in range(10):
                for client in clients:
                    statuses.append(client.get("/v1/locations").status_code)
            refused = clients[0].get("/v1/locations")
            metrics = clients[0].get("/metrics").text
            for client in clients:
                client.close()
        assert statuses.count(200) == 30  # not 30 per worker
        assert statuses.count(429) == 30
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.json()["type"] == "urn:retailsync:problem:rate-limited"
        assert 'retailsync_rate_limited_total{scope="key"}' in metrics
        assert 'retailsync_admission_requests_total{criticality="browse",outcome="admitted"}' in (
            metrics
        )
    finally:
        client_ = redis.Redis.from_url(REDIS_URL)
        for name in client_.scan_iter(match="retailsync:rl:*"):  # this key's counters
            client_.delete(name)

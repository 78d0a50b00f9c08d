"""The edge cache against a real Varnish with the xkey vmod, in front of a tiny real backend
(see conftest): what is cached and shared, revalidation, and purging by surrogate key."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY

from retailsync.edge.purge import EdgePurger, PurgeResult, batches
from retailsync.edge.vcl import render_vcl
from retailsync.process import free_port
from tests.edge.conftest import Backend, Edge, varnish_in_front


@pytest.fixture
def ns() -> str:
    """A group name of this test's own, so tests sharing the module's Varnish never meet."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
async def client(edge: Edge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge.url, timeout=5) as http:
        yield http


@pytest.fixture
async def purger(edge: Edge) -> AsyncIterator[EdgePurger]:
    async with EdgePurger(edge.purge_url) as edge_purger:
        yield edge_purger


def _samples(outcome: str) -> float:
    return REGISTRY.get_sample_value("retailsync_edge_purges_total", {"outcome": outcome}) or 0.0


class TestCaching:
    """Varnish stores only what the backend marks public, and answers from it."""

    async def test_second_get_is_a_hit(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str
    ) -> None:
        first = await client.get(f"/item/{ns}-1")
        second = await client.get(f"/item/{ns}-1")
        assert first.status_code == second.status_code == 200
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert second.json() == {"id": f"{ns}-1", "version": 1}
        assert edge_backend.hit_count(f"/item/{ns}-1") == 1
        assert "age" in second.headers
        assert second.headers["surrogate-key"] == f"item:{ns}-1 group:{ns}"
        assert "xkey" not in second.headers

    async def test_head_is_answered_from_the_cached_get(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str
    ) -> None:
        await client.get(f"/item/{ns}-1")
        head = await client.head(f"/item/{ns}-1")
        assert (head.status_code, head.headers["x-cache"]) == (200, "HIT")
        assert edge_backend.hit_count(f"/item/{ns}-1") == 1

    async def test_if_none_match_gets_304_from_the_cache(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str
    ) -> None:
        tag = (await client.get(f"/item/{ns}-1")).headers["etag"]
        assert tag == f'"{ns}-1-v1"'
        same = await client.get(f"/item/{ns}-1", headers={"If-None-Match": tag})
        assert (same.status_code, same.headers["x-cache"]) == (304, "HIT")
        assert same.headers["etag"] == tag
        assert same.content == b""
        other = await client.get(f"/item/{ns}-1", headers={"If-None-Match": '"stale"'})
        assert (other.status_code, other.headers["x-cache"]) == (200, "HIT")
        assert edge_backend.hit_count(f"/item/{ns}-1") == 1

    @pytest.mark.parametrize("kind", ["private", "nostore", "bare", "cookie"])
    async def test_responses_not_marked_public_are_never_cached(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str, kind: str
    ) -> None:
        """private, no-store, no Cache-Control at all, and public with Set-Cookie."""
        for _ in range(3):
            response = await client.get(f"/{kind}/{ns}")
            assert (response.status_code, response.headers["x-cache"]) == (200, "MISS")
        assert edge_backend.hit_count(f"/{kind}/{ns}") == 3

    async def test_writes_pass_through(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str
    ) -> None:
        await client.get(f"/item/{ns}-1")
        response = await client.post(f"/item/{ns}-1")
        assert (response.status_code, response.headers["x-cache"]) == (200, "MISS")
        assert response.json() == {"posted": f"{ns}-1"}
        assert edge_backend.hit_count(f"/item/{ns}-1") == 2
        assert (await client.get(f"/item/{ns}-1")).headers["x-cache"] == "HIT"


class TestAuthorization:
    """A request with a key shares public answers, and never a private one."""

    async def test_public_answer_is_shared_between_keys(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str
    ) -> None:
        first = await client.get(f"/item/{ns}-1", headers={"Authorization": "Bearer key-a"})
        second = await client.get(f"/item/{ns}-1", headers={"Authorization": "Bearer key-b"})
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert edge_backend.hit_count(f"/item/{ns}-1") == 1

    async def test_private_answer_is_never_shared(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str
    ) -> None:
        for key in ("key-a", "key-b", "key-a", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = await client.get(f"/private/{ns}", headers=headers)
            assert response.headers["x-cache"] == "MISS"
            assert response.json()["for"] == (f"Bearer {key}" if key else "")
        assert edge_backend.hit_count(f"/private/{ns}") == 4

    async def test_concurrent_requests_never_get_each_others_private_answer(
        self, client: httpx.AsyncClient, edge_backend: Backend, ns: str
    ) -> None:
        """Varnish holds concurrent requests for one URL while the first is fetched; a
        private answer must not be handed to the ones it held."""
        keys = [f"key-{n}" for n in range(6)]
        answers = await asyncio.gather(
            *(
                client.get(f"/slow-private/{ns}", headers={"Authorization": f"Bearer {key}"})
                for key in keys
            )
        )
        assert [answer.json()["for"] for answer in answers] == [f"Bearer {key}" for key in keys]
        assert edge_backend.hit_count(f"/slow-private/{ns}") == len(keys)


class TestPurge:
    """PURGE with xkey-purge evicts exactly the objects tagged with the keys."""

    async def test_purge_by_item_evicts_only_that_item(
        self, client: httpx.AsyncClient, purger: EdgePurger, edge_backend: Backend, ns: str
    ) -> None:
        for item in ("1", "2", "1", "2"):
            await client.get(f"/item/{ns}-{item}")
        result = await purger.purge([f"item:{ns}-1"])
        assert result == PurgeResult(purged=1, requests=1)
        assert result.ok
        one = await client.get(f"/item/{ns}-1")
        two = await client.get(f"/item/{ns}-2")
        assert (one.headers["x-cache"], two.headers["x-cache"]) == ("MISS", "HIT")
        assert edge_backend.hit_count(f"/item/{ns}-1") == 2
        assert edge_backend.hit_count(f"/item/{ns}-2") == 1

    async def test_purge_by_group_evicts_the_whole_group(
        self, client: httpx.AsyncClient, purger: EdgePurger, ns: str
    ) -> None:
        paths = [f"/item/{ns}-1", f"/item/{ns}-2", f"/item/{ns}-3", f"/item/x{ns}-1"]
        for path in paths:
            await client.get(path)
        assert (await purger.purge([f"group:{ns}"])).purged == 3
        states = [(await client.get(path)).headers["x-cache"] for path in paths]
        assert states == ["MISS", "MISS", "MISS", "HIT"]

    async def test_after_a_change_and_its_purge_clients_get_the_new_version(
        self, client: httpx.AsyncClient, purger: EdgePurger, edge_backend: Backend, ns: str
    ) -> None:
        old = (await client.get(f"/item/{ns}-1")).headers["etag"]
        edge_backend.bump(f"{ns}-1")
        assert (
            await client.get(f"/item/{ns}-1", headers={"If-None-Match": old})
        ).status_code == 304
        await purger.purge([f"item:{ns}-1"])
        fresh = await client.get(f"/item/{ns}-1", headers={"If-None-Match": old})
        assert fresh.status_code == 200
        assert fresh.json()["version"] == 2
        assert fresh.headers["etag"] == f'"{ns}-1-v2"'

    async def test_unknown_keys_purge_nothing(self, purger: EdgePurger, ns: str) -> None:
        assert await purger.purge([f"item:{ns}-none"]) == PurgeResult(purged=0, requests=1)
        assert await purger.purge([]) == PurgeResult(purged=0, requests=0)

    async def test_many_keys_go_in_batches_once_each(
        self, client: httpx.AsyncClient, purger: EdgePurger, ns: str
    ) -> None:
        await client.get(f"/item/{ns}-1")
        await client.get(f"/item/{ns}-2")
        keys = [f"item:{ns}-{n}" for n in range(120)] + [f"item:{ns}-1", f"item:{ns}-2"]
        result = await purger.purge(keys)
        assert result == PurgeResult(purged=2, requests=3)
        assert (await client.get(f"/item/{ns}-2")).headers["x-cache"] == "MISS"

    async def test_purge_answers_its_count_in_a_header_and_json(
        self, client: httpx.AsyncClient, ns: str
    ) -> None:
        await client.get(f"/item/{ns}-1")
        await client.get(f"/item/{ns}-2")
        keys = f"item:{ns}-1, item:{ns}-2 item:{ns}-3"  # spaces or commas
        response = await client.request("PURGE", "/", headers={"xkey-purge": keys})
        assert response.status_code == 200
        assert response.headers["xkey-purged"] == "2"
        assert response.json() == {"purged": 2}

    async def test_purge_without_keys_is_refused(self, client: httpx.AsyncClient) -> None:
        response = await client.request("PURGE", "/")
        assert response.status_code == 400
        assert response.json() == {"error": "PURGE needs an xkey-purge header"}

    async def test_purge_from_outside_the_acl_is_refused(
        self, edge_backend: Backend, ns: str
    ) -> None:
        with varnish_in_front(edge_backend.port, purge_from=("192.0.2.1", "10.0.0.0/8")) as edge:
            async with httpx.AsyncClient(base_url=edge.url, timeout=5) as client:
                await client.get(f"/item/{ns}-1")
                raw = await client.request("PURGE", "/", headers={"xkey-purge": f"item:{ns}-1"})
                assert raw.status_code == 403
                refused_before = _samples("refused")
                async with EdgePurger(edge.purge_url) as purger:
                    result = await purger.purge([f"item:{ns}-1"])
                assert not result.ok
                assert result.failed == (f"item:{ns}-1",)
                assert result.error is not None
                assert "403" in result.error
                assert _samples("refused") == refused_before + 1
                assert (await client.get(f"/item/{ns}-1")).headers["x-cache"] == "HIT"


class TestPurgerFailures:
    """The purger reports failures to its caller (to retry), never raises them."""

    async def test_dead_varnish_fails_fast_without_raising(self) -> None:
        errors_before = _samples("error")
        started = time.monotonic()
        async with EdgePurger(f"http://127.0.0.1:{free_port()}") as purger:
            result = await purger.purge(["item:1", "group:a", "item:1"])
        assert time.monotonic() - started < 1.0
        assert not result.ok
        assert result.failed == ("item:1", "group:a")
        assert result.purged == 0
        assert _samples("error") == errors_before + 1

    async def test_silent_varnish_times_out_in_a_second(self) -> None:
        with socket.socket() as silent:  # accepts connections (the backlog), never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            url = f"varnish://127.0.0.1:{silent.getsockname()[1]}"
            started = time.monotonic()
            async with EdgePurger(url) as purger:
                result = await purger.purge([f"item:{n}" for n in range(200)])
            elapsed = time.monotonic() - started
        assert 0.9 < elapsed < 1.6
        assert (result.ok, result.requests, len(result.failed)) == (False, 1, 200)
        assert result.error == "error: no answer within 1 s"

    @pytest.mark.parametrize(
        "key", ["", "item 1", "item,1", "x" * 201, "prix:é", "a\nb", "item:1;", 'a"b']
    )
    async def test_invalid_keys_raise_before_anything_is_sent(self, key: str) -> None:
        async with EdgePurger(f"http://127.0.0.1:{free_port()}") as purger:
            with pytest.raises(ValueError, match="not a surrogate key"):
                await purger.purge(["item:1", key])

    def test_batches_respect_the_count_and_size_limits(self) -> None:
        long = [f"k:{n:03d}" + "x" * 190 for n in range(60)]  # 195 characters each
        groups = list(batches(long))
        assert [len(group) for group in groups] == [20, 20, 20]
        assert all(len(" ".join(group)) <= 4096 for group in groups)
        assert [len(group) for group in batches(f"k{n}" for n in range(120))] == [50, 50, 20]

    def test_unknown_url_scheme_is_refused(self) -> None:
        with pytest.raises(ValueError, match="expected http://"):
            EdgePurger("redis://127.0.0.1:6379")


class TestRenderVcl:
    """The VCL's inputs are checked before they reach Varnish."""

    def test_acl_entries(self) -> None:
        vcl = render_vcl("api.internal", 8000, ["127.0.0.1", "::1", "10.1.2.3/8"])
        assert '"127.0.0.1";\n    "::1";\n    "10.0.0.0"/8;\n}' in vcl
        assert '.host = "api.internal";' in vcl
        assert '.port = "8000";' in vcl
        assert vcl.startswith("vcl 4.1;")

    @pytest.mark.parametrize(
        ("host", "port", "purge_from"),
        [('a"b', 80, ()), ("", 80, ()), ("api", 0, ()), ("api", 70000, ()), ("api", 80, ["x"])],
    )
    def test_bad_inputs(self, host: str, port: int, purge_from: list[str]) -> None:
        with pytest.raises(ValueError, match=r"host|port|purge_from"):
            render_vcl(host, port, purge_from)

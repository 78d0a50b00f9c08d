"""The edge cache end to end: a real Varnish in front of `retailsync serve`, which runs the
capture beside it; a price changed directly in PostgreSQL with psql; the new price served
through Varnish within the bound, because the invalidation consumer purged it by key."""

from __future__ import annotations

import secrets
import subprocess
import time

import httpx
import pytest

from tests.cdc.conftest import cdc_dsn, logical_admin_dsn  # noqa: F401
from tests.edge.conftest import varnish_in_front
from tests.processes import Serve, cli

pytestmark = pytest.mark.processes

BOUND_S = 2.0  # generous for a loaded CI machine; `retailsync bench cache` measures the bound


def _price(client: httpx.Client, headers: dict[str, str]) -> tuple[int, str]:
    response = client.get("/v1/prices/LAMP-1", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()[0]["amount_minor"], response.headers.get("x-cache", "")


def test_a_price_changed_in_psql_is_served_fresh_through_varnish(cdc_dsn: str) -> None:  # noqa: F811
    slot = f"e_{secrets.token_hex(4)}"
    capture = {f"RETAILSYNC_CDC_{name}": slot for name in ("SLOT", "PUBLICATION", "SOURCE")}
    serve = Serve(cdc_dsn, env={"RETAILSYNC_SERVE_CAPTURE": "true", **capture,
                                "RETAILSYNC_CDC_METRICS_PORT": "0"})  # fmt: skip
    with varnish_in_front(serve.port) as edge:
        serve.env["RETAILSYNC_EDGE_PURGE_URL"] = edge.purge_url
        with serve:
            secret = cli("--db-url", cdc_dsn, "keys", "create", "--channel", "web").stdout.split()[
                -1
            ]
            auth = {"Authorization": f"Bearer {secret}"}
            with httpx.Client(base_url=serve.base_url, timeout=5) as api:
                admin_key = cli(
                    "--db-url", cdc_dsn, "keys", "create", "--channel", "admin"
                ).stdout.split()[-1]
                admin = {"Authorization": f"Bearer {admin_key}"}
                location = {"region": "eu", "kind": "store"}
                assert api.put("/v1/locations/eu-1", json=location, headers=admin).is_success
                product = {"title": "Lamp", "category": "home", "attributes": {}}
                assert api.put("/v1/products/LAMP-1", json=product, headers=admin).is_success
                price = {"currency": "EUR", "amount_minor": 1999}
                assert api.put("/v1/prices/LAMP-1/eu", json=price, headers=admin).is_success
            with httpx.Client(base_url=edge.url, timeout=5) as shop:
                deadline = time.monotonic() + 10  # until the capture is up and the first write in
                while _price(shop, auth) != (1999, "HIT"):
                    assert time.monotonic() < deadline, "Varnish never cached the price"
                    time.sleep(0.05)

                subprocess.run(
                    ["psql", cdc_dsn, "-c", "UPDATE prices SET amount_minor = 2499 "
                     "WHERE sku = 'LAMP-1' AND region = 'eu'"],
                    check=True, capture_output=True,
                )  # fmt: skip
                changed_at = time.monotonic()
                while _price(shop, auth)[0] != 2499:
                    assert time.monotonic() - changed_at < BOUND_S, "the edge kept the old price"
                    time.sleep(0.01)
                time.sleep(0.5)  # past the second purge (see cache.consumer): cached again
                assert _price(shop, auth)[0] == 2499
                assert _price(shop, auth) == (2499, "HIT")

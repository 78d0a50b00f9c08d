"""A client-side replica, as a POS terminal or an app keeps one, speaking POST /v1/sync."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from retailsync.crdt import Crdt, decode, encode
from retailsync.models import Channel
from tests.support import POS, Api


def b64(crdt: Crdt) -> str:
    return base64.b64encode(encode(crdt)).decode()


def unb64(text: str) -> Any:
    return decode(base64.b64decode(text))


class Replica:
    """Local objects of one replica; ``sync`` sends them and merges the server's answer."""

    def __init__(self, api: Api, replica: str, as_: Channel = POS) -> None:
        self.api = api
        self.id = replica
        self.as_ = as_
        self.objects: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        return self.objects[key]

    def adopt(self, key: str, blank: Crdt) -> Any:
        """Start holding ``key`` locally (blank, as this replica)."""
        self.objects.setdefault(key, blank)
        return self.objects[key]

    async def post(self, body: dict[str, Any]) -> httpx.Response:
        return await self.api.call("POST", f"/v1/sync/{self.id}", json=body, as_=self.as_)

    async def sync(
        self,
        keys: list[str] | None = None,
        *,
        allot: dict[str, int] | None = None,
        refused: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Send the named local objects (default: all), merge the server's states back."""
        names = list(self.objects) if keys is None else keys
        body = {
            "objects": [
                {"key": key, "state": b64(self.objects[key])}
                if key in self.objects
                else {"key": key}
                for key in names
            ],
            "allot": [{"key": key, "quantity": n} for key, n in (allot or {}).items()],
            "refused": refused or [],
        }
        response = await self.post(body)
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        for item in reply["objects"]:
            server = unb64(item["state"])
            if item["key"] in self.objects:
                self.objects[item["key"]].merge(server)
        return reply

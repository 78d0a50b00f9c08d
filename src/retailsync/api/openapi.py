"""OpenAPI for responses that are msgspec structs (holds), which FastAPI cannot describe by
itself: routes name them with :func:`struct_response`, and :func:`install` adds their
schemas, as msgspec derives them, to the document's components."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from fastapi import FastAPI

_REF = "#/components/schemas/{name}"


def struct_response(struct: type[msgspec.Struct], description: str) -> dict[str, Any]:
    """A route's ``responses`` entry for a body that is ``struct``."""
    ref = {"$ref": _REF.format(name=struct.__name__)}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def install(app: FastAPI, structs: Sequence[type[msgspec.Struct]]) -> None:
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()  # FastAPI's, cached in app.openapi_schema
            _, components = msgspec.json.schema_components(structs, ref_template=_REF)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]

"""Path and query parameters shared by the routes, validated before any handler runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from retailsync.models import LOCATION_PATTERN, REGION_PATTERN, SKU_PATTERN

SkuPath = Annotated[str, Path(pattern=SKU_PATTERN, description="Stock-keeping unit")]
LocationPath = Annotated[str, Path(pattern=LOCATION_PATTERN, description="Store or warehouse id")]
RegionPath = Annotated[str, Path(pattern=REGION_PATTERN, description="Region id")]

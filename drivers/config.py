"""Field configuration: buses, meters, poll groups and the simulated plant.

The root config (`controller.config.GridConfig`) extends `FieldConfig` with the
runtime's own sections; this module holds only what the drivers need.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class FieldConfig(BaseModel):
    """Top-level keys owned by the drivers: ``buses``, ``poll_groups``, ``sim``."""

    model_config = ConfigDict(extra="forbid")

    buses: list[Any] = []
    poll_groups: dict[str, Any] = {}
    sim: dict[str, Any] = {}

"""Tags defined in the image after the model was built get their nodes here:
at once when the publisher meets a change it has no variable for, and at the
latest one period later."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from controller.process_image import ProcessImage
from controller.task_stop import stop_task

from .model import ModelBuilder, TypeNodes
from .nodes import Made, NodeFactory

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Model:
    factory: NodeFactory
    builder: ModelBuilder
    root: Made
    types: TypeNodes


class LateTags:
    def __init__(
        self, image: ProcessImage, *, period_s: float, on_nodes: Callable[[int], None]
    ) -> None:
        self.image = image
        self.period_s = period_s
        # Told the namespace's node count after tags were added.
        self._on_nodes = on_nodes
        self.added = 0
        self._model: _Model | None = None
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def attach(
        self, factory: NodeFactory, builder: ModelBuilder, root: Made, types: TypeNodes
    ) -> None:
        self._model = _Model(factory, builder, root, types)

    def kick(self) -> None:
        """A change for a tag the model does not have: look now, not at the next period."""
        self._kick.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="opcua-late-tags")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.period_s)
            self._kick.clear()
            try:
                self.add()
            except Exception:
                _log.exception("OPC UA model update for new tags failed")

    def add(self) -> int:
        """Add tags defined in the image since the model was built; returns how many."""
        model = self._model
        if model is None:
            return 0
        if len(self.image) <= len(model.builder.vars):
            return 0
        new = [t for t in self.image.tags() if t.name not in model.builder.vars]
        if not new:
            return 0
        added = model.builder.build_instances(model.root, new, model.types)
        self.added += added
        self._on_nodes(model.factory.created)
        _log.info("OPC UA model: %d tags added after start", added)
        return added

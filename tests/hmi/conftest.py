from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from hmi.app import HmiApp
from hmi.client import GridClient

from .plant import PASSWORDS, Plant, start_plant
from .service import USERS, RealService


@pytest.fixture
async def plant(tmp_path: Path) -> AsyncIterator[Plant]:
    p = await start_plant(tmp_path)
    yield p
    await p.stop()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RealService]:
    """`gridctl run` with the small simulated plant (tests/hmi/service.py), up and ready."""
    svc = RealService(tmp_path)
    try:
        yield svc.start()
    finally:
        svc.close()


def make_real_app(service: RealService, user: str | None = None) -> HmiApp:
    client = GridClient(
        service.url,
        user,
        USERS[user] if user else None,
        security="none",
        flush_interval=0.1,
        publishing_interval_ms=100,
    )
    return HmiApp(client)


def make_app(plant: Plant, user: str | None = None) -> HmiApp:
    client = GridClient(
        plant.url,
        user,
        PASSWORDS[user] if user else None,
        security="none",
        flush_interval=0.1,
        publishing_interval_ms=50,
    )
    return HmiApp(client)


async def wait_for(pilot, predicate: Callable[[], object], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


async def ready(pilot, app: HmiApp) -> None:
    """Connected, plant discovered and first values shown."""
    await app.client.wait_connected(10)
    await wait_for(pilot, lambda: app.client.get("@alarms/Active") is not None)
    await pilot.pause(0.2)
    await asyncio.sleep(0)

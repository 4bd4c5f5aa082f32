import asyncio
import gc

import pytest

from controller.cycle import CycleTask
from controller.gc_pacing import QuietGc


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


async def test_young_collections_happen_after_fast_cycles_not_in_them():
    saved = gc.get_threshold()
    fast = CycleTask("fast", 0.005, spin_s=0.001)
    in_cycle = []
    collected_in_cycle = []

    def program(deadline: float) -> None:
        in_cycle.append(True)
        before = pacer.collections[:]
        for _ in range(3_000):  # allocate past the young threshold inside the cycle
            Node()
        collected_in_cycle.append(before != pacer.collections)
        in_cycle.pop()

    pacer = QuietGc(fast.after_cycle, young_threshold=1_000, backstop=1_000_000)
    collected_during: list[bool] = []
    gc.callbacks.append(lambda phase, info: collected_during.append(bool(in_cycle)))
    fast.attach("allocate", program)
    fast.start()
    pacer.start()
    try:
        assert gc.get_threshold()[0] == 1_000_000  # CPython's own trigger is only a backstop
        await asyncio.sleep(0.3)
    finally:
        await pacer.stop()
        await fast.stop()
        gc.callbacks.pop()
    assert gc.get_threshold() == saved
    assert sum(pacer.collections) >= 10
    assert pacer.collections[1] >= 1  # escalates to the middle generation like CPython does
    assert not any(collected_in_cycle)
    assert not any(collected_during)  # no collection ran while a cycle was running
    assert pacer.pause.count == sum(pacer.collections)


async def test_a_stopped_fast_task_does_not_spin_the_pacer():
    fast = CycleTask("fast", 0.005, spin_s=0.001)  # never started: no quiet points
    pacer = QuietGc(fast.after_cycle, young_threshold=100, backstop=1_000_000)
    pacer.start()
    ticks = 0

    async def other() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    t = asyncio.create_task(other())
    await asyncio.sleep(0.1)
    t.cancel()
    await pacer.stop()
    assert ticks > 20  # the loop stayed responsive


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="gc_young_threshold"):
        QuietGc(lambda: asyncio.sleep(0), young_threshold=5_000, backstop=1_000)

import asyncio

import pytest

from controller.process_image import ProcessImage, Quality, TagError
from controller.quality_reason import Reason


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_new_tag_is_bad_until_first_read():
    image = ProcessImage()
    image.define("buses/b1/meters/000000000161/voltage_a", "V")
    v = image.get("buses/b1/meters/000000000161/voltage_a")
    assert v.quality is Quality.BAD
    assert v.reason == "not yet read"
    assert image.value("buses/b1/meters/000000000161/voltage_a") is None


def test_write_carries_quality_and_timestamps():
    clock = FakeClock()
    image = ProcessImage(clock)
    image.define("m/p", "kW")
    clock.t += 5
    assert image.write("m/p", 1.25, source_time=clock.t - 0.2)
    v = image.get("m/p")
    assert (v.value, v.quality, v.source_time, v.server_time) == (
        1.25,
        Quality.GOOD,
        clock.t - 0.2,
        clock.t,
    )
    assert image.value("m/p") == 1.25


def test_unknown_tag_and_unit_conflict_are_named():
    image = ProcessImage()
    image.define("a/b", "V")
    with pytest.raises(TagError, match="unknown tag 'a/c'"):
        image.write("a/c", 1)
    with pytest.raises(TagError, match="already defined with unit 'V'"):
        image.define("a/b", "A")


def test_only_changes_are_notified_and_queue_is_bounded():
    image = ProcessImage()
    image.define("x")
    q = image.subscribe("test", maxsize=3)
    image.write("x", 1)
    assert not image.write("x", 1)  # same value, same quality: no notification
    for i in range(2, 7):
        image.write("x", i)
    assert q.dropped == 3
    assert [v.value for _, v in q.drain()] == [4, 5, 6]


def test_invalidate_keeps_last_value_with_reason():
    image = ProcessImage()
    for n in ("bus/m1/u", "bus/m1/i", "bus/m2/u"):
        image.define(n)
        image.write(n, 230.0)
    assert image.invalidate("bus/m1/", "meter offline: 3 timeouts") == 2
    v = image.get("bus/m1/u")
    assert (v.value, v.quality, v.reason) == (230.0, Quality.BAD, "meter offline: 3 timeouts")
    assert image.get("bus/m2/u").quality is Quality.GOOD


async def test_get_batch_waits_for_a_change():
    image = ProcessImage()
    image.define("x")
    q = image.subscribe("pub")

    async def later() -> None:
        await asyncio.sleep(0.01)
        image.write("x", 42)

    task = asyncio.create_task(later())
    batch = await asyncio.wait_for(q.get_batch(), 1)
    await task
    assert [(t.name, v.value) for t, v in batch] == [("x", 42)]


def test_a_code_change_alone_is_a_change_and_the_new_tag_is_not_yet_polled():
    image = ProcessImage()
    image.define("m/u", "V")
    assert image.get("m/u").code is Reason.NOT_YET_POLLED
    q = image.subscribe("test")
    assert image.write("m/u", 230.0, Quality.BAD, "no reply", code=Reason.NO_ANSWER)
    # same value, quality and text; only the cause differs: clients must see it
    assert image.write("m/u", 230.0, Quality.BAD, "no reply", code=Reason.QUARANTINED)
    assert not image.write("m/u", 230.0, Quality.BAD, "no reply", code=Reason.QUARANTINED)
    assert [v.code for _, v in q.drain()] == [Reason.NO_ANSWER, Reason.QUARANTINED]
    assert image.invalidate("m/", "bus down", code=Reason.LINK_DOWN) == 1
    assert image.get("m/u").code is Reason.LINK_DOWN


async def test_a_mark_is_due_only_after_every_change_queued_before_it():
    image = ProcessImage()
    image.define("x")
    q = image.subscribe("test", maxsize=3)
    image.write("x", 1)
    image.write("x", 2)
    q.mark("after 2")
    image.write("x", 3)
    assert q.due_marks() == []
    assert [v.value for _, v in q.drain(1)] == [1]
    assert q.due_marks() == []  # 2 still queued
    assert [v.value for _, v in q.drain(1)] == [2]
    assert q.due_marks() == ["after 2"]
    # a dropped change counts as gone: [3] queued, 4 and 5 fill it (maxsize 3), 6 drops 3
    q.mark("after 3")
    for v in (4, 5, 6):
        image.write("x", v)
    assert q.dropped == 1 and q.due_marks() == ["after 3"]
    # a mark alone wakes a waiting consumer, with no changes to hand out
    q.drain()
    q.mark("alone")
    assert await asyncio.wait_for(q.get_batch(), 1) == []
    assert q.due_marks() == ["alone"]

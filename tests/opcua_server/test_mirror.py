"""The server process's mirror of the controller's tags, fed frame by frame.

Before the server subscribes, rows are the tags' current values (the model is
built from them); after, they go to its queue in arrival order, and the
mirror keeps a value only for what the publisher hands back (tags the model
does not have yet).
"""

from __future__ import annotations

import pytest

from controller.process_image import Quality
from controller.quality_reason import Reason
from opcua_server.channel import ChannelError
from opcua_server.process import MirrorImage

NAME = "buses/b/meters/000000000001/voltage_a"


def mirror() -> MirrorImage:
    image = MirrorImage()
    image.define_row([0, NAME, "V", "phase A", 230.0, 0, "", 100.0, 100.5, 0])
    return image


def test_before_the_server_subscribes_rows_are_the_current_values():
    image = mirror()
    assert image.get(NAME).value == 230.0
    image.apply_rows([[0, 231.5, 1, "substitute", 101.0, 101.5, int(Reason.STALE)]])
    current = image.get(NAME)
    assert (current.value, current.quality, current.reason) == (
        231.5,
        Quality.UNCERTAIN,
        "substitute",
    )
    assert (current.source_time, current.server_time) == (101.0, 101.5)
    assert current.code is Reason.STALE
    assert image.backlog() == 0


def test_after_it_subscribes_rows_queue_in_order_and_definitions_join_them():
    image = mirror()
    queue = image.subscribe("opcua", 100)
    image.apply_rows([[0, 231.0, 0, "", 101.0, 101.0, 0], [0, 232.0, 0, "", 102.0, 102.0, 0]])
    image.define_row([1, "late/tag", "kW", "", 5.0, 0, "", 103.0, 103.0, 0])
    image.apply_rows([[1, 6.0, 0, "", 104.0, 104.0, 0]])
    assert image.backlog() == 4
    assert [list(r)[:2] for r in queue.drain()] == [[0, 231.0], [0, 232.0], [1, 5.0], [1, 6.0]]
    # The queue is where the values went: the mirror was not written...
    assert image.get(NAME).value == 230.0
    # ...until the publisher hands a row back for a tag the model lacks.
    image.keep([1, 6.0, 0, "", 104.0, 104.0, 0])
    assert image.get("late/tag").value == 6.0


def test_the_queue_is_bounded_drop_oldest_and_counted():
    image = mirror()
    queue = image.subscribe("opcua", 3)
    image.apply_rows([[0, float(v), 0, "", 1.0, 1.0, 0] for v in range(5)])
    assert queue.dropped == 2
    assert [r[1] for r in queue.drain()] == [2.0, 3.0, 4.0]


def test_one_subscriber_and_malformed_rows_are_refused_by_name():
    image = mirror()
    queue = image.subscribe("opcua", 10)
    with pytest.raises(ValueError, match="one subscriber"):
        image.subscribe("other", 10)
    with pytest.raises(ChannelError, match="tag id 7, which was never defined"):
        image.apply_rows([[7, 1.0, 0, "", 1.0, 1.0, 0]])
    with pytest.raises(ChannelError, match="expected 7"):
        image.apply_rows([[0, 1.0, 0]])
    # A refused frame queues nothing, not even its good rows.
    with pytest.raises(ChannelError):
        image.apply_rows([[0, 9.0, 0, "", 1.0, 1.0, 0], [8, 1.0, 0, "", 1.0, 1.0, 0]])
    assert len(queue) == 0
    image.unsubscribe(queue)
    image.apply_rows([[0, 240.0, 0, "", 2.0, 2.0, 0]])
    assert image.get(NAME).value == 240.0


def test_command_states_from_the_channel_are_checked_by_name():
    from opcua_server.process import command_states

    assert command_states({"c-1": ["confirmed", "read back open"]}) == {
        "c-1": ("confirmed", "read back open")
    }
    with pytest.raises(ChannelError, match="'states' must be a map"):
        command_states([["c-1", "confirmed", ""]])
    with pytest.raises(ChannelError, match=r"state of 'c-1' must be \[state, reason\]"):
        command_states({"c-1": ["confirmed"]})
    with pytest.raises(ChannelError, match="state of 7 must be"):
        command_states({7: ["confirmed", ""]})

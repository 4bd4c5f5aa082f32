"""The item registry: every scheme item type has exactly one handler, found by its type."""

import typing

import pytest

from controller.verification import items
from controller.verification.items import ItemHandler, handler_for, handles, registered_item_types
from controller.verification.scheme import (
    AppearanceItem,
    BasicErrorItem,
    ClockItem,
    CommunicationItem,
    ConstantItem,
    CostControlItem,
    CreepItem,
    Item,
    SchemeError,
    StartingItem,
    WithstandItem,
    parse_scheme,
)

# the nine kinds a scheme may list, written out: a kind added to the scheme
# without a handler (or a handler left for a removed kind) fails here
NINE = {
    AppearanceItem,
    WithstandItem,
    StartingItem,
    CreepItem,
    BasicErrorItem,
    ConstantItem,
    ClockItem,
    CommunicationItem,
    CostControlItem,
}


def test_every_scheme_item_type_has_a_handler():
    union = typing.get_args(typing.get_args(Item)[0])
    assert set(union) == NINE
    assert registered_item_types() == NINE


TWO = parse_scheme(
    {
        "name": "two",
        "version": 1,
        "accuracy_class": "1",
        "items": [{"kind": "communication"}, {"kind": "creep"}],
    }
)


def test_handler_found_by_the_items_type():
    scheme = TWO
    assert type(handler_for(scheme, 0)) is items.Communication
    assert type(handler_for(scheme, 1)) is items.Creep


def test_a_second_handler_for_a_type_is_refused_and_the_first_kept():
    before = handler_for(TWO, 1)
    with pytest.raises(ValueError, match="CreepItem: a handler is already registered"):

        @handles(CreepItem)
        class OtherCreep(ItemHandler[CreepItem]):
            pass

    assert handler_for(TWO, 1) is before
    assert registered_item_types() == NINE


def test_an_item_type_without_a_handler_is_a_scheme_error_naming_it():
    class Unhandled(CommunicationItem):
        pass

    odd = TWO.model_copy(update={"items": [*TWO.items, Unhandled()]})
    with pytest.raises(SchemeError, match=r"items\[2\]: no handler for kind 'communication'"):
        handler_for(odd, 2)

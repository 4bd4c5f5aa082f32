"""Smart-meter warehouse (AS/RS): racks, stacker cranes, conveyors, orders and inventory.

The service starts it with :class:`controller.warehouse.service.Warehouse`; the
pieces below are usable on their own (and are tested that way).
"""

"""The warehouse's tables (``wh_*``), as one step of the journal's schema.

``controller.journal.MIGRATIONS`` applies it; the inventory
(``controller.warehouse.inventory``) owns the queries. Every statement is
``IF NOT EXISTS`` because journal files written before the step joined the
migrations already hold these tables (the warehouse created them itself).
Kept in the base layer so the journal's schema does not depend on the domain.

A partial unique index makes the database itself refuse two boxes in one slot
or on one fork (``wh_box_place``).
"""

from __future__ import annotations

WAREHOUSE_SCHEMA = """
    CREATE TABLE IF NOT EXISTS wh_box (
        barcode TEXT PRIMARY KEY,
        klass TEXT NOT NULL CHECK (klass IN ('unverified', 'qualified', 'rejected')),
        location TEXT NOT NULL,
        arrived_at REAL NOT NULL,
        verified_at REAL,
        order_id INTEGER,
        updated_at REAL NOT NULL
    );
    -- one box per slot and per fork, enforced by the database itself
    CREATE UNIQUE INDEX IF NOT EXISTS wh_box_place ON wh_box(location)
        WHERE location GLOB 'R*' OR location GLOB 'CRANE:*';
    CREATE TABLE IF NOT EXISTS wh_meter (
        address TEXT PRIMARY KEY,
        box TEXT NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('new', 'qualified', 'rejected', 'returned')),
        verified_at REAL,
        batch TEXT,
        district TEXT
    );
    CREATE INDEX IF NOT EXISTS wh_meter_box ON wh_meter(box);
    CREATE TABLE IF NOT EXISTS wh_slot (
        code TEXT PRIMARY KEY,
        reserved_by INTEGER,
        blocked TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE IF NOT EXISTS wh_order (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        params TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE IF NOT EXISTS wh_order_box (
        order_id INTEGER NOT NULL,
        barcode TEXT NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (order_id, barcode)
    );
    CREATE TABLE IF NOT EXISTS wh_task (
        id INTEGER PRIMARY KEY,
        order_id INTEGER,
        aisle INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('store', 'retrieve', 'relocate')),
        barcode TEXT NOT NULL,
        src TEXT NOT NULL,
        dst TEXT,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        step TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS wh_task_open ON wh_task(state) WHERE state IN ('queued', 'active', 'held');
    -- the verification line fed from the warehouse: one row per batch (see line_feed)
    CREATE TABLE IF NOT EXISTS wh_line_feed (
        batch TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        meter_type TEXT NOT NULL,
        out_order INTEGER NOT NULL,
        return_order INTEGER,
        reject_order INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE IF NOT EXISTS wh_event (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        kind TEXT NOT NULL,
        order_id INTEGER,
        task_id INTEGER,
        barcode TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
"""

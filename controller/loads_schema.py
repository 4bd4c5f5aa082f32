"""The loads' tables (``ld_*``), as steps of the journal's schema.

``controller.journal.MIGRATIONS`` applies them in order; the loads runtime
(``controller.loads.runtime``) owns the queries. The steps are idempotent
because journal files written before they joined the migrations already hold
some of them (the runtime applied them itself, counting in ``ld_meta``): the
column a step adds is added only where it is missing (``LOADS_COLUMNS``).
Kept in the base layer so the journal's schema does not depend on the domain.
"""

from __future__ import annotations

import sqlite3

LOADS_SCHEMA: list[str] = [  # steps in order; the tariff-register column follows
    """
    CREATE TABLE IF NOT EXISTS ld_accounts (
        id           TEXT PRIMARY KEY,
        balance      TEXT NOT NULL,      -- decimal text
        last_reading TEXT,               -- kWh, decimal text
        last_at      REAL,
        tripped      INTEGER NOT NULL DEFAULT 0,
        alarm_sent   INTEGER NOT NULL DEFAULT 0,
        updated      REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS ld_ledger (
        seq           INTEGER PRIMARY KEY,
        account       TEXT NOT NULL,
        at            REAL NOT NULL,
        kind          TEXT NOT NULL,     -- recharge, usage, flag
        amount        TEXT NOT NULL,
        balance_after TEXT NOT NULL,
        energy_kwh    TEXT,
        reading_kwh   TEXT,
        price         TEXT,
        ref           TEXT UNIQUE,       -- recharge reference: a second use is the same recharge
        who           TEXT NOT NULL,
        why           TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS ld_ledger_by_account ON ld_ledger(account, seq);
    CREATE TABLE IF NOT EXISTS ld_lockouts (
        load  TEXT PRIMARY KEY,
        who   TEXT NOT NULL,
        why   TEXT NOT NULL,
        since REAL NOT NULL
    );
    """,
    # an engineer's demand-limit override stays in force across restarts until cleared
    """
    CREATE TABLE IF NOT EXISTS ld_demand_overrides (
        grp      TEXT PRIMARY KEY,
        limit_kw REAL NOT NULL,
        who      TEXT NOT NULL,
        why      TEXT NOT NULL,
        ref      TEXT NOT NULL DEFAULT '',
        since    REAL NOT NULL
    );
    """,
]


def tariff_registers_step(conn: sqlite3.Connection) -> str:
    """Tariff-register billing: T1..T4 at the last billed reading, decimal text "t1 t2 t3 t4".

    SQLite has no ``ADD COLUMN IF NOT EXISTS``: a file the runtime had brought
    to its step 3 holds the column already. Its old step counter goes too."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(ld_accounts)")}
    add = (
        ""
        if "last_registers" in columns
        else "ALTER TABLE ld_accounts ADD COLUMN last_registers TEXT;"
    )
    return add + "\nDROP TABLE IF EXISTS ld_meta;"

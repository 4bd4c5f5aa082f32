"""The verification line's result tables, as steps of the one journal's schema.

The journal applies every step in order (``controller.journal.MIGRATIONS``); the
results repository (``controller.verification.results``) owns the queries and
applies the same steps when it runs on a file of its own. Kept in the base layer
so the journal's schema does not depend on the domain's code.
"""

from __future__ import annotations

RESULTS_SCHEMA: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS vl_schemes (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE IF NOT EXISTS vl_batches (
        batch_id TEXT PRIMARY KEY,
        scheme_name TEXT NOT NULL,
        scheme_version INTEGER NOT NULL,
        scheme_hash TEXT NOT NULL,
        meter_type TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS vl_meters (
        batch_id TEXT NOT NULL REFERENCES vl_batches(batch_id),
        barcode TEXT NOT NULL,
        address TEXT NOT NULL,
        seq INTEGER NOT NULL,
        unit INTEGER NOT NULL,
        station INTEGER NOT NULL,
        state TEXT NOT NULL,
        verdict TEXT NOT NULL DEFAULT '',
        updated REAL NOT NULL,
        PRIMARY KEY (batch_id, barcode)
    );
    CREATE TABLE IF NOT EXISTS vl_item_runs (
        batch_id TEXT NOT NULL,
        barcode TEXT NOT NULL,
        item_index INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        started REAL NOT NULL,
        ended REAL,
        PRIMARY KEY (batch_id, barcode, item_index, attempt)
    );
    CREATE TABLE IF NOT EXISTS vl_results (
        batch_id TEXT NOT NULL,
        barcode TEXT NOT NULL,
        item_index INTEGER NOT NULL,
        point_index INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        kind TEXT NOT NULL,
        point TEXT NOT NULL,
        station INTEGER NOT NULL,
        samples BLOB NOT NULL,
        average TEXT,
        rounded TEXT,
        limit_low TEXT,
        limit_high TEXT,
        unit TEXT NOT NULL,
        verdict TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        started REAL NOT NULL,
        ended REAL NOT NULL,
        scheme_version INTEGER NOT NULL,
        PRIMARY KEY (batch_id, barcode, item_index, point_index)
    );
    CREATE INDEX IF NOT EXISTS vl_results_batch ON vl_results(batch_id, barcode);
    """,
]

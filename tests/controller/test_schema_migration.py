"""One migration list for every table of the journal file, and old files migrating forward.

``data/journal_v4.sql`` is a file as the previous code wrote it: the journal at
user_version 4, the warehouse's tables from its own ``create_schema``, the loads'
tables from their own install (``ld_meta`` = 3, ``last_registers`` present), and
a few rows in each.
"""

import sqlite3
from pathlib import Path

import pytest

from controller.journal import MIGRATIONS, Journal
from controller.verification.results import ResultsRepository
from controller.warehouse.inventory import Inventory, InventoryError, open_db
from controller.warehouse.rack import BoxClass

OLD_FILE = Path(__file__).parent / "data" / "journal_v4.sql"


def _old_journal(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(OLD_FILE.read_text())
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    return path


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_every_table_comes_from_the_migration_list(tmp_path):
    j = Journal(tmp_path / "new.sqlite")
    assert j.open() == len(MIGRATIONS)
    j.close()
    conn = sqlite3.connect(tmp_path / "new.sqlite")
    tables = _tables(conn)
    # the same tables as the old file held, less the loads' own step counter
    old = sqlite3.connect(_old_journal(tmp_path / "old.sqlite"))
    assert tables == _tables(old) - {"ld_meta"}
    assert {"wh_box", "wh_task", "wh_order", "ld_accounts", "ld_demand_overrides"} <= tables
    columns = {r[1] for r in conn.execute("PRAGMA table_info(ld_accounts)")}
    assert "last_registers" in columns


async def test_a_file_written_by_the_previous_code_opens_and_migrates(tmp_path):
    path = _old_journal(tmp_path / "j.sqlite")
    j = Journal(path)
    assert j.open() == len(MIGRATIONS)
    try:
        # the rows written before are all there
        assert [
            tuple(r) for r in j.query("SELECT id, balance, last_registers FROM ld_accounts")
        ] == [("acc1", "12.50", "1.00 2.00 3.00 4.00")]
        assert [tuple(r) for r in j.query("SELECT barcode, location FROM wh_box")] == [
            ("B0001", "R01-B001-L01")
        ]
        assert [tuple(r) for r in j.query("SELECT id, kind, state FROM wh_order")] == [
            (1, "inventory_count", "created")
        ]
        assert j.query("SELECT name FROM sqlite_master WHERE name = 'ld_meta'") == []
        # and the file takes new writes of every part
        await j.commit(
            [
                (
                    "INSERT INTO ld_ledger(account, at, kind, amount, balance_after, who, why) "
                    "VALUES ('acc1', 1.0, 'recharge', '5', '17.50', 'op', 'test')",
                    (),
                )
            ]
        )
    finally:
        j.close()
    inv = Inventory(open_db(str(path)))
    inv.create_schema()  # already current: a no-op
    inv.add_box("B0002", BoxClass.UNVERIFIED, "R01-B002-L01", 2.0, [("000000000002", "t", "new")])
    # the unique place index came across: moving B0002 into B0001's slot is refused
    with pytest.raises(sqlite3.IntegrityError, match=r"wh_box\.location"):
        inv.set_location("B0002", "R01-B001-L01", 3.0)
    assert sorted(b.barcode for b in inv.boxes("R*")) == ["B0001", "B0002"]
    assert ResultsRepository(inv.conn, install=False).batches() == []
    assert inv.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    inv.conn.close()
    # opening it again changes nothing
    j2 = Journal(path)
    assert j2.open() == len(MIGRATIONS)
    j2.close()


def test_no_step_splits_sql_on_semicolons():
    root = Path(__file__).parents[2] / "controller"
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if 'split(";")' in p.read_text() or "split(';')" in p.read_text()
    ]
    assert offenders == []


def test_a_box_added_to_an_occupied_slot_is_refused_and_the_other_box_kept(tmp_path):
    # INSERT OR REPLACE would have deleted B0001's row to satisfy the one-box-per-slot index
    inv = Inventory(open_db(str(tmp_path / "j.sqlite")))
    inv.create_schema()
    inv.add_box("B0001", BoxClass.UNVERIFIED, "R01-B001-L01", 1.0, [("000000000001", "t", "new")])
    with pytest.raises(InventoryError, match="R01-B001-L01: already holds box B0001"):
        inv.add_box(
            "B0002", BoxClass.UNVERIFIED, "R01-B001-L01", 2.0, [("000000000002", "t", "new")]
        )
    assert [b.barcode for b in inv.boxes("R*")] == ["B0001"]

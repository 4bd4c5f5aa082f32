import argparse
import json
import signal

from controller.warehouse import cli
from controller.warehouse.inventory import Inventory, open_db
from controller.warehouse.rack import BoxClass

from .test_modbus import FAST, free_port
from .test_sigkill import _spawn, wait_listening


def _parser():
    p = argparse.ArgumentParser()
    cli.add_parser(p.add_subparsers())
    return p


def test_inventory_count_reports_differences(tmp_path, capsys):
    port = free_port()
    cfg_path = tmp_path / "site.toml"
    cranes = FAST["cranes"][0]
    cfg_path.write_text(
        "[warehouse]\nrows = 2\nbays = 5\nlevels = 3\n[[warehouse.cranes]]\n"
        + "".join(f"{k} = {v}\n" for k, v in cranes.items())
    )
    db = tmp_path / "j.db"
    inv = Inventory(open_db(str(db)))
    inv.create_schema()
    inv.add_box("GHOST", BoxClass.UNVERIFIED, "R01-B001-L01", 0.0, [("000000000001", "t", "new")])
    plant = _spawn("-m", "drivers.sim.warehouse", "--port", str(port), "--config", json.dumps(FAST))
    try:
        wait_listening(port, plant)
        args = _parser().parse_args(
            [
                "inventory",
                "count",
                "--db",
                str(db),
                "--plant",
                f"127.0.0.1:{port}",
                "--config",
                str(cfg_path),
            ]
        )
        assert args.func(args) == 1
        out = capsys.readouterr().out
        assert "scanned 30 slots, 1 differences" in out
        assert "R01-B001-L01: journal GHOST, rack (empty)" in out
        args = _parser().parse_args(
            [
                "inventory",
                "count",
                "--db",
                str(db),
                "--plant",
                f"127.0.0.1:{port}",
                "--config",
                str(cfg_path),
                "--slot",
                "R02-B001-L01",
                "--json",
            ]
        )
        assert args.func(args) == 0
        assert json.loads(capsys.readouterr().out) == {"slots": 1, "differences": []}
    finally:
        plant.send_signal(signal.SIGTERM)
        plant.wait(timeout=10)


def test_inventory_count_bad_input(tmp_path, capsys):
    args = _parser().parse_args(["inventory", "count", "--db", "x.db", "--plant", "nohost"])
    assert args.func(args) == 2
    assert "--plant: expected HOST:PORT" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[warehouse]\nbays = 0\n")
    args = _parser().parse_args(["inventory", "count", "--db", "x.db", "--config", str(bad)])
    assert args.func(args) == 2
    assert "warehouse.bays" in capsys.readouterr().err

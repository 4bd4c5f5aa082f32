from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from controller.plan import render
from drivers.config import load_field_config

REPO = Path(__file__).resolve().parents[2]


def test_demo_plan_fits_every_bus() -> None:
    text, ok = render(load_field_config(REPO / "config" / "demo.toml"), None)
    assert ok
    lines = [line for line in text.splitlines() if "dlt645" in line]
    assert len(lines) == 8 and all(line.endswith("ok") for line in lines)
    assert "not wire-limited" in text


def test_site_example_is_valid_and_planned() -> None:
    text, ok = render(load_field_config(REPO / "config" / "site-example.toml"), None)
    assert ok and "feeder1" in text


def test_overloaded_bus_warns_and_exits_nonzero(tmp_path) -> None:
    cfg = tmp_path / "over.toml"
    cfg.write_text(
        """
[poll_groups.fast]
period_s = 1
items = ["0201FF00", "0202FF00"]
[[buses]]
name = "busy"
protocol = "dlt645"
port = "/dev/ttyUSB9"
meter_block = { first_address = "000000000001", count = 20, groups = ["fast"] }
"""
    )
    done = subprocess.run(
        [sys.executable, "-m", "controller", "plan", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 1
    assert "WARNING: cannot meet its periods" in done.stdout and "busy" in done.stdout


def test_plan_bad_config_names_the_field(tmp_path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[buses]]\nname = "b"\nprotocol = "dlt645"\nport = "/dev/ttyS0"\nparity = "Q"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "controller", "plan", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    # the root loader keeps the union tag in the path (buses[0].dlt645.parity)
    assert "buses[0]." in done.stderr and ".parity: parity must be one of N, E, O" in done.stderr

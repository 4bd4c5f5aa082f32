"""The import contract in pyproject.toml, run by lint-imports the way `make lint` runs it,
on a scratch copy of the packages: it holds for the code as it is, and a simulator
module that imports the controller breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("controller", "drivers", "opcua_server", "hmi")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The four root packages (Python sources only) and pyproject.toml, copied."""
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"),
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), "import-linter is not installed (make .venv/.deps)"
    env = dict(os.environ, PYTHONPATH=str(tree))  # the copy, not an installed checkout
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contract_holds_for_the_simulator_as_it_is(tree: Path) -> None:
    result = _lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "drivers.sim must not import controller KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "imported"),
    [
        ("meter", "from controller import _core_rs as core\n", "controller"),
        ("farm", "from controller.task_stop import stop_task\n", "controller.task_stop"),
        ("dlt645_wire", "import controller.cpu_affinity\n", "controller.cpu_affinity"),
    ],
)
def test_a_simulator_module_importing_the_controller_breaks_it(
    tree: Path, module: str, line: str, imported: str
) -> None:
    path = tree / "drivers" / "sim" / f"{module}.py"
    path.write_text(path.read_text() + "\n" + line)
    result = _lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "drivers.sim must not import controller BROKEN" in result.stdout
    assert f"drivers.sim.{module} -> {imported}" in result.stdout

"""`gridctl` command line.

Each subcommand lives in the module that owns its concept; this file only
wires them into one argparse tree. Modules are imported lazily so that
`gridctl frame decode` does not pay for asyncua or Textual.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module providing `add_parser(subparsers)`; the parser sets `func`.
SUBCOMMANDS: dict[str, str] = {
    "frame": "controller.frame_tool",
    "check-config": "controller.config",
    "run": "controller.service",
    "status": "controller.status",
    "sim": "controller.sim_cli",
    "plan": "controller.plan",
    "results": "controller.verification.cli",
    "hmi": "controller.hmi_cli",
    "inventory": "controller.warehouse.cli",
    "certs": "controller.certs_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridctl",
        description="gridctl: meter polling, load switching, verification line and warehouse "
        "controller with an OPC UA server.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

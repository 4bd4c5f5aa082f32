"""`gridctl frame`: decode and encode DL/T 645 frames for field engineers."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frame", help="decode or encode DL/T 645-2007 frames")
    p.set_defaults(func=lambda _a: p.print_help())

"""``gridctl hmi``: the operator console (an OPC UA client of gridctl)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

DEFAULT_URL = "opc.tcp://127.0.0.1:4840/gridctl"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hmi",
        help="operator console (Textual, works over SSH)",
        description="Operator console: an OPC UA client of the gridctl server. Without --user "
        "the session is anonymous and read-only. The password is read from GRIDCTL_PASSWORD "
        "or prompted for.",
    )
    p.add_argument(
        "--url",
        default=DEFAULT_URL,
        type=_endpoint,
        help=f"server endpoint (default {DEFAULT_URL})",
    )
    p.add_argument("--user", default=None, help="OPC UA user name (role decides the commands)")
    p.add_argument(
        "--security",
        choices=("auto", "none", "sign", "encrypt"),
        default="auto",
        help="channel security (auto: Basic256Sha256 SignAndEncrypt when the server offers it)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the HMI keeps its client certificate (default ~/.local/state/gridctl-hmi)",
    )
    p.set_defaults(func=run)


def _endpoint(text: str) -> str:
    """An opc.tcp://HOST:PORT[/PATH] URL; anything else would only retry for ever."""
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "opc.tcp" or not parts.hostname or not port:
        raise argparse.ArgumentTypeError(
            f"must be opc.tcp://HOST:PORT[/PATH] with PORT 1..65535, got {text!r}"
        )
    return text


def run(args: argparse.Namespace) -> int:
    password: str | None = None
    if args.user:
        password = os.environ.get("GRIDCTL_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                print("gridctl hmi: set GRIDCTL_PASSWORD or run in a terminal", file=sys.stderr)
                return 2
            password = getpass.getpass(f"password for {args.user}: ")
    from hmi.app import HmiApp
    from hmi.client import GridClient

    client = GridClient(
        args.url, args.user, password, security=args.security, state_dir=args.state_dir
    )
    HmiApp(client).run()
    return 0

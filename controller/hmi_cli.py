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
    p.add_argument(
        "--cpus",
        type=_cpu_list,
        default=None,
        metavar="LIST",
        help="run the HMI only on these CPUs (a Linux CPU list: 1, 1-3, 0,2), e.g. to keep "
        "it off the CPUs the controller's tasks are pinned to ([tasks] cpus)",
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


def _cpu_list(text: str) -> frozenset[int]:
    """A Linux CPU list naming CPUs this process may use."""
    from controller.cpu_affinity import available_cpus, check_cpus, parse_cpu_list

    try:
        return check_cpus(parse_cpu_list(text), available_cpus(), leave_one=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    if args.cpus:
        from controller.cpu_affinity import format_cpu_list, pin_process

        # the whole process, before Textual and asyncua start their threads
        try:
            pin_process(os.getpid(), args.cpus)
        except OSError as exc:
            print(
                f"gridctl hmi: cannot run on CPU {format_cpu_list(args.cpus)} ({exc}); "
                "running unpinned",
                file=sys.stderr,
            )
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

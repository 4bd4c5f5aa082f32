"""`gridctl sim`: run the simulated plant, or change a running plant's faults."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from drivers.config import FAULT_KINDS, ConfigFileError, FieldConfig, load_field_config

READY_PREFIX = "gridctl-sim ready "
DEFAULT_CONFIG = "config/demo.toml"


ConfigLoader = Callable[[str], FieldConfig]


def add_parser(sub: argparse._SubParsersAction, load: ConfigLoader = load_field_config) -> None:
    """``load`` reads the config file: the drivers' sections by default; the service's
    CLI passes the whole-file loader, so the warehouse PLC and the site zone come along."""
    p = sub.add_parser("sim", help="run the simulated field plant (meters, Modbus devices)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default %(default)s)")
    p.add_argument("--fast", action="store_true", help="skip wire timing (unit tests)")
    p.add_argument(
        "--exit-with-parent",
        type=int,
        metavar="PID",
        help="stop when process PID (the controller that started us) is gone",
    )
    p.set_defaults(func=_run, load=load)
    sim_sub = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    f = sim_sub.add_parser("fault", help="inject or clear a fault on a running simulator")
    f.add_argument("meter", help="meter address (12 digits)")
    f.add_argument("kind", choices=FAULT_KINDS)
    f.add_argument("--bus", help="bus name, when the address exists on several buses")
    f.add_argument("--off", action="store_true", help="clear the fault instead")
    f.add_argument("--config", default=DEFAULT_CONFIG, help="config naming the control socket")
    f.add_argument("--socket", help="control socket path (overrides the config)")
    f.set_defaults(func=_fault, load=load)
    r = sim_sub.add_parser(
        "relay", help="move a simulated meter's relay without a command (local action, tamper)"
    )
    r.add_argument("meter", help="meter address (12 digits)")
    r.add_argument("state", choices=("open", "closed"))
    r.add_argument("--bus", help="bus name, when the address exists on several buses")
    r.add_argument("--config", default=DEFAULT_CONFIG, help="config naming the control socket")
    r.add_argument("--socket", help="control socket path (overrides the config)")
    r.set_defaults(func=_relay, load=load)


def _run(args: argparse.Namespace) -> int:
    try:
        config = args.load(args.config)
    except ConfigFileError as exc:
        print(f"gridctl sim: {exc}", file=sys.stderr)
        return 2
    serve = _serve(config, fast=True if args.fast else None, parent=args.exit_with_parent)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(serve)
    return uvloop.run(serve)


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != pid:
            print(f"gridctl sim: parent {pid} is gone; stopping", file=sys.stderr)
            stop.set()
            return
        await asyncio.sleep(0.5)


async def _serve(config: object, fast: bool | None, parent: int | None = None) -> int:
    from drivers.sim.plant import SimulatedPlant

    plant = SimulatedPlant(config, fast=fast)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plant.start()
    except OSError as exc:
        print(f"gridctl sim: cannot start: {exc}", file=sys.stderr)
        await plant.stop()
        return 1
    print(READY_PREFIX + json.dumps(plant.ready_info()), flush=True)
    watchdog = asyncio.create_task(_watch_parent(parent, stop)) if parent else None
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
    await plant.stop()
    return 0


def _fault(args: argparse.Namespace) -> int:
    msg = {
        "op": "fault",
        "meter": args.meter,
        "kind": args.kind,
        "on": not args.off,
        "bus": args.bus,
    }
    reply = _request(args, "fault", msg)
    if reply is None:
        return 1
    if not reply.get("ok"):
        print(f"gridctl sim fault: {reply.get('error')}", file=sys.stderr)
        return 2
    print(f"{reply['bus']}/{reply['meter']}: faults = {', '.join(reply['faults']) or 'none'}")
    return 0


def _relay(args: argparse.Namespace) -> int:
    msg = {"op": "relay", "meter": args.meter, "open": args.state == "open", "bus": args.bus}
    reply = _request(args, "relay", msg)
    if reply is None:
        return 1
    if not reply.get("ok"):
        print(f"gridctl sim relay: {reply.get('error')}", file=sys.stderr)
        return 2
    state = "open" if reply["relay_open"] else "closed"
    print(f"{reply['bus']}/{reply['address']}: relay {state}")
    return 0


def _request(args: argparse.Namespace, command: str, msg: dict[str, object]) -> dict | None:
    """Send one request to the simulator named by --socket or the config; None: no simulator."""
    from drivers.sim.control import request

    path = args.socket
    if path is None:
        try:
            path = args.load(args.config).sim.control_socket
        except ConfigFileError as exc:
            print(f"gridctl sim {command}: {exc}", file=sys.stderr)
            return None
    try:
        return asyncio.run(request(Path(path), msg))
    except (OSError, TimeoutError) as exc:
        print(f"gridctl sim {command}: no simulator at {path}: {exc}", file=sys.stderr)
        return None

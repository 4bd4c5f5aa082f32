"""SIGKILL the real service at random moments with load commands in flight.

`gridctl run` is killed and restarted again and again while an operator toggles
three loads over OPC UA (Arm + Execute). The simulated meters live in their own
`gridctl sim` process and survive every kill; at the end the journal (the real
SQLite file) is held against what the meters saw:

- every command is terminal (confirmed / failed / expired / refused) with the
  reason it ended so; each state recorded once, in order;
- every command confirmed in the journal moved its meter's relay exactly once:
  per meter, the 1C commands it honoured (its own ``controls_honoured``
  counter) equal the confirmed commands for its load, and the confirmed ones
  alternate trip / direct close from the closed relay it started with, ending
  in the state the meter shows — so nothing applied twice, nothing applied
  without a command, nothing confirmed that was not applied;
- the meter that is no load was never operated;
- every command id an Execute returned is in the journal (nothing lost); one
  seen settled before a kill keeps that state, settled by its own run.

With the warehouse (the simulated PLC in the same simulator process, demo
stock in the rack) an operator also orders boxes relocated (CreateOrder); the
rack as the PLC holds it must match the journal's inventory box for box, each
completed order was one crane task, and each create_order command must agree
with its order (a create_order left `sent` by a kill is adopted by the
warehouse at restart and ends when its order ends; the generic reconcile, a
device read-back, leaves it alone).

Kills land during start-up (journal open, reconcile, OPC UA start) or after a
random number of submitted commands plus a random fraction of 50 ms (1 s with
crane moves). Seeded: the seed is printed, and GRIDCTL_SIGKILL_SEED replays one.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sqlite3
import time
from pathlib import Path

import msgpack
import pytest
from asyncua import Client

from tests.faults.service_under_kill import (
    LOADS,
    OPEN_ORDERS,
    TERMINAL,
    Dispatcher,
    Operator,
    Service,
    Simulator,
    journal_rows,
    wait_for,
    write_config,
)
from tests.warehouse.test_sigkill import _plant_census

LIFECYCLE = ("armed", "queued", "sent", "confirmed", "failed", "expired", "refused")
SPARE_METER = "000000001004"  # on the line, polled, no load: nothing may switch it


def _seed(default: int) -> int:
    return int(os.environ.get("GRIDCTL_SIGKILL_SEED", default))


def kill_and_restart(tmp_path: Path, kills: int, seed: int, boxes: int = 0) -> None:
    """``kills`` SIGKILLs with load commands (and, with ``boxes``, crane moves) in flight."""
    print(f"SIGKILL seed {seed} ({kills} kills); replay with GRIDCTL_SIGKILL_SEED={seed}")
    rng = random.Random(seed)
    config, endpoint = write_config(tmp_path, boxes)
    db = tmp_path / "var" / "journal.sqlite"
    sim = Simulator(config)
    services: dict[int, Service] = {}
    try:
        for ld in LOADS:
            m = sim.meter(ld.address)
            assert (m["relay_open"], m["controls_honoured"]) == (False, 0), m
        submitted: list[str] = []
        seen_terminal: dict[str, str] = {}
        examined = 0
        for run in range(kills):
            svc = services[run] = Service(config, run)
            if rng.random() < 0.25:
                # a kill during start-up: reconcile, subsystems, OPC UA server start
                wait_for(lambda s=svc: "journal ready" in s.text(), 60, svc.text)
                examined += svc.pending_at_start()
                time.sleep(rng.uniform(0.0, 1.5))  # the random moment, not a wait
                svc.kill()
                continue
            svc.wait_ready()
            examined += svc.pending_at_start()
            workers: list[Operator | Dispatcher] = [Operator(endpoint, sim, db)]
            if boxes:
                workers.append(Dispatcher(endpoint, db, random.Random(rng.random())))
            threads = [w.run_in_thread() for w in workers]
            target = rng.randint(1, 9)
            wait_for(
                lambda ws=workers, n=target: (
                    sum(len(w.submitted) for w in ws) >= n or any(w.errors for w in ws)
                ),
                60,
                lambda ws=workers: f"commands not submitted: {[w.errors for w in ws]}",
            )
            assert not any(w.errors for w in workers), [w.errors for w in workers]
            # the random moment, not a wait: load commands take milliseconds, crane moves
            # about a second
            time.sleep(rng.uniform(0.0, 1.0 if boxes else 0.05))
            svc.kill()
            for w, t in zip(workers, threads, strict=True):
                w.stop.set()
                t.join(timeout=30)
                assert not t.is_alive()
                submitted += w.submitted
                seen_terminal |= getattr(w, "seen_terminal", {})
        final = services[kills] = Service(config, kills)
        final.wait_ready()
        examined += final.pending_at_start()
        # orders a kill interrupted resume; the service stops once they are done
        wait_for(
            lambda: (
                not journal_rows(db, OPEN_ORDERS)
                and not journal_rows(
                    db, "SELECT id FROM commands WHERE state NOT IN (?, ?, ?, ?)", TERMINAL
                )
            ),
            60,
            lambda: f"still open: {journal_rows(db, OPEN_ORDERS)}",
        )
        final.stop()
        check(db, sim, submitted, seen_terminal)
        if boxes:
            check_warehouse(db, asyncio.run(_plant_census(port_of(config))), boxes)
        # the kills caught commands on their way: some were left for a restart to settle
        assert examined > 0
        print(f"{len(submitted)} commands submitted, {examined} left pending by the kills")
    finally:
        for svc in services.values():
            svc.close()
        sim.stop()


def check(db: Path, sim: Simulator, submitted: list[str], seen_terminal: dict[str, str]) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        commands = conn.execute(
            "SELECT id, kind, args, state, reason FROM commands ORDER BY created"
        ).fetchall()
        history: dict[str, list[str]] = {}
        settled_by: dict[str, str] = {}
        for cid, state, who in conn.execute(
            "SELECT command_id, state, who FROM command_transitions ORDER BY seq"
        ):
            history.setdefault(cid, []).append(state)
            settled_by[cid] = who
    finally:
        conn.close()
    ids = {c[0] for c in commands}
    # nothing lost: every id an Execute returned is journaled; what was seen settled
    # before a kill stays as it was, settled by its own run, not by a restart
    assert set(submitted) <= ids, set(submitted) - ids
    states = {c[0]: c[3] for c in commands}
    for cid, state in seen_terminal.items():
        assert states[cid] == state, (cid, state, states[cid])
        assert settled_by[cid] != "reconcile", cid
    for cid, _kind, _args, state, reason in commands:
        assert state in TERMINAL, (cid, state)
        assert reason, (cid, state)  # why it ended, confirmed ones too
        h = history[cid]
        assert h[-1] == state, (cid, h)
        assert len(set(h)) == len(h), (cid, h)  # each state once
        assert h == sorted(h, key=LIFECYCLE.index), (cid, h)  # in lifecycle order
    for load in LOADS:
        seen = sim.meter(load.address)
        mine = [
            (cid, kind, state)
            for cid, kind, args, state, _r in commands
            if msgpack.unpackb(args).get("load") == load.name
        ]
        confirmed = [kind for _cid, kind, state in mine if state == "confirmed"]
        # closed at the start; each applied command moved the relay: trip, close, trip, ...
        assert confirmed == [("trip", "direct_close")[i % 2] for i in range(len(confirmed))], (
            load.name,
            mine,
        )
        assert seen["controls_honoured"] == len(confirmed), (load.name, seen, mine)
        assert seen["relay_open"] is (len(confirmed) % 2 == 1), (load.name, seen, mine)
    assert sim.meter(SPARE_METER)["controls_honoured"] == 0


class CommandOrderDisagree(AssertionError):
    """The journal's command and the warehouse order it created tell different stories."""


def port_of(config: Path) -> int:
    m = re.search(r'plc = "tcp://127\.0\.0\.1:(\d+)"', config.read_text())
    assert m
    return int(m.group(1))


def check_warehouse(db: Path, census: dict[str, list[str]], boxes: int) -> None:
    """The rack as the simulated PLC holds it against the journal's inventory and orders."""
    conn = sqlite3.connect(db)
    try:
        inventory = dict(conn.execute("SELECT barcode, location FROM wh_box"))
        orders = dict(conn.execute("SELECT id, state FROM wh_order"))
        open_tasks = conn.execute(
            "SELECT id, state FROM wh_task WHERE state NOT IN ('done', 'failed', 'cancelled')"
        ).fetchall()
        reserved = conn.execute("SELECT code FROM wh_slot WHERE reserved_by IS NOT NULL").fetchall()
        done_tasks = dict(
            conn.execute(
                "SELECT order_id, count(*) FROM wh_task WHERE state = 'done' GROUP BY order_id"
            )
        )
        commands = conn.execute(
            "SELECT id, state, reason FROM commands WHERE kind = 'create_order'"
        ).fetchall()
        released = dict(
            conn.execute(
                "SELECT command_id, reason FROM command_transitions "
                "WHERE state = 'sent' AND reason GLOB 'order [0-9]*'"
            )
        )
    finally:
        conn.close()
    # every box exactly once in the plant, where the journal has it; none left on the
    # fork or a conveyor (the census lists the fork as CRANE:1, a photo-eye as ?conveyor)
    stock = [f"NEW{i:05d}" for i in range(boxes)]
    assert sorted(census) == stock, census
    for code, places in census.items():
        assert len(places) == 1, f"{code} in the plant twice: {places}"
        assert inventory[code] == places[0], (code, places, inventory[code])
    assert sorted(inventory) == stock
    assert open_tasks == [] and reserved == []
    # each completed relocation moved its box once: one crane task, done
    for order, state in orders.items():
        if state == "completed":
            assert done_tasks.get(order) == 1, (order, done_tasks.get(order))
    # the operator's command and the order agree: confirmed exactly when the order
    # completed; and no order (crane work) without the command that created it
    order_of = {cid: int(reason.split()[1]) for cid, reason in released.items()}
    for cid, state, reason in commands:
        order = order_of.get(cid)
        if order is None:
            continue  # refused, or failed before an order existed
        if (state == "confirmed") != (orders[order] == "completed"):
            raise CommandOrderDisagree(
                f"command {cid} is {state} ({reason}) but order {order} is {orders[order]}"
            )
    unclaimed = set(orders) - set(order_of.values())
    if unclaimed:
        raise CommandOrderDisagree(f"orders {sorted(unclaimed)} have no command journaled as sent")


def test_service_sigkilled_3_times_with_commands_in_flight(tmp_path: Path) -> None:
    kill_and_restart(tmp_path, kills=3, seed=_seed(11))


@pytest.mark.slow
def test_service_sigkilled_24_times_with_commands_in_flight(tmp_path: Path) -> None:
    kill_and_restart(tmp_path, kills=24, seed=_seed(2026))


@pytest.mark.slow
def test_service_sigkilled_20_times_with_crane_moves_in_flight(tmp_path: Path) -> None:
    kill_and_restart(tmp_path, kills=20, seed=_seed(2027), boxes=8)


async def _create_relocation(endpoint: str, box: str) -> str:
    client = Client(endpoint, timeout=10)
    client.set_user("operator")
    client.set_password("demo-operator")
    async with client:
        ns = await client.get_namespace_index("urn:gridctl")
        node = client.get_node(f"ns={ns};s=warehouse")
        return str(await node.call_method(f"{ns}:CreateOrder", "relocation", [box], "kill test"))


def test_order_released_at_sigkill_ends_as_its_order_ends(tmp_path: Path) -> None:
    # one kill at a chosen moment: the order is released (command `sent`) and the crane
    # is on its way; the restarted service finishes the move
    config, endpoint = write_config(tmp_path, boxes=6)
    db = tmp_path / "var" / "journal.sqlite"
    sim = Simulator(config)
    services = {0: Service(config, 0)}
    try:
        services[0].wait_ready()
        cid = asyncio.run(_create_relocation(endpoint, "NEW00000"))
        wait_for(
            lambda: journal_rows(
                db, "SELECT 1 FROM commands WHERE id = ? AND state = 'sent'", (cid,)
            ),
            10,
            lambda: f"{cid} never sent: {journal_rows(db, 'SELECT * FROM commands')}",
        )
        assert journal_rows(db, OPEN_ORDERS), "the order ended before the kill"
        services[0].kill()
        services[1] = Service(config, 1)
        services[1].wait_ready()
        wait_for(lambda: not journal_rows(db, OPEN_ORDERS), 30, lambda: "order never ended")
        services[1].stop()
        check(db, sim, [cid], {})
        check_warehouse(db, asyncio.run(_plant_census(port_of(config))), 6)
    finally:
        for svc in services.values():
            svc.close()
        sim.stop()

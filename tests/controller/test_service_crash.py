"""SIGKILL of `gridctl run` (the real service, on the demo plant) in the middle of
operator trips over OPC UA; restart on the same state directory.

What must hold after the restart: every command the operator was given an id
for is in the journal; none is left armed, queued or sent (pending ones are
reconciled by reading the relay back); nothing confirmed before the kill
changes; and no command is sent to a meter again after the kill (reconciliation
re-reads, it never re-sends)."""

import asyncio
import signal
import sqlite3
import subprocess
import time

from asyncua import Client

from .test_service import Running

LOADS = ("l1001", "l1002", "l1003", "l2005")


async def _trip_all(endpoint: str) -> list[str]:
    """Arm + Execute a trip on each load as fast as the server answers; the ids handed out."""
    client = Client(endpoint, timeout=10)
    client.set_user("operator")
    client.set_password("demo-operator")
    ids: list[str] = []
    async with client:
        ns = await client.get_namespace_index("urn:gridctl")
        for load in LOADS:
            node = client.get_node(f"ns={ns};s=loads/{load}")
            token, _ = await node.call_method(f"{ns}:Arm", "trip", "crash test")
            ids.append(await node.call_method(f"{ns}:Execute", token))
    return ids


def _commands(journal) -> dict[str, tuple[str, list[tuple[str, float]]]]:
    conn = sqlite3.connect(journal)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        out = {}
        for cid, state in conn.execute("SELECT id, state FROM commands"):
            steps = conn.execute(
                "SELECT state, at FROM command_transitions WHERE command_id = ? ORDER BY seq",
                (cid,),
            ).fetchall()
            out[cid] = (state, steps)
        return out
    finally:
        conn.close()


def _restart(first: Running) -> Running:
    """The same config and state directory, as systemd would restart it."""
    again = Running.__new__(Running)
    again.cfg = first.cfg
    again.log = first.log.with_name("service-2.log")
    again._log_file = again.log.open("wb")
    again.proc = subprocess.Popen(
        first.proc.args,
        cwd=first.cfg.parent,
        stdout=again._log_file,
        stderr=subprocess.STDOUT,
    )
    return again


def test_sigkill_mid_trips_then_restart_reconciles_by_read_back(tmp_path):
    first = Running(tmp_path)
    try:
        endpoint = first.wait_for_line(r"opcua ready: (opc\.tcp://\S+)", 60).group(1)
        first.wait_for_line(r"service ready", 30)
        ids = asyncio.run(_trip_all(endpoint))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        killed_at = time.time()
    finally:
        first.close()
    journal = tmp_path / "var" / "journal.sqlite"
    before = _commands(journal)
    assert set(ids) <= set(before), "a command id was handed out before it was journaled"
    confirmed_before = {cid for cid, (state, _) in before.items() if state == "confirmed"}

    # the simulator and the OPC UA process leave with their parent; give them a moment
    time.sleep(2.0)
    second = _restart(first)
    try:
        second.wait_for_line(r"service ready", 60)
        after = _commands(journal)
    finally:
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=10) == 0
        second.close()

    for cid in ids:
        state, steps = after[cid]
        assert state in ("confirmed", "failed"), (cid, state, steps)
        # reconciled by read-back, never sent again after the kill
        assert not [s for s, at in steps if s == "sent" and at > killed_at], (cid, steps)
    for cid in confirmed_before:
        assert after[cid][0] == "confirmed"
    pending_before = [cid for cid in ids if before[cid][0] in ("armed", "queued", "sent")]
    if pending_before:
        assert "commands reconciled" in second.text()

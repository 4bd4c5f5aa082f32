"""`gridctl run` with the demo config: the line comes up in scaled time, says so, publishes it."""

import asyncio
import signal

from asyncua import Client

from tests.controller.test_service import Running


async def _read(endpoint: str, nodes: list[str]) -> list:
    async with Client(endpoint, timeout=10) as client:
        ns = await client.get_namespace_index("urn:gridctl")
        return [await client.get_node(f"ns={ns};s={n}").read_value() for n in nodes]


def test_demo_runs_the_line_in_declared_scaled_time(tmp_path):
    service = Running(tmp_path)  # cwd is tmp_path: schemes come from the installed tree
    try:
        endpoint = service.wait_for_line(r"opcua ready: (opc\.tcp://\S+)").group(1)
        service.wait_for_line(r"service ready")
        text = service.text()
        assert "verification line ready" in text
        assert "SCALED TIME: the simulated rig and the sequencer run 100 times faster" in text
        scale, state, schemes = asyncio.run(
            _read(endpoint, ["line/time_scale", "line/state", "line/schemes"])
        )
        assert (scale, state, schemes) == (100.0, "idle", "class1-single-phase")
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=10) == 0
    finally:
        service.close()

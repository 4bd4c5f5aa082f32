"""CPU isolation: CPU lists, the layout's checks, and a real service's threads and children."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.cpu_affinity import CpuLayout, format_cpu_list, parse_cpu_list, pin_process

ROOT = Path(__file__).resolve().parents[2]
CPUS = frozenset(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="isolation needs at least 2 CPUs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("1", {1}), ("1-3", {1, 2, 3}), ("0,2", {0, 2}), ("0-1,4", {0, 1, 4}), (" 3 , 1", {1, 3})],
)
def test_cpu_lists_parse_as_taskset_writes_them(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


def test_cpu_lists_format_ranges():
    assert format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a Linux CPU list like 1, 1-3 or 0,2 (got '')"),
        ("a", "must be a Linux CPU list like 1, 1-3 or 0,2 (got 'a')"),
        ("1,", "must be a Linux CPU list like 1, 1-3 or 0,2 (got '1,')"),
        ("-1", "must be a Linux CPU list like 1, 1-3 or 0,2 (got '-1')"),
        ("3-1", "range '3-1' runs backwards (got '3-1')"),
    ],
)
def test_bad_cpu_lists_say_what_is_expected(text, message):
    with pytest.raises(ValueError) as err:
        parse_cpu_list(text)
    assert str(err.value) == message


def test_layout_gives_the_rest_of_the_machine_to_everything_else():
    layout = CpuLayout.isolating([0], frozenset({0, 1, 2, 3}))
    assert (layout.control, layout.others) == ({0}, {1, 2, 3})
    assert layout.describe() == ("loop thread (cyclic tasks) on CPU 0, everything else on CPU 1-3")
    with pytest.raises(ValueError, match="single CPU"):
        CpuLayout.isolating([0], frozenset({0}))
    with pytest.raises(ValueError, match="must leave at least one CPU"):
        CpuLayout.isolating([0, 1], frozenset({0, 1}))


@needs_two_cpus
def test_pin_process_moves_every_thread_of_a_child():
    # a child with a second thread already running when it is pinned
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
    code += "print(threading.get_native_id(), flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        target = frozenset({min(CPUS)})
        pin_process(child.pid, target)
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        assert all(os.sched_getaffinity(tid) == target for tid in tids)
    finally:
        child.kill()
        child.wait()


def _all_threads_on(pid: int) -> set[frozenset[int]]:
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


@needs_two_cpus
def test_service_runs_its_loop_thread_alone_on_tasks_cpus(tmp_path):
    control = min(CPUS)
    others = CPUS - {control}
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "controller" / "cpu_layout_driver.py"),
                str(tmp_path / "var"),
                str(_free_port()),
                str(control),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=ROOT,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, log_path.read_text()
        ids = json.loads(line)
        assert os.sched_getaffinity(ids["loop_tid"]) == {control}
        assert os.sched_getaffinity(ids["journal_tid"]) == others
        assert os.sched_getaffinity(ids["worker_tid"]) == others
        # every other thread of the service, and the OPC UA server process with
        # all of its threads, stay off the control CPU
        assert [
            tid
            for tid in map(int, os.listdir(f"/proc/{proc.pid}/task"))
            if tid != ids["loop_tid"] and os.sched_getaffinity(tid) != others
        ] == []
        assert _all_threads_on(ids["opcua_pid"]) == {others}
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == 0, log_path.read_text()
    expected = f"cpus: loop thread (cyclic tasks) on CPU {control}, everything else on CPU "
    assert expected + format_cpu_list(others) in log_path.read_text()


@needs_two_cpus
def test_hmi_cpus_pins_the_whole_hmi_process():
    cpu = max(CPUS)
    # no server at that endpoint: the HMI keeps retrying, its threads running
    url = f"opc.tcp://127.0.0.1:{_free_port()}/gridctl"
    hmi = subprocess.Popen(
        [sys.executable, "-m", "controller", "hmi", "--cpus", str(cpu), "--url", url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 20
        while len(os.listdir(f"/proc/{hmi.pid}/task")) < 2 and time.monotonic() < deadline:
            assert hmi.poll() is None
            time.sleep(0.1)
        assert len(os.listdir(f"/proc/{hmi.pid}/task")) >= 2
        assert _all_threads_on(hmi.pid) == {frozenset({cpu})}
    finally:
        hmi.kill()
        hmi.wait()

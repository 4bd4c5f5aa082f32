"""CPU isolation: the loop thread that runs the cyclic tasks on CPUs of its own.

On a box with few cores the HMI, the OPC UA server process and the controller
share them, so a fast-task wake-up has to preempt whatever runs on its core; a
real-time policy shortens that, isolation removes it. ``[tasks] cpus`` (and
``gridctl hmi --cpus``) name the CPUs; this module turns them into affinity
masks.

Linux semantics decide where each mask has to be set:

- ``os.sched_setaffinity(0, …)`` applies to the calling *thread* only;
- a new thread inherits the mask of the thread that creates it;
- a child process inherits the mask of the thread that forks it.

So the loop thread is pinned to the control CPUs, every other thread of the
process is pinned to the rest, threads created later by the loop thread pin
themselves (the worker executor's initializer, the journal writer), and child
processes are pinned by pid right after they are spawned.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CPU_LIST_FORMAT = "a Linux CPU list like 1, 1-3 or 0,2"


def available_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity mask, which a cpuset can narrow)."""
    return frozenset(os.sched_getaffinity(0))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` → ``"0-2,5"`` (the notation of ``taskset -c`` and ``/sys``)."""
    out: list[str] = []
    ordered = sorted(set(cpus))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def parse_cpu_list(text: str) -> frozenset[int]:
    """``"1"``, ``"1-3"``, ``"0,2"``, ``"0-1,4"`` → the set of CPU ids; ValueError otherwise."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"must be {CPU_LIST_FORMAT} (got {text!r})")
        lo, hi = int(first), int(last) if dash else int(first)
        if hi < lo:
            raise ValueError(f"range {part.strip()!r} runs backwards (got {text!r})")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def check_cpus(
    cpus: Iterable[int], available: frozenset[int], *, leave_one: bool
) -> frozenset[int]:
    """The CPUs as a set after checking they exist here; ValueError saying what is allowed.

    ``leave_one``: the CPUs are taken from everything else (the control CPUs),
    so at least one available CPU must stay outside them.
    """
    wanted = frozenset(cpus)
    have = format_cpu_list(available)
    if not wanted:
        raise ValueError(f"must name at least one CPU of this machine ({have})")
    missing = sorted(wanted - available)
    if missing:
        raise ValueError(
            f"CPU {format_cpu_list(missing)} is not available on this machine "
            f"(allowed: {have}) (got {format_cpu_list(wanted)})"
        )
    if leave_one and len(available) == 1:
        raise ValueError(
            f"this machine has a single CPU ({have}): nothing to isolate the tasks from; "
            "leave it empty"
        )
    if leave_one and wanted == available:
        raise ValueError(
            f"must leave at least one CPU of this machine ({have}) for the other threads "
            f"and processes (got {format_cpu_list(wanted)})"
        )
    return wanted


def pin_current_thread(cpus: frozenset[int]) -> None:
    """The calling thread (only) onto ``cpus``; raises OSError when refused."""
    os.sched_setaffinity(0, cpus)


def pin_process(pid: int, cpus: frozenset[int]) -> None:
    """Every thread of process ``pid`` onto ``cpus``; raises OSError when refused.

    ``sched_setaffinity(pid)`` moves only the thread whose id is ``pid``; the
    process's other threads (if it has started any) are moved one by one.
    """
    os.sched_setaffinity(pid, cpus)
    _pin_threads(pid, cpus, skip=pid)


def _pin_threads(pid: int, cpus: frozenset[int], *, skip: int) -> int:
    """Every thread of process ``pid`` but ``skip`` onto ``cpus``; returns how many moved."""
    moved = 0
    for tid in _threads_of(pid):
        if tid == skip:
            continue
        # a thread that has just ended cannot be moved, nor needs to be
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)
            moved += 1
    return moved


def _threads_of(pid: int) -> list[int]:
    try:
        return [int(name) for name in os.listdir(Path("/proc") / str(pid) / "task")]
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class CpuLayout:
    """Where the controller's threads and processes run: the loop thread on ``control``,
    everything else (threads, child processes) on ``others``."""

    control: frozenset[int]
    others: frozenset[int]

    @classmethod
    def isolating(
        cls, control: Iterable[int], available: frozenset[int] | None = None
    ) -> CpuLayout:
        """``control`` for the loop thread, the rest of ``available`` for everything else."""
        have = available_cpus() if available is None else available
        wanted = check_cpus(control, have, leave_one=True)
        return cls(control=wanted, others=have - wanted)

    def pin_loop_thread(self) -> None:
        """The calling thread (the one running the event loop) onto the control CPUs."""
        pin_current_thread(self.control)

    def pin_other_threads(self) -> int:
        """Every thread of this process except the calling one onto the other CPUs.

        Catches the threads started before the layout applied (the journal
        writer, worker threads, a metrics server thread); returns how many.
        """
        return _pin_threads(os.getpid(), self.others, skip=threading.get_native_id())

    def worker_executor(self, max_workers: int | None = None) -> ThreadPoolExecutor:
        """An executor for the loop's default (``asyncio.to_thread``) whose threads,
        started by the loop thread, leave the control CPUs they would inherit."""
        return ThreadPoolExecutor(
            max_workers=max_workers,
            thread_name_prefix="gridctl-worker",
            initializer=_pin_worker,
            initargs=(self.others,),
        )

    def describe(self) -> str:
        return (
            f"loop thread (cyclic tasks) on CPU {format_cpu_list(self.control)}, "
            f"everything else on CPU {format_cpu_list(self.others)}"
        )


def _pin_worker(cpus: frozenset[int]) -> None:
    # A refusal here would already have been reported when the loop thread was
    # pinned: the worker then just keeps the mask it inherited.
    with contextlib.suppress(OSError):
        pin_current_thread(cpus)

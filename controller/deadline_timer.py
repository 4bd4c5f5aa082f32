"""A precise coarse sleep for the cyclic tasks: a Linux timerfd on the event loop.

The loop's own timers (uvloop/libuv) have millisecond resolution: a
``sleep(d)`` fires up to ~1 ms early or late, so a cyclic task had to start
spinning 2 ms before each deadline to be sure to be awake in time — 20 % of a
core at a 10 ms period, and a process that looks CPU-bound to the OS
scheduler, which then gives it less preference on wake-up.

A timerfd armed at an absolute CLOCK_MONOTONIC time (the clock behind
``time.monotonic``) wakes the loop's epoll within microseconds of that time
(hrtimers, no timer slack), so the spin before the deadline can be a few
hundred microseconds. The fd is registered with ``loop.add_reader``; one
timer serves one task (one waiter at a time).

Linux only; :func:`available` says whether it can be used, and the service
falls back to the loop's timers (and says so) where it cannot.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
import time

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        ]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


class DeadlineTimer:
    """``await timer.sleep(delay)``: wakes at ``time.monotonic() + delay`` within microseconds."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError("timerfd: not available on this platform")
        fd = _LIBC.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd: int = fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._spec = _Itimerspec()

    def _arm(self, at: float) -> None:
        assert _LIBC is not None
        sec = int(at)
        value = self._spec.it_value
        value.tv_sec = sec
        value.tv_nsec = max(1, int((at - sec) * 1e9))  # 0/0 would disarm the timer
        if _LIBC.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def _fired(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._loop.remove_reader(self.fd)
            loop.add_reader(self.fd, self._fired)
            self._loop = loop
        if self._waiter is not None and not self._waiter.done():
            raise RuntimeError("DeadlineTimer: one waiter at a time")
        waiter = loop.create_future()
        self._waiter = waiter
        self._arm(time.monotonic() + delay)
        try:
            await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        self._loop = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

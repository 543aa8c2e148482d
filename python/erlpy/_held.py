"""Replies held for the requests queued behind them.

When several requests wait for the main thread (a frame brought many), the results of
the first ones are held and written in one frame with the later ones: one write, and one
message on the Erlang side, instead of one each. A held result must not wait for a
request that turns out to be long, so holding arms a timer, and if it fires, the loop
thread writes what is held. The main thread disarms it when it writes them itself.

The timer is a Linux ``timerfd`` watched by the event loop (through ctypes: ``os`` has no
``timerfd_create`` before Python 3.13). Where there is none, results are never held.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Final

from ._wire import FrameWriter

# How long a held result may wait. Longer only while the request that runs holds the GIL:
# the loop thread gets it within the worker's switch interval (1 ms), unless the request
# is in C code that keeps it.
HOLD: Final = 200e-6

_CLOCK_MONOTONIC: Final = 1


class HeldReplies:
    """Whether the main thread holds results now, and the timer that bounds it. Used by the
    main thread only; the timer's callback runs on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: FrameWriter) -> None:
        self._writer = writer
        self._timer = _FlushTimer(loop, writer)
        self.holding = False
        self._since = 0.0

    def before_job(self, more_queued: bool, quick: bool) -> None:
        """A job is about to run: hold results while others wait behind it. What is held
        goes first if the job may be long (``quick``: its function answered within HOLD
        last time): the timer cannot write while user code keeps the GIL in C, so a quick
        call's reply would wait for the whole of an unrelated long one."""
        if self.holding and not quick:
            self.release()
        if self.holding:
            now = time.monotonic()
            if now - self._since > HOLD:  # a long run of requests: send what is held
                self._writer.flush()
                self._since = now
                self._timer.arm()
        elif more_queued and self._timer.arm():
            self.holding = True
            self._since = time.monotonic()

    def release(self) -> None:
        """Nothing waits any more (or the main thread is about to wait): send them now."""
        if self.holding:
            self.holding = False
            self._timer.disarm()
            self._writer.flush()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _FlushTimer:
    """A one-shot timer: when it fires, the loop thread writes what the writer holds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: FrameWriter) -> None:
        self._writer = writer
        self._fd = -1
        try:
            # Our own CDLL: its function pointers' argtypes are nobody else's.
            libc = ctypes.CDLL(None, use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return  # not Linux
        settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
        settime.restype = ctypes.c_int
        fd = create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return
        self._fd = fd
        self._settime = settime
        self._on = ctypes.byref(_Itimerspec(_Timespec(0, 0), _Timespec(0, int(HOLD * 1e9))))
        self._off = ctypes.byref(_Itimerspec())
        loop.add_reader(fd, self._fire)

    def arm(self) -> bool:
        """Start (or restart) the timer; False where there is no timer."""
        if self._fd < 0:
            return False
        self._settime(self._fd, 0, self._on, None)
        return True

    def disarm(self) -> None:
        self._settime(self._fd, 0, self._off, None)

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            pass  # disarmed after it fired
        self._writer.flush()

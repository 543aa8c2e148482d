"""Replies held for the requests queued behind them, and which calls are quick.

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
from collections.abc import Callable
from typing import Any, Final

from ._messages import Call
from ._wire import FrameWriter

# How long a held result may wait. Longer only while the request that runs holds the GIL:
# the loop thread gets it within the worker's switch interval (1 ms), unless the request
# is in C code that keeps it.
HOLD: Final = 200e-6

_CLOCK_MONOTONIC: Final = 1

# Functions whose last duration QuickCalls remembers, at most.
_DURATIONS_KEPT: Final = 4096


class QuickCalls:
    """How long each function took last time, by (module, function): a call is expected
    to be quick if its function answered within HOLD then. Only quick calls hold replies
    (HeldReplies), and only a burst of them keeps the main thread reading Erlang's pipe
    (SyncRunner)."""

    def __init__(self) -> None:
        self._durations: dict[tuple[str, str], float] = {}

    def expected(self, request: Any) -> bool:
        """Whether ``request`` calls a function that answered within HOLD last time."""
        if type(request) is not Call:
            return False
        name = _name(request)
        return name is not None and self._durations.get(name, HOLD) < HOLD

    def took(self, request: Call, seconds: float) -> None:
        """Remember how long a call's function took."""
        name = _name(request)
        if name is not None:
            durations = self._durations
            if len(durations) >= _DURATIONS_KEPT:
                durations.clear()  # names are few as a rule: this only bounds the odd case
            durations[name] = seconds


def _name(request: Call) -> tuple[str, str] | None:
    """The (module, function) a call names, if it names them by text (not a handle's
    object, nor a malformed name, which the call itself reports)."""
    module, function = request.module, request.function
    return (module, function) if type(module) is str and type(function) is str else None


class HeldReplies:
    """Whether the main thread holds results now, and the timer that bounds it. Used by the
    main thread only; the timer's callback runs on the loop thread."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, writer: FrameWriter, fired: Callable[[], bool]
    ) -> None:
        self._writer = writer
        self._timer = _FlushTimer(loop, writer, fired)
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
    """A one-shot timer: when it fires, the loop thread writes what the writer holds, and
    calls ``fired`` (which takes Erlang's pipe back from a long job), which says whether
    to arm it again."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, writer: FrameWriter, fired: Callable[[], bool]
    ) -> None:
        self._writer = writer
        self._fired = fired
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
        if self._fired():
            self.arm()

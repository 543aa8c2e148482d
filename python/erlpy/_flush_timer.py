"""A bound on how long a reply waits for the replies of the requests queued behind it.

When several requests wait for the main thread (a frame brought many), the replies of the
first ones are held and written in one frame with the later ones: one write and one
message on the Erlang side instead of one each. A held reply must not wait for a request
that turns out to be long, so holding arms this timer, and if it fires the loop thread
writes what is held. The main thread disarms it when it writes them itself.

The timer is a Linux ``timerfd`` watched by the event loop (through ctypes: ``os`` has no
``timerfd_create`` before Python 3.13). Where there is none, replies are never held.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from typing import Final

from ._wire import FrameWriter

# How long a held reply may wait (it waits longer only while the request that runs holds
# the GIL: the loop thread gets it within the interpreter's switch interval, 5 ms).
HOLD: Final = 200e-6

_CLOCK_MONOTONIC: Final = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class FlushTimer:
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

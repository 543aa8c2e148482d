"""The main thread's queue of work, and how it waits for it.

A lock would wake the main thread while the thread that queued still holds the GIL: the
main thread finds the GIL taken and sleeps again until it is let go, two wake-ups for one
handoff, each tens of microseconds on a VM whose idle vCPU sleeps. Here the queuing
thread writes an eventfd, and lets go of the GIL for that write, so the main thread wakes
to a free GIL. The eventfd also lets the main thread wait for work and for Erlang's pipe
at once (:meth:`Handoff.wait`), when it reads the pipe itself while idle.
"""

from __future__ import annotations

import collections
import functools
import os
import select
from typing import Final, Generic, TypeVar

from ._process import spin as spin_probe

T = TypeVar("T")


class Handoff(Generic[T]):
    """A FIFO any thread may put into and only the main thread takes from."""

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._fd, self._wake_fd = _wake_fds()
        self._wake, self._clear = _EVENTFD if hasattr(os, "eventfd") else _PIPE
        self._sleeping = False
        self._poller: tuple[int, select.poll] | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        if self._sleeping:  # set before the taker's last look at the queue: wake it
            self._sleeping = False
            self._wake(self._wake_fd)

    def get(self) -> T:
        items = self._items
        while True:
            if items:
                return items.popleft()
            self._sleeping = True
            if items:  # put between the look above and the flag: no wake-up comes
                self._sleeping = False
                return items.popleft()
            self._clear(self._fd)  # blocks until woken; one left over from a race is harmless
            self._sleeping = False

    def empty(self) -> bool:
        return not self._items

    def wait(self, fd: int, spin: float) -> bool:
        """Wait until an item is queued or ``fd`` is readable, polling for up to ``spin``
        seconds before sleeping (a deliberate, bounded busy wait). Returns whether ``fd``
        is readable; without an item, too, when the wait was only a stale wake-up."""
        poller = self._poller_for(fd)
        items = self._items
        self._sleeping = True
        try:
            if items:
                return False
            events = spin_probe(functools.partial(poller.poll, 0), spin, lambda: bool(items))
            if not events and not items:
                events = poller.poll()
        finally:
            self._sleeping = False
        readable = False
        for ready, _ in events:
            if ready == fd:
                readable = True
            else:
                self._clear(self._fd)  # it is readable: this does not block
        return readable

    def _poller_for(self, fd: int) -> select.poll:
        if self._poller is None or self._poller[0] != fd:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.register(fd, select.POLLIN)
            self._poller = (fd, poller)
        return self._poller[1]

    def after_fork_in_child(self) -> None:
        """A forked child must not read the parent's wake-ups: give it its own."""
        old = {self._fd, self._wake_fd}
        self._fd, self._wake_fd = _wake_fds()
        self._sleeping = False
        self._poller = None
        for fd in old:
            try:
                os.close(fd)
            except OSError:
                pass


def _wake_fds() -> tuple[int, int]:
    """The fd the main thread waits on and the one others write to wake it: one eventfd
    (Linux), else a pipe."""
    if hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        return fd, fd
    return os.pipe()  # close-on-exec (PEP 446)


def _wake_pipe(fd: int) -> None:
    os.write(fd, b"\x01")


def _clear_pipe(fd: int) -> None:
    """Take the wake-ups written so far (waiting for one if there is none)."""
    os.read(fd, 512)


def _wake_eventfd(fd: int) -> None:
    os.eventfd_write(fd, 1)


def _clear_eventfd(fd: int) -> None:
    while True:
        try:
            os.eventfd_read(fd)
            return
        except InterruptedError:
            continue  # a signal the runtime dropped (SIGINT): unlike os.read, it does not retry


_EVENTFD: Final = (_wake_eventfd, _clear_eventfd)
_PIPE: Final = (_wake_pipe, _clear_pipe)

"""The main thread's queue of work, and how it is woken.

A lock would wake the main thread while the thread that queued still holds the GIL: the
main thread finds the GIL taken and sleeps again until it is let go, two wake-ups for one
handoff, each tens of microseconds on a VM whose idle vCPU sleeps. Here the queuing
thread writes an eventfd, and lets go of the GIL for that write, so the main thread wakes
to a free GIL.
"""

from __future__ import annotations

import collections
import os
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """A FIFO any thread may put into and only the main thread takes from."""

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._sleeping = False

    def put(self, item: T) -> None:
        self._items.append(item)
        if self._sleeping:  # set before the taker's last look at the queue: wake it
            self._sleeping = False
            os.eventfd_write(self._fd, 1)

    def get(self) -> T:
        items = self._items
        while True:
            if items:
                return items.popleft()
            self._sleeping = True
            if items:  # put between the look above and the flag: no wake-up comes
                self._sleeping = False
                return items.popleft()
            os.eventfd_read(self._fd)  # a wake-up left over from a race is harmless
            self._sleeping = False

    def empty(self) -> bool:
        return not self._items

    def after_fork_in_child(self) -> None:
        """A forked child must not read the parent's wake-ups: give it its own eventfd."""
        fd, self._fd = self._fd, os.eventfd(0, os.EFD_CLOEXEC)
        self._sleeping = False
        try:
            os.close(fd)
        except OSError:
            pass

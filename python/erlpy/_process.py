"""The worker's process: its set-up (pipes, GIL switching, malloc), the resource limits a
pool asks for, and forks from user code.

A process forked from user code is not a worker: it drops the protocol at once, and exits
when its code comes back into the runtime, instead of answering the parent's request.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import select
import selectors
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn

if TYPE_CHECKING:  # a stub-only module: nothing to import at run time
    from _typeshed import FileDescriptorLike

# Threads switch the GIL this often (seconds). The default, 5 ms, would let a busy sync
# generator hold off the loop thread, which reads control messages (credit, cancel).
SWITCH_INTERVAL: Final = 0.001
# Pipes this large let a big frame cross in a few system calls (Linux caps unprivileged
# processes at /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE: Final = 1 << 20

# glibc's largest mmap threshold on 64-bit (blocks above it are always mapped afresh), the
# free memory an allocator arena may keep, and glibc's default for both.
_MMAP_THRESHOLD: Final = 32 << 20
_TRIM_THRESHOLD: Final = 64 << 20
_GLIBC_DEFAULT: Final = 128 << 10


class ProcessState:
    """What every part of the runtime must know about the process it runs in."""

    __slots__ = ("forked", "poll")

    def __init__(self) -> None:
        self.forked = False  # this is a forked copy of the worker process
        # Seconds a thread polls for the next message before it sleeps (the pool's
        # poll_us): a sleeping thread takes tens of microseconds to wake on a VM.
        self.poll = 0.0


# Deep enough for the codec's deepest values (512 nested tuples, about two frames each),
# low enough that recursion through C (map, sorted's key, __repr__, deepcopy) raises
# RecursionError before it overflows an 8 MiB C stack: with 20000 it crashed the worker
# (SIGSEGV) where plain Python raises; 3500 already does on this machine.
RECURSION_LIMIT: Final = 2500


def set_up(fd_in: int, fd_out: int) -> None:
    """Process-wide settings of a worker; only its boot calls this, never an import."""
    keep_freed_memory(True)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    sys.setswitchinterval(SWITCH_INTERVAL)
    for fd in (fd_in, fd_out):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # not a pipe, or over the system's limit: smaller frames, same result
    os.set_blocking(fd_in, False)


def apply_limits(limits: dict[Any, Any]) -> bool:
    """Resource limits the pool asks for: ``max_memory`` caps the address space, so an
    allocation beyond it raises MemoryError instead of waking the OOM killer. Returns
    whether the address space is capped."""
    max_memory = limits.get("max_memory")
    if not isinstance(max_memory, int):
        return False
    used = _address_space()
    if max_memory <= used:
        raise MemoryError(
            f"max_memory is {max_memory} bytes, but this Python process already uses "
            f"{used} bytes of address space"
        )
    resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
    return True


def keep_freed_memory(keep: bool) -> None:
    """Have malloc keep freed memory for the next large payload instead of handing it back
    to the kernel after every request: a fresh page costs a fault, and a 10 MiB payload
    touched afresh spends more time in faults than in copying (docs/performance.md).
    Not for a worker whose address space is capped."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, _MMAP_THRESHOLD if keep else _GLIBC_DEFAULT)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, _TRIM_THRESHOLD if keep else _GLIBC_DEFAULT)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its own defaults


def _address_space() -> int:
    """The process's current address space in bytes (VmSize), 0 if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def exit_forked(outcome: BaseException | None) -> NoReturn:
    """End a forked child whose code came back into the runtime (it returned, raised or
    yielded), with the exit status the interpreter would give it."""
    status = 0
    try:
        if isinstance(outcome, SystemExit):
            if isinstance(outcome.code, int):
                status = outcome.code
            elif outcome.code is not None:
                print(outcome.code, file=sys.stderr)
                status = 1
        elif outcome is not None:
            traceback.print_exception(type(outcome), outcome, outcome.__traceback__)
            status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(status & 0xFF)


def spin(
    probe: Callable[[], list[tuple[int, int]]], seconds: float, stop: Callable[[], bool]
) -> list[tuple[int, int]]:
    """Probe until something is ready, ``stop()`` says to give up, or ``seconds`` have
    passed: a deliberate, bounded busy wait before sleeping, as the BEAM's schedulers do,
    so that a message that comes back quickly is read without paying for a wake-up (tens
    of microseconds on a VM). Each probe is a system call that lets go of the GIL, and
    ``sched_yield`` between two gives the CPU to whatever else wants it (the BEAM, the
    other thread). Returns what the last probe found."""
    found = probe()
    if found or seconds <= 0:
        return found
    clock = time.monotonic
    end = clock() + seconds
    while not stop() and clock() < end:
        os.sched_yield()
        found = probe()
        if found:
            break
    return found


def _never() -> bool:
    return False


def _epoll_of(selector: selectors.BaseSelector) -> select.epoll | None:
    """The epoll object of an asyncio selector, on Linux (None elsewhere)."""
    epoll = getattr(selector, "_selector", None)
    return epoll if isinstance(epoll, select.epoll) else None


class ForkSafeSelector(selectors.BaseSelector):
    """The event loop's selector, which a forked child can let go of: the epoll instance
    is shared across fork, so a child that changed it (epoll_ctl) or waited on it would
    take events meant for the parent's loop (its reads, its self-pipe wake-ups)."""

    def __init__(self, process: ProcessState) -> None:
        self._process = process
        self._inner: selectors.BaseSelector = selectors.DefaultSelector()
        self._epoll = _epoll_of(self._inner)
        self._paused = False
        self._spun = False  # the loop thread has just polled (spin): do not poll again

    def detach_in_child(self) -> None:
        """Start afresh; closing the child's copy of the epoll fd leaves the parent's
        registrations alone."""
        self._inner.close()
        self._inner = selectors.DefaultSelector()
        self._epoll = _epoll_of(self._inner)

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def pause(self, fd: int) -> bool:
        """Stop watching ``fd`` (registered for reading) without telling the event loop,
        from any thread: the main thread reads it meanwhile. Returns whether it could."""
        epoll = self._epoll
        if epoll is None:
            return False
        try:
            epoll.modify(fd, 0)  # a hang-up is still reported: the main thread sees it too
        except OSError:
            return False  # user code closed it: the loop thread's read says so (EBADF)
        self._paused = True
        return True

    def resume(self, fd: int) -> None:
        """Watch ``fd`` for reading again (see :meth:`pause`)."""
        epoll = self._epoll
        if epoll is not None:
            try:
                epoll.modify(fd, select.EPOLLIN)
            except OSError:
                pass  # user code closed it: the loop thread's read says so (EBADF)
        self._paused = False

    def probe(self) -> list[tuple[int, int]]:
        """The fds ready now and their events, without waiting or consuming them."""
        epoll = self._epoll
        return epoll.poll(0) if epoll is not None else []

    def spin(self, seconds: float, stop: Callable[[], bool]) -> list[tuple[int, int]]:
        """:func:`spin` on this selector's fds, for the loop thread between two of its
        turns (Dispatcher). When it finds nothing, the loop's next :meth:`select` sleeps
        at once instead of polling again."""
        events = spin(self.probe, seconds, stop)
        self._spun = not events
        return events

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        poll = self._process.poll
        spun, self._spun = self._spun, False
        if (
            poll
            and not spun
            and not self._paused
            and (timeout is None or timeout > 0)
            and spin(self.probe, poll if timeout is None else min(poll, timeout), _never)
        ):
            timeout = 0
        return self._inner.select(timeout)

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()

"""Framing on the protocol pipes: 4-byte big-endian length, then a payload holding one or
more msgpack messages (Erlang's ``{packet, 4}``)."""

from __future__ import annotations

import os
import threading
from typing import Final, NoReturn, TypeAlias

_HEADER: Final = 4
_SMALL: Final = 1 << 16
_READ: Final = 1 << 18
_IOV_MAX: Final = 1024

# What a frame is made of: anything with the buffer protocol.
Buffer: TypeAlias = bytes | bytearray | memoryview

# Exit status of a worker whose pipes broke under it (EOF from Erlang exits 0).
PROTOCOL_LOST: Final = 70


def die(reason: str, status: int) -> NoReturn:
    """Exit at once, saying why on the real fd 2: sys.stderr goes to Erlang through the
    protocol, which may be what is broken."""
    try:
        os.write(2, f"erlpy: {reason}\n".encode("utf-8", "replace"))
    except OSError:
        pass
    os._exit(status)


class FrameReader:
    """Reads frames from a non-blocking pipe.

    Small frames are cut out of a shared buffer; a frame larger than ``BIG`` is read
    straight into a buffer of its own, so a 100 MB payload is not copied around. That
    buffer is kept for the next large frame (up to ``keep`` bytes; 0 when the worker's
    address space is capped): the frame handed out is a view of it, valid until the next
    call of :meth:`read`, which is all a decoder needs (decoded values never point into
    the frame).
    """

    BIG: Final = 1 << 20
    HEAD: Final = 64

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._big: memoryview | None = None  # the large frame being read
        self._spare = bytearray()  # the buffer large frames are read into
        self.keep = 64 << 20
        self._filled = 0
        # A frame too big to hold (max_memory): its first bytes, and how much to skip.
        self._skip_head = b""
        self._skip_left = 0
        # The last read took less than it asked for: the pipe is empty for now, and one
        # more read would only fail with EAGAIN.
        self.drained = False

    def read(self) -> list[bytearray | memoryview | TooBig] | None:
        """Frames completed by one read (maybe none); None at end of file.

        Raises:
            BlockingIOError: nothing to read right now.
        """
        if self._skip_left:
            want = min(self._skip_left, _READ)
            n = len(os.read(self._fd, want))
            if n == 0:
                return None
            self.drained = n < want
            self._skip_left -= n
            return [] if self._skip_left else [TooBig(self._skip_head)]
        big = self._big
        if big is not None:
            want = len(big) - self._filled
            n = os.readv(self._fd, [big[self._filled :]])
            if n == 0:
                return None
            self.drained = n < want
            self._filled += n
            if self._filled < len(big):
                return []
            self._big = None
            return [big]
        data = os.read(self._fd, _READ)
        if not data:
            return None
        self.drained = len(data) < _READ
        buf = self._buf
        buf += data
        frames: list[bytearray | memoryview | TooBig] = []
        pos = 0
        end = len(buf)
        while end - pos >= _HEADER:
            size = int.from_bytes(buf[pos : pos + _HEADER], "big")
            available = end - pos - _HEADER
            if available < size:
                if size > self.BIG:
                    try:
                        big = self._buffer(size)
                    except MemoryError:
                        # Cannot hold it: skip it, keeping its head to say which request
                        # it was.
                        self._skip_head = bytes(buf[pos + _HEADER : pos + _HEADER + self.HEAD])
                        self._skip_left = size - available
                        pos = end
                        break
                    big[:available] = buf[pos + _HEADER :]
                    self._big, self._filled = big, available
                    pos = end
                break
            frames.append(buf[pos + _HEADER : pos + _HEADER + size])
            pos += _HEADER + size
        if pos:
            del buf[:pos]
        return frames

    def _buffer(self, size: int) -> memoryview:
        """A view of ``size`` bytes to read a large frame into."""
        if len(self._spare) < size:
            self._spare = bytearray()  # let the old one go before taking a bigger one
            spare = bytearray(size)
            if size <= self.keep:
                self._spare = spare
            return memoryview(spare)
        return memoryview(self._spare)[:size]


class TooBig:
    """Stands for a frame that was too big to read into memory; ``head`` is its start."""

    __slots__ = ("head",)

    def __init__(self, head: bytes) -> None:
        self.head = head


class FrameWriter:
    """Thread-safe writer that coalesces messages into frames.

    Whoever finds the pipe idle becomes the writer and drains everything queued, including
    what other threads queue while it writes: a fast producer gets large frames, a slow one
    gets its message out at once, and nobody waits on a dedicated writer thread.

    A message may come in several parts (a header and a large payload): small parts are
    joined, large ones are handed to ``writev`` as they are, never copied.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._pending: list[Buffer] = []
        self._writing = False
        self._closed = False

    @property
    def fd(self) -> int:
        return self._fd

    def close_in_child(self) -> None:
        """In a forked child: close the fd and drop everything sent from now on (the pipe
        is the parent's). The lock is replaced, not taken: a thread that does not exist
        in the child may have held it at fork time."""
        self._closed = True
        self._lock = threading.Lock()
        self._pending = []
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
        except OSError:
            pass

    def enqueue(self, *parts: Buffer) -> bool:
        """Queue a message; returns True when the caller must call :meth:`drain`."""
        if self._closed:
            return False
        with self._lock:
            self._pending.extend(parts)
            if self._writing:
                return False
            self._writing = True
            return True

    def send(self, *parts: Buffer) -> None:
        if self.enqueue(*parts):
            self.drain()

    def hold(self, *parts: Buffer) -> None:
        """Queue a message without writing it: it goes with the next frame written (the
        next :meth:`send`, from any thread, or :meth:`flush`)."""
        if self._closed:
            return
        with self._lock:
            self._pending.extend(parts)

    def flush(self) -> None:
        """Write what is queued, unless another thread is writing it already."""
        with self._lock:
            if self._writing or not self._pending:
                return
            self._writing = True
        self.drain()

    def drain(self) -> None:
        while True:
            with self._lock:
                batch = self._pending
                if not batch:
                    self._writing = False
                    return
                self._pending = []
            try:
                self._write_frame(batch)
            except BrokenPipeError:
                # Erlang closed the pipe: the port is gone, and so is our reason to live.
                os._exit(0)
            except OSError as exc:
                die(f"cannot write to Erlang: {exc}", PROTOCOL_LOST)

    def _write_frame(self, batch: list[Buffer]) -> None:
        size = sum(map(len, batch))
        header = size.to_bytes(_HEADER, "big")
        if size <= _SMALL:
            data = b"".join([header, *batch])
            written = os.write(self._fd, data)
            if written < len(data):  # a signal cut the write short
                self._write_all([data[written:]])
            return
        parts: list[Buffer] = [header]
        run: list[Buffer] = []
        for part in batch:
            if len(part) > _SMALL:
                if run:
                    parts.append(b"".join(run))
                    run = []
                parts.append(part)
            else:
                run.append(part)
        if run:
            parts.append(b"".join(run))
        self._write_all(parts)

    def _write_all(self, parts: list[Buffer]) -> None:
        views = [memoryview(part) for part in parts]
        while views:
            written = os.writev(self._fd, views[:_IOV_MAX])
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if written:
                views[0] = views[0][written:]

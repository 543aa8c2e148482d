"""Framing on the protocol pipes: 4-byte big-endian length, then a payload holding one or
more msgpack messages (Erlang's ``{packet, 4}``)."""

from __future__ import annotations

import os
import threading
from typing import Final

_HEADER: Final = 4
_SMALL: Final = 1 << 16
_READ: Final = 1 << 18


class FrameReader:
    """Reads frames from a non-blocking pipe.

    Small frames are cut out of a shared buffer; a frame larger than ``BIG`` is read
    straight into a buffer of its own size, so a 100 MB payload is not copied around.
    """

    BIG: Final = 1 << 20
    HEAD: Final = 64

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._big: bytearray | None = None
        self._filled = 0
        # A frame too big to hold (max_memory): its first bytes, and how much to skip.
        self._skip_head = b""
        self._skip_left = 0

    def read(self) -> list[bytearray | TooBig] | None:
        """Frames completed by one read (maybe none); None at end of file.

        Raises:
            BlockingIOError: nothing to read right now.
        """
        if self._skip_left:
            n = len(os.read(self._fd, min(self._skip_left, _READ)))
            if n == 0:
                return None
            self._skip_left -= n
            return [] if self._skip_left else [TooBig(self._skip_head)]
        big = self._big
        if big is not None:
            n = os.readv(self._fd, [memoryview(big)[self._filled :]])
            if n == 0:
                return None
            self._filled += n
            if self._filled < len(big):
                return []
            self._big = None
            return [big]
        data = os.read(self._fd, _READ)
        if not data:
            return None
        buf = self._buf
        buf += data
        frames: list[bytearray | TooBig] = []
        pos = 0
        end = len(buf)
        while end - pos >= _HEADER:
            size = int.from_bytes(buf[pos : pos + _HEADER], "big")
            available = end - pos - _HEADER
            if available < size:
                if size > self.BIG:
                    try:
                        big = bytearray(size)
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
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._writing = False

    @property
    def fd(self) -> int:
        return self._fd

    def enqueue(self, message: bytes) -> bool:
        """Queue a message; returns True when the caller must call :meth:`drain`."""
        with self._lock:
            self._pending.append(message)
            if self._writing:
                return False
            self._writing = True
            return True

    def send(self, message: bytes) -> None:
        if self.enqueue(message):
            self.drain()

    def drain(self) -> None:
        while True:
            with self._lock:
                batch = self._pending
                if not batch:
                    self._writing = False
                    return
                self._pending = []
            payload = batch[0] if len(batch) == 1 else b"".join(batch)
            self._write_frame(payload)

    def _write_frame(self, payload: bytes) -> None:
        header = len(payload).to_bytes(_HEADER, "big")
        try:
            if len(payload) <= _SMALL:
                self._write_all(header + payload)
            else:
                self._write_all(header)
                self._write_all(payload)
        except OSError:
            # Erlang closed the pipe: the port is gone, and so is our reason to live.
            os._exit(0)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

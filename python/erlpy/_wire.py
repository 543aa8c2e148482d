"""Framing on the protocol pipes: 4-byte big-endian length, then a payload holding one or
more msgpack messages (Erlang's ``{packet, 4}``)."""

from __future__ import annotations

import os
import threading
from typing import Final

_HEADER: Final = 4
_SMALL: Final = 1 << 16


class FrameReader:
    """Splits bytes read from the input pipe into frame payloads."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def wanted(self) -> int:
        """How many bytes to ask ``os.read`` for: the rest of a large frame at once."""
        if len(self._buf) >= _HEADER:
            size = int.from_bytes(self._buf[:_HEADER], "big") + _HEADER
            return max(_SMALL, size - len(self._buf))
        return _SMALL

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= _HEADER:
            size = int.from_bytes(buf[pos : pos + _HEADER], "big")
            if end - pos - _HEADER < size:
                break
            frames.append(bytes(buf[pos + _HEADER : pos + _HEADER + size]))
            pos += _HEADER + size
        if pos:
            del buf[:pos]
        return frames


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

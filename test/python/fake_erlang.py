"""A pipe to stand for Erlang in tests of the runtime's parts (not collected: no test_)."""

from __future__ import annotations

import os
from typing import Any

from erlpy._codec import new_unpacker
from erlpy._wire import FrameWriter


class Pipe:
    """A FrameWriter on a pipe, and the messages that came out of it."""

    def __init__(self) -> None:
        self.r, w = os.pipe()
        os.set_blocking(self.r, False)
        self.writer = FrameWriter(w)

    def messages(self) -> list[list[Any]]:
        """Every message written since the last call."""
        found: list[list[Any]] = []
        while True:
            try:
                data = os.read(self.r, 1 << 20)
            except BlockingIOError:
                return found
            while data:
                size = int.from_bytes(data[:4], "big")
                unpacker = new_unpacker()
                unpacker.feed(data[4 : 4 + size])
                found.extend(unpacker)
                data = data[4 + size :]

    def close(self) -> None:
        os.close(self.r)
        os.close(self.writer.fd)

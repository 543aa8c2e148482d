"""The output side of a stream in the worker: batching items into frames, and the credit
(flow control) that keeps Python a bounded number of items ahead of Erlang."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Final

from . import _protocol as P
from ._codec import MAX_FRAME, EncodeError, check_size, pack
from ._process import ProcessState, exit_forked
from ._wire import FrameWriter

# A stream flushes once this many items (or bytes) are pending; slower producers flush
# sooner, whenever the event loop gets control (see Stream.push).
BATCH_ITEMS: Final = 1024
BATCH_BYTES: Final = 1 << 16
# An item must leave room in its frame for the batch it may join.
MAX_ITEM: Final = MAX_FRAME - 2 * BATCH_BYTES


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class Stream:
    """Output side of one stream: batching and credit (flow control).

    Python may run at most ``credit`` items ahead of what Erlang has accepted; Erlang
    grants more with CREDIT messages as it forwards items to the owner.

    Args:
        loop: the event loop, which flushes pending items when it next gets control.
        writer: where batches go.
        job_id: the request the stream answers.
        credit: items Python may send before Erlang grants more; 0 means no limit.
        resume: gives a parked sync producer back to the main thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        writer: FrameWriter,
        job_id: int,
        credit: int,
        resume: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._writer = writer
        self._resume = resume
        self._prefix = b"\x93" + pack(P.DATA) + pack(job_id)
        self.lock = threading.Lock()
        self._event: asyncio.Event | None = None
        self.credit = credit
        # Credit 0 at the start means "collect": the caller takes everything, no limit.
        self.limited = credit > 0
        self.cancelled = False
        self.parked = False
        self._items: list[bytes] = []
        self._bytes = 0
        self._started = False
        self._flush_scheduled = False
        self.input: InputStream | None = None

    def push(self, data: bytes, on_loop: bool) -> None:
        """Queue one packed item; flush now when it is urgent, else soon."""
        if self.queue(data, on_loop):
            self.flush()

    def queue(self, data: bytes, on_loop: bool) -> bool:
        """Queue one packed item and make sure a flush comes soon; returns True when the
        caller must flush now (the first item, a full batch, or the credit used up)."""
        if len(data) > BATCH_BYTES:
            check_size(len(data), MAX_ITEM)
        with self.lock:
            self._items.append(data)
            self._bytes += len(data)
            self.credit -= 1
            urgent = (
                not self._started
                or (self.credit <= 0 and self.limited)
                or len(self._items) >= BATCH_ITEMS
                or self._bytes >= BATCH_BYTES
            )
            if not urgent and not self._flush_scheduled:
                # Flush when the loop next gets control: at once for a slow producer,
                # and after a batch has built up for a fast one.
                self._flush_scheduled = True
                if on_loop:
                    self._loop.call_soon(self.flush)
                else:
                    self._loop.call_soon_threadsafe(self.flush)
        return urgent

    def flush(self) -> None:
        with self.lock:
            self._flush_scheduled = False
            self._started = True
            items = self._items
            if not items:
                return
            self._items = []
            self._bytes = 0
            if self.cancelled:
                return  # it may be answered already (Dispatcher._cancel): nothing may follow
            body = _array_header(len(items)) + b"".join(items)
            drain = self._writer.enqueue(*self.data_parts(body))
        if drain:
            self._writer.drain()

    def data_parts(self, items: bytes) -> tuple[bytes, bytes]:
        """The DATA message for packed items (one msgpack array). A stream collected whole
        sends the array as a binary: Erlang hands it to the caller as it is, and the
        caller decodes it into its own heap."""
        if self.limited:
            return self._prefix, items
        return self._prefix + b"\xc6" + len(items).to_bytes(4, "big"), items

    def park(self) -> bool:
        """A sync producer out of credit: park it unless credit came meanwhile."""
        with self.lock:
            self.parked = self.credit <= 0 and not self.cancelled
            return self.parked

    def add_credit(self, n: int) -> None:
        with self.lock:
            self.credit += n
            resume, self.parked = self.parked, False
        if resume:
            self._resume()
        if self._event is not None:
            self._event.set()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            resume, self.parked = self.parked, False
        if resume:
            self._resume()
        if self._event is not None:
            self._event.set()

    async def wait_credit(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        while self.credit <= 0 and not self.cancelled:
            self._event.clear()
            await self._event.wait()


class InputStream:
    """The async iterator an ``input => true`` stream receives as its first argument."""

    _CLOSED: Final = object()

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, values: list[Any]) -> None:
        for value in values:
            self._queue.put_nowait(value)

    def close(self) -> None:
        self._queue.put_nowait(self._CLOSED)

    def __aiter__(self) -> InputStream:
        return self

    async def __anext__(self) -> Any:
        value = await self._queue.get()
        if value is self._CLOSED:
            self._queue.put_nowait(value)  # stay closed for later readers
            raise StopAsyncIteration
        return value


def produce(
    process: ProcessState,
    stream: Stream,
    next_item: Callable[[], Any],
    pack_item: Callable[[Any], bytes],
    limit: int,
) -> tuple[int, bool]:
    """Pull up to ``limit`` items from a sync generator and queue them, stopping early when
    one must be flushed at once (returns how many, and whether the generator ended).

    Runs inside the interruptible window, so the window is entered once per batch, not
    once per item. Writing stays outside it: an interrupt must never land while holding
    the writer. What the window does hold here is safe to drop: an interrupt only comes
    to cancel the stream, and a cancelled stream's pending items are dropped with it.
    """
    count = 0
    while True:
        try:
            item = next_item()
        except StopIteration:
            return count, True
        if process.forked:
            exit_forked(None)  # the generator forked: its child must not send the item
        try:
            data = pack_item(item)
        except ValueError as exc:
            raise EncodeError(f"cannot send value to Erlang: {exc}") from None
        count += 1
        if stream.queue(data, on_loop=False) or count >= limit:
            return count, False

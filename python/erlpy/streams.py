"""Utilities to create, split, concatenate and merge asyncio streams.

A *stream* is any `AsyncIterable`. The functions here take ownership of the
streams they are given: they iterate them from one task each and close them
(``aclose()``) when they stop, whether the stream ended, failed, or the
consumer went away.

Compared with the well-known implementation this API follows
(genai_processors), three things are guaranteed:

* Errors: when an input fails, the consumer gets the *original* exception
  (``except ValueError`` works), at its next ``__anext__``; it never hangs and
  no "Task exception was never retrieved" is logged. If other inputs fail
  while the rest is being cancelled, their tracebacks are added to the first
  error as notes (PEP 678) instead of being dropped.
* Cancellation: when the consumer stops early (``break``, ``aclose()``, or
  its task is cancelled), every task these functions started is cancelled and
  awaited before ``aclose()`` returns or the cancellation propagates.
* Memory: `split`, `concat` and `merge` buffer at most ``queue_maxsize``
  items per internal buffer (`DEFAULT_QUEUE_MAXSIZE` by default) so a slow
  consumer makes the producers wait instead of making memory grow.

Producers run in an `asyncio.TaskGroup` owned by one tracked runner task,
never in a TaskGroup that spans a ``yield``: a TaskGroup entered inside an
async generator would cancel whatever the *consumer* happens to be awaiting
when a producer fails (see PEP 789).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import traceback
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
)
from types import TracebackType
from typing import Any, Final, Generic, Literal, Never, TypeVar, overload

__all__ = [
    "DEFAULT_QUEUE_MAXSIZE",
    "aenumerate",
    "concat",
    "dequeue",
    "endless_stream",
    "enqueue",
    "gather_stream",
    "merge",
    "split",
    "stream_content",
]

DEFAULT_QUEUE_MAXSIZE: Final = 256
"""Default bound of each internal buffer of `split`, `concat` and `merge`."""

_T = TypeVar("_T")

# Tasks that were cancelled but could not be awaited (the task cleaning up was
# cancelled again, or cleanup ran from a synchronous finalizer). They are kept
# here until they finish so they are never garbage collected while pending.
_stragglers: set[asyncio.Task[Any]] = set()


def _keep_until_done(task: asyncio.Task[Any]) -> None:
    if not task.done():
        _stragglers.add(task)
        task.add_done_callback(_stragglers.discard)


async def _aclose(iterator: object) -> None:
    """Closes an async iterator if it has an ``aclose`` method."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _check_stream(stream: object) -> None:
    if not hasattr(stream, "__aiter__"):
        raise TypeError(f"expected an async iterable, got {type(stream).__name__}")


def _check_maxsize(queue_maxsize: int) -> None:
    if queue_maxsize < 0:
        raise ValueError(f"queue_maxsize must be >= 0 (0 means unbounded), got {queue_maxsize}")


async def _pump(stream: AsyncIterable[_T], put: Callable[[_T], Awaitable[None]]) -> None:
    """Feeds every item of `stream` to `put`, then closes the stream."""
    iterator = aiter(stream)
    try:
        async for item in iterator:
            await put(item)
    finally:
        await _aclose(iterator)


class _Buffer(Generic[_T]):
    """A FIFO between producer tasks and one consumer, bounded by `maxsize`.

    ``maxsize == 0`` means unbounded. Every append sets the `readable` event.
    Once closed (the consumer is gone), puts are dropped and never block.
    """

    __slots__ = ("_items", "_maxsize", "_readable", "_space", "closed")

    def __init__(self, maxsize: int, readable: asyncio.Event) -> None:
        self._items: deque[_T] = deque()
        self._maxsize = maxsize
        self._readable = readable
        self._space = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: _T) -> None:
        while not self.closed and 0 < self._maxsize <= len(self._items):
            self._space.clear()
            await self._space.wait()
        self.put_nowait(item)

    def put_nowait(self, item: _T) -> None:
        """Appends without regard to the bound (used for end markers)."""
        if not self.closed:
            self._items.append(item)
            self._readable.set()

    def get_nowait(self) -> _T:
        item = self._items.popleft()
        self._space.set()
        return item

    def close(self) -> None:
        self.closed = True
        self._items.clear()
        self._space.set()


class _Producers:
    """Producer coroutines run in a TaskGroup inside one tracked runner task.

    The first exception raised by a producer is kept in `error`; it wakes the
    consumers and cancels the other producers (by cancelling the runner, whose
    TaskGroup then cancels and awaits them). Exceptions raised by producers
    after that are added as notes to the first one by `aclose`.
    """

    __slots__ = ("_error_tb", "_later_errors", "_task", "error", "wakeup")

    def __init__(self) -> None:
        self.wakeup = asyncio.Event()
        self.error: BaseException | None = None
        self._error_tb: TracebackType | None = None
        self._later_errors: list[BaseException] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self, producers: Iterable[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        """Starts the producers (factories, so that nothing is left unawaited)."""
        self._task = asyncio.create_task(self._run(list(producers)))

    async def _run(self, producers: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        async with asyncio.TaskGroup() as tg:
            for producer in producers:
                tg.create_task(self._guard(producer))

    async def _guard(self, producer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await producer()
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # We were cancelled: a normal shutdown.
            self._fail(exc)  # The stream itself raised CancelledError.
        except Exception as exc:
            self._fail(exc)
        finally:
            self.wakeup.set()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self._error_tb = exc.__traceback__
            if self._task is not None:
                self._task.cancel()
        else:
            self._later_errors.append(exc)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error.with_traceback(self._error_tb)

    async def wait(self) -> None:
        """Waits until a producer adds an item, finishes or fails."""
        self.wakeup.clear()
        await self.wakeup.wait()

    def cancel_soon(self) -> None:
        """Cancels the producers without waiting (for synchronous finalizers)."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # The event loop is closed.
                task.cancel()
            _keep_until_done(task)

    async def aclose(self) -> None:
        """Cancels the producers and waits until they have all finished.

        Raises:
            asyncio.CancelledError: if the caller is cancelled while waiting;
                the producers still finish in the background.
        """
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError:
                _keep_until_done(task)
                raise
        if self.error is not None:
            for later in self._later_errors:
                text = "".join(traceback.format_exception(later)).rstrip()
                self.error.add_note(f"Another input of the same stream also failed:\n{text}")
        self._later_errors.clear()


async def gather_stream(content: AsyncIterable[_T]) -> list[_T]:
    """Gathers all items of a stream into a list.

    Args:
        content: the stream to consume; it is closed afterwards.

    Returns:
        The items, in order.
    """
    iterator = aiter(content)
    try:
        return [item async for item in iterator]
    finally:
        await _aclose(iterator)


def stream_content(
    content: Iterable[_T],
    with_delay_sec: float | None = None,
    *,
    delay_first: bool = False,
    delay_end: bool = False,
) -> AsyncGenerator[_T, None]:
    """Turns a synchronous iterable into a stream, optionally with delays.

    Getting the next item of `content` must not block: it runs on the event
    loop.

    Args:
        content: the items to yield.
        with_delay_sec: if set, sleep this long between two items.
        delay_first: also sleep before the first item.
        delay_end: also sleep after the last item, before the stream ends.

    Returns:
        A stream of the items of `content`, unchanged.

    Raises:
        ValueError: if `with_delay_sec` is negative.
    """
    if with_delay_sec is not None and with_delay_sec < 0:
        raise ValueError(f"with_delay_sec must be >= 0, got {with_delay_sec}")
    return _stream_content(content, with_delay_sec, delay_first, delay_end)


async def _stream_content(
    content: Iterable[_T], delay: float | None, delay_first: bool, delay_end: bool
) -> AsyncGenerator[_T, None]:
    first = True
    for item in content:
        if delay is not None and (delay_first or not first):
            await asyncio.sleep(delay)
        first = False
        yield item
    if delay is not None and delay_end:
        await asyncio.sleep(delay)


async def endless_stream() -> AsyncGenerator[Never, None]:
    """A stream that never yields and never ends unless cancelled.

    Useful to keep a long-lived processor (an agent waiting for input) alive.

    Yields:
        Nothing, ever.
    """
    forever: asyncio.Future[Never] = asyncio.get_running_loop().create_future()
    await forever
    yield  # Unreachable; makes this an async generator.


async def aenumerate(
    aiterable: AsyncIterable[_T], start: int = 0
) -> AsyncGenerator[tuple[int, _T], None]:
    """The async counterpart of `enumerate`.

    Args:
        aiterable: the stream to enumerate; it is closed when this is.
        start: the first index.

    Yields:
        ``(index, item)`` pairs.
    """
    iterator = aiter(aiterable)
    try:
        index = start
        async for item in iterator:
            yield index, item
            index += 1
    finally:
        await _aclose(iterator)


async def enqueue(content: AsyncIterable[_T], queue: asyncio.Queue[_T | None]) -> None:
    """Puts every item of a stream into a queue, then puts ``None``.

    ``None`` is put whether the stream ends or fails, so a `dequeue` reader
    always terminates. The stream must not yield ``None`` itself. When this is
    cancelled, ``None`` is put only if the queue has room: waiting for room in
    a queue nobody reads any more would make the cancellation hang.

    Args:
        content: the stream to copy; it is closed afterwards.
        queue: the destination; it may be bounded (``put`` waits for room).

    Raises:
        Exception: whatever the stream raised, after ``None`` was put.
    """
    iterator = aiter(content)
    cancelled = False
    try:
        async for item in iterator:
            await queue.put(item)
    except asyncio.CancelledError:
        cancelled = True
        raise
    finally:
        try:
            await _aclose(iterator)
        finally:
            if cancelled:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
            else:
                await queue.put(None)


async def dequeue(queue: asyncio.Queue[_T | None]) -> AsyncGenerator[_T, None]:
    """Yields the items of a queue until it holds ``None``.

    ``task_done()`` is called for every item taken, ``None`` included.

    Args:
        queue: the source, typically filled by `enqueue`.

    Yields:
        The items, in queue order.
    """
    while True:
        item = await queue.get()
        queue.task_done()
        if item is None:
            return
        yield item


def concat(
    *streams: AsyncIterable[_T], queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE
) -> AsyncGenerator[_T, None]:
    """Concatenates streams that are computed concurrently.

    Every input is iterated at once, from its own task, but the output is in
    argument order: all items of the first stream, then all of the second...
    Nothing starts before the result is iterated.

    Args:
        *streams: the streams to concatenate.
        queue_maxsize: how many items each input may run ahead of the
            consumer (0: unbounded).

    Returns:
        The concatenated stream. If any input fails, its exception is raised
        at the next ``__anext__``, even if that input's turn has not come yet.

    Raises:
        TypeError: if an argument is not an async iterable.
        ValueError: if `queue_maxsize` is negative.
    """
    for stream in streams:
        _check_stream(stream)
    _check_maxsize(queue_maxsize)
    return _concat(streams, queue_maxsize)


async def _concat(
    streams: tuple[AsyncIterable[_T], ...], queue_maxsize: int
) -> AsyncGenerator[_T, None]:
    producers = _Producers()
    buffers = [_Buffer[_T](queue_maxsize, producers.wakeup) for _ in streams]
    finished = [False] * len(streams)

    def producer(index: int) -> Callable[[], Coroutine[Any, Any, None]]:
        async def produce() -> None:
            await _pump(streams[index], buffers[index].put)
            finished[index] = True

        return produce

    producers.start(producer(index) for index in range(len(streams)))
    try:
        for index, buffer in enumerate(buffers):
            while True:
                producers.raise_if_failed()
                if buffer:
                    yield buffer.get_nowait()
                elif finished[index]:
                    break
                else:
                    await producers.wait()
    finally:
        for buffer in buffers:
            buffer.close()
        await producers.aclose()


class _End(enum.Enum):
    MARKER = enum.auto()


@overload
def merge(
    streams: Iterable[AsyncIterable[_T]],
    /,
    *,
    stop_on_first: bool = ...,
    queue_maxsize: int = ...,
) -> AsyncGenerator[_T, None]: ...
@overload
def merge(
    *streams: AsyncIterable[_T],
    stop_on_first: bool = ...,
    queue_maxsize: int = ...,
) -> AsyncGenerator[_T, None]: ...
def merge(
    *streams: Any,
    stop_on_first: bool = False,
    queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE,
) -> AsyncGenerator[Any, None]:
    """Merges streams, yielding items in the order they arrive.

    Accepts ``merge(a, b)`` as well as ``merge([a, b])``. Items of one input
    keep their order; across inputs the order is the order of arrival. Nothing
    starts before the result is iterated.

    Args:
        *streams: the streams, or a single (non-async) iterable of streams.
        stop_on_first: end as soon as any input ends (after the items that
            arrived before that end), cancelling the others. By default the
            merge ends when every input has ended.
        queue_maxsize: how many items may wait for the consumer, all inputs
            together (0: unbounded).

    Returns:
        The merged stream. If any input fails, its exception is raised at the
        next ``__anext__``; items still buffered are dropped.

    Raises:
        TypeError: if an argument is not an async iterable.
        ValueError: if `queue_maxsize` is negative.
    """
    inputs: tuple[Any, ...] = streams
    if len(streams) == 1 and not hasattr(streams[0], "__aiter__"):
        if not isinstance(streams[0], Iterable):
            raise TypeError(
                f"expected async iterables or an iterable of them, got {type(streams[0]).__name__}"
            )
        inputs = tuple(streams[0])
    for stream in inputs:
        _check_stream(stream)
    _check_maxsize(queue_maxsize)
    return _merge(inputs, stop_on_first, queue_maxsize)


async def _merge(
    streams: tuple[AsyncIterable[_T], ...], stop_on_first: bool, queue_maxsize: int
) -> AsyncGenerator[_T, None]:
    if not streams:
        return
    producers = _Producers()
    buffer = _Buffer[_T | Literal[_End.MARKER]](queue_maxsize, producers.wakeup)

    def producer(stream: AsyncIterable[_T]) -> Callable[[], Coroutine[Any, Any, None]]:
        async def produce() -> None:
            await _pump(stream, buffer.put)
            buffer.put_nowait(_End.MARKER)  # At most one per input beyond the bound.

        return produce

    remaining = len(streams)
    producers.start(producer(stream) for stream in streams)
    try:
        while remaining:
            producers.raise_if_failed()
            if not buffer:
                await producers.wait()
                continue
            item = buffer.get_nowait()
            if item is _End.MARKER:
                remaining -= 1
                if stop_on_first:
                    return
            else:
                yield item
    finally:
        buffer.close()
        await producers.aclose()


def split(
    content: AsyncIterable[_T],
    *,
    n: int = 2,
    with_copy: bool = False,
    queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE,
) -> tuple[AsyncGenerator[_T, None], ...]:
    """Splits a stream into `n` independent streams with the same items.

    The source is read by one task, started when any output is first
    iterated. Each output has its own buffer of at most `queue_maxsize` items,
    so the fastest output runs at most that far ahead of the slowest: an
    output that is kept but never read stalls the others once its buffer is
    full. An output that is closed, or garbage collected, stops receiving
    items and no longer holds the others back. The source is cancelled and
    closed when every output is closed.

    If the source fails, each output yields the items it had buffered, then
    raises the source's exception, just as the source did.

    Args:
        content: the source stream.
        n: the number of outputs (at least 1).
        with_copy: give each output its own ``copy.deepcopy`` of every item,
            so that one consumer mutating an item cannot affect another.
        queue_maxsize: the bound of each output's buffer (0: unbounded).

    Returns:
        A tuple of `n` streams.

    Raises:
        TypeError: if `content` is not an async iterable.
        ValueError: if `n` < 1 or `queue_maxsize` is negative.
    """
    _check_stream(content)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_maxsize(queue_maxsize)
    splitter = _Splitter(content, n, with_copy, queue_maxsize)
    outputs = tuple(splitter.output(index) for index in range(n))
    for index, output in enumerate(outputs):
        splitter.watch(index, output)
    return outputs


class _Splitter(Generic[_T]):
    """The state shared by the outputs of one `split`."""

    def __init__(
        self, source: AsyncIterable[_T], n: int, with_copy: bool, queue_maxsize: int
    ) -> None:
        self._source = source
        self._with_copy = with_copy
        self._producers = _Producers()
        self._buffers = [_Buffer[_T](queue_maxsize, self._producers.wakeup) for _ in range(n)]
        self._finalizers: list[weakref.finalize[Any, Any] | None] = [None] * n
        self._open = n
        self._finished = False

    def watch(self, index: int, output: AsyncGenerator[_T, None]) -> None:
        """Detaches output `index` when it is garbage collected, even unstarted."""
        finalizer = weakref.finalize(output, self._collected, index)
        finalizer.atexit = False
        self._finalizers[index] = finalizer

    async def _put(self, item: _T) -> None:
        for buffer in self._buffers:
            if not buffer.closed:
                await buffer.put(copy.deepcopy(item) if self._with_copy else item)

    async def _produce(self) -> None:
        await _pump(self._source, self._put)
        self._finished = True

    async def output(self, index: int) -> AsyncGenerator[_T, None]:
        buffer = self._buffers[index]
        if not self._producers.started:
            self._producers.start([self._produce])
        try:
            while True:
                if buffer:
                    yield buffer.get_nowait()
                    continue
                self._producers.raise_if_failed()
                if self._finished:
                    return
                await self._producers.wait()
        finally:
            finalizer = self._finalizers[index]
            if finalizer is not None:
                finalizer.detach()
            self._detach(index)
            if self._open == 0:
                await self._producers.aclose()

    def _detach(self, index: int) -> None:
        buffer = self._buffers[index]
        if not buffer.closed:
            buffer.close()
            self._open -= 1

    def _collected(self, index: int) -> None:
        self._detach(index)
        if self._open == 0:
            self._producers.cancel_soon()

"""Async work on the loop thread: async functions and coroutines as tasks, and async
generators (or coroutines that return an iterable) as streams, interleaved.

Each task is held by its job and answers it, not kept in a TaskGroup: one job's failure
must not cancel the others (a task that ends in anything but a cancel is a bug here, not
a reason to stop the rest).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Final

from . import _protocol as P
from ._codec import EncodeError, pack, thread_packer
from ._deadline import DEADLINE
from ._jobs import CANCELLED, TIMEOUT, Job, Jobs
from ._names import kwargs
from ._process import ProcessState, exit_forked
from ._stream import BATCH_ITEMS, Stream


class Tasks:
    """Starts and drives the async jobs; every method runs on the loop thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, jobs: Jobs, process: ProcessState) -> None:
        self._loop = loop
        self._jobs = jobs
        self._process = process

    def start_call(
        self, job: Job, fn: Callable[..., Any], args: list[Any], kw: dict[Any, Any]
    ) -> None:
        """Call an async function (or async generator function, for a stream)."""
        deadline = job.deadline
        if deadline is not None and deadline <= time.monotonic():
            self._jobs.finish(job, P.FAIL, TIMEOUT)  # its caller has gone: never start it
            return
        stream = job.stream
        if stream is not None and stream.input is not None:
            args = [stream.input, *args]
        token = DEADLINE.set(deadline)
        try:
            value = fn(*args, **kwargs(kw))
        except BaseException as exc:  # a bad signature raises before any await
            self._jobs.finish(job, P.ERROR, exc)
            return
        finally:
            DEADLINE.reset(token)
        if stream is None:
            self.start_awaitable(job, value)
        else:
            self.start_stream(job, value)

    def start_awaitable(self, job: Job, awaitable: Any) -> None:
        self.spawn(job, self._await_call(job, awaitable))

    def start_stream(self, job: Job, value: Any) -> None:
        self.spawn(job, self._await_stream(job, value))

    def spawn(self, job: Job, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as the task of ``job``; it and every task and ``to_thread`` call
        it starts see the job's deadline (a task copies the context it starts in)."""
        if job.cancelled:  # cancelled while a sync call handed its coroutine over
            coro.close()
            self._jobs.finish(job, P.FAIL, CANCELLED)
            return
        # The job in the table holds its task until the task answers it; a task that is
        # cancelled before it first ran cannot answer, so the cancel does (Dispatcher).
        # No done-callback and no set of tasks: they cost a loop turn per call.
        job.started = False  # by the task now, whoever ran the job before
        token = DEADLINE.set(job.deadline)
        try:
            job.task = start_eagerly(self._loop, coro)
        finally:
            DEADLINE.reset(token)

    async def _await_call(self, job: Job, awaitable: Any) -> None:
        job.started = True
        try:
            result = await awaitable
        except asyncio.CancelledError:
            self._jobs.finish(job, P.FAIL, CANCELLED)
            raise
        except BaseException as exc:
            self._jobs.finish(job, P.ERROR, exc)
        else:
            self._jobs.finish(job, P.RESULT, result)

    async def _await_stream(self, job: Job, value: Any) -> None:
        job.started = True
        stream = job.stream
        assert stream is not None
        iterator: Any = None
        outcome: BaseException | None = None
        try:
            if inspect.isawaitable(value):
                value = await value
            if hasattr(value, "__aiter__"):
                iterator = aiter(value)
                await self._drive(stream, iterator)
            else:
                iterator = iter(value)
                for item in iterator:  # a coroutine that returned a plain iterable
                    if self._process.forked:
                        exit_forked(None)
                    stream.push(pack(item), on_loop=True)
                    if stream.credit <= 0 and stream.limited:
                        await stream.wait_credit()
                    if stream.cancelled:
                        raise asyncio.CancelledError
        except BaseException as exc:  # answered below, once the generator is closed
            outcome = exc
        if self._process.forked:
            exit_forked(outcome)
        # Close the generator before the terminal message, so that when the owner hears
        # the stream ended its `finally` blocks have run.
        try:
            await self._close(job, iterator)
        finally:
            if outcome is None:
                self._jobs.finish(job, P.DONE)
            elif isinstance(outcome, asyncio.CancelledError):
                self._jobs.finish(job, P.FAIL, CANCELLED)
            else:
                self._jobs.finish(job, P.ERROR, outcome)
        if isinstance(outcome, asyncio.CancelledError):
            raise outcome

    async def _close(self, job: Job, iterator: Any) -> None:
        try:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            else:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the stream is over: report and move on
            logging.getLogger("erlpy").warning("closing stream %s: %r", job.id, exc)

    async def _drive(self, stream: Stream, iterator: AsyncIterator[Any]) -> None:
        pack_item = thread_packer().pack
        since_yield = 0
        async for item in iterator:
            if self._process.forked:
                exit_forked(None)  # the generator forked: its child must not send
            try:
                data = pack_item(item)
            except ValueError as exc:
                raise EncodeError(f"cannot send value to Erlang: {exc}") from None
            stream.push(data, on_loop=True)
            if stream.credit <= 0 and stream.limited:
                await stream.wait_credit()
                since_yield = 0
            if stream.cancelled:
                raise asyncio.CancelledError
            since_yield += 1
            if since_yield >= BATCH_ITEMS:
                # A generator that never awaits would starve the loop: let control in.
                since_yield = 0
                await asyncio.sleep(0)


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None]:
    """A task whose first step runs now, not on the loop's next turn: a coroutine that
    does not wait (most calls) answers without a turn of the loop, which costs more than
    the call. It is a real task from its first step on (``current_task()``, timeouts and
    cancellation work); Python 3.12 does this itself (``eager_start``)."""
    if _EAGER_START:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    task = asyncio.Task(coro, loop=loop)
    # Python 3.11: the task scheduled its first step last in the loop's ready queue; run
    # that step here instead. Anything unexpected leaves the task to the loop.
    ready = getattr(loop, "_ready", None)
    if ready and _running(loop) and asyncio.current_task(loop) is None:
        handle = ready[-1]
        if getattr(getattr(handle, "_callback", None), "__self__", None) is task:
            ready.pop()
            handle._run()
    return task


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread runs ``loop`` now (a step needs its running loop)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_EAGER_START: Final = sys.version_info >= (3, 12)

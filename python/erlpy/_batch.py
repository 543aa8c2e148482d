"""Dynamic batching of the calls to ``erlpy.batched`` functions on one worker
(docs/serving.md).

The calls to one batched function wait in its queue. A batch forms once ``max_size``
calls wait, or once the first has waited ``max_wait``, and runs as one call of the
function with their items:

- a sync function's batch is one job on the main thread, like any sync code, and one at a
  time per function: while it runs, the next batch fills;
- an async function's batch is a task on the loop, and several may run at once.

Each caller gets its own answer through ``Jobs.finish``: its result; its own error (an
exception instance in the returned list); or the batch's (an exception the function
raised, a return value that is no list of one result per item). A caller that gives up
(CANCEL: a timeout, a dead caller) leaves the queue; once its batch runs it is answered
``cancelled`` at once and its result is dropped; a batch none of whose callers is left is
stopped as any job is (interrupted on the main thread, cancelled on the loop). A call
whose deadline has passed when its batch forms is answered ``timeout`` (its caller has
stopped waiting) instead of joining it. The batch's code sees the latest deadline of its
callers (``erlpy.time_left()``).

The first call that reaches a batched function under a module name tells Erlang
(``BATCHED``), so that the pool sends later calls to it to one worker, where they meet.
Calls come here from the dispatcher, which resolves names on the loop thread, or, for
a module not imported yet, from the main thread once it has imported it.

Everything here runs on the loop thread, but :meth:`Batch.run` on the main thread (and
the :meth:`Batch.complete` or :meth:`Batch.fail` it calls), which hands the batch's end
back to the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _protocol as P
from ._batched import Batched, check_results
from ._errors import Interrupted
from ._jobs import CANCELLED, TIMEOUT, Job, Jobs
from ._messages import Call
from ._sync import SyncRunner
from ._tasks import Tasks

_monotonic = time.monotonic


class _Entry:
    """One caller's item, waiting in a queue or in a batch."""

    __slots__ = ("arrived", "item", "job")

    def __init__(self, job: Job, item: Any, arrived: float) -> None:
        self.job = job
        self.item = item
        self.arrived = arrived


class _Queue:
    """The calls that wait for one batched function on this worker."""

    __slots__ = ("fn", "pending", "running", "timer")

    def __init__(self, fn: Batched) -> None:
        self.fn = fn
        self.pending: list[_Entry] = []
        self.running = 0  # its batches that have not ended (at most one if it is sync)
        self.timer: asyncio.TimerHandle | None = None  # when the first item's wait ends


class Batch:
    """One call of a batched function, for the items of several callers."""

    __slots__ = ("batcher", "entries", "job", "live", "queue")

    def __init__(self, batcher: Batcher, queue: _Queue, entries: list[_Entry]) -> None:
        self.batcher = batcher
        self.queue = queue
        self.entries = entries
        self.live = len(entries)  # callers that have not given up
        deadlines = [entry.job.deadline for entry in entries]
        latest = None if None in deadlines else max(d for d in deadlines if d is not None)
        # The batch's own job: what the main thread runs and a cancel interrupts. It has no
        # caller, so it counts as answered: Jobs.finish never sends anything for it.
        self.job = Job(0, None, latest, answered=True, batch=self)

    def call(self) -> Any:
        """The function's call (main thread or loop, inside the batch's job)."""
        return self.queue.fn.func([entry.item for entry in self.entries])

    def run(self, user: Callable[..., Any]) -> None:
        """Run a sync function's batch on the main thread; ``user(job, fn)`` runs user
        code where a cancel can interrupt it (``SyncRunner._user``), and raises
        ``Interrupted`` at once if every caller has already given up."""
        try:
            results = user(self.job, self.call)
        except BaseException as exc:
            self.fail(exc)
        else:
            if inspect.isawaitable(results):  # a sync function that returned a coroutine
                self.batcher.loop.call_soon_threadsafe(self.batcher.start_task, self, results)
                return
            self.complete(results)
        self.batcher.loop.call_soon_threadsafe(self.batcher.ended, self)

    def complete(self, results: Any) -> None:
        """Give each caller still waiting its own result (any thread)."""
        try:
            listed = check_results(results, len(self.entries))
        except Exception as exc:
            self.fail(exc)
            return
        finish = self.batcher.jobs.finish
        for entry, result in zip(self.entries, listed, strict=True):
            job = entry.job
            if job.answered:  # gave up: its result is dropped
                continue
            if isinstance(result, BaseException):
                finish(job, P.ERROR, result)
            else:
                finish(job, P.RESULT, result)

    def fail(self, exc: BaseException) -> None:
        """Give every caller still waiting the batch's error (any thread)."""
        finish = self.batcher.jobs.finish
        for entry in self.entries:
            if isinstance(exc, (Interrupted, asyncio.CancelledError)):
                finish(entry.job, P.FAIL, CANCELLED)
            else:
                finish(entry.job, P.ERROR, exc)


class Batcher:
    """The queues of this worker's batched functions, and their batches."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, jobs: Jobs, sync: SyncRunner, tasks: Tasks
    ) -> None:
        self.loop = loop
        self.jobs = jobs
        self._sync = sync
        self._tasks = tasks
        self._queues: dict[Batched, _Queue] = {}
        self._reported: set[tuple[str, str]] = set()  # names Erlang knows are batched

    def add_threadsafe(self, job: Job, fn: Batched, request: Call) -> None:
        """A call whose function the main thread resolved (its module was imported for
        it): hand it to the loop."""
        self.loop.call_soon_threadsafe(self.add, job, fn, request)

    def add(self, job: Job, fn: Batched, request: Call) -> None:
        """A call to a batched function: its item waits for a batch."""
        if job.cancelled:  # cancelled while the main thread handed it over
            self.jobs.finish(job, P.FAIL, CANCELLED)
            return
        self._report(request.module, request.function, fn)
        if len(request.args) != 1 or request.kwargs:
            name = getattr(fn, "__qualname__", repr(fn))
            error = TypeError(
                f"{name} is erlpy.batched: each call gives it one item "
                f"(one argument, no keyword arguments), not {len(request.args)} "
                f"argument(s) and {len(request.kwargs)} keyword argument(s)"
            )
            self.jobs.finish(job, P.ERROR, error)
            return
        queue = self._queues.get(fn)
        if queue is None:
            queue = self._queues[fn] = _Queue(fn)
        entry = _Entry(job, request.args[0], _monotonic())
        job.batch = queue
        queue.pending.append(entry)
        if len(queue.pending) >= fn.max_size:
            self._form(queue)
        elif queue.timer is None:
            # Even with max_wait 0 this runs after the messages already read: the calls
            # of one frame make one batch.
            self._arm(queue, entry.arrived + fn.max_wait)

    def cancel(self, job: Job) -> Job | None:
        """A caller gave up: answer it now. Returns the batch's job to stop once none of
        its callers is left, else None."""
        if job.answered:
            return None
        job.cancelled = True
        holder = job.batch
        self.jobs.finish(job, P.FAIL, CANCELLED)
        if isinstance(holder, _Queue):
            pending = holder.pending
            for i, entry in enumerate(pending):
                if entry.job is job:
                    del pending[i]
                    break
            return None
        batch: Batch = holder
        batch.live -= 1
        return batch.job if batch.live == 0 else None

    def ended(self, batch: Batch) -> None:
        """A batch has ended (its callers are answered): the next may start."""
        for entry in batch.entries:
            if not entry.job.answered:  # a task cancelled before it first ran
                self.jobs.finish(entry.job, P.FAIL, CANCELLED)
        batch.queue.running -= 1
        self._form(batch.queue)

    def start_task(self, batch: Batch, awaitable: Awaitable[Any] | None) -> None:
        """Run a batch as a task on the loop: an async function's call, or the coroutine a
        sync function returned."""
        job = batch.job
        self._tasks.spawn(job, self._run_async(batch, awaitable))
        if job.task is None:  # every caller gave up before it could start
            self._task_ended(batch, awaitable)
        else:
            job.task.add_done_callback(lambda _: self._task_ended(batch, awaitable))

    def _task_ended(self, batch: Batch, awaitable: Awaitable[Any] | None) -> None:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # a task cancelled before it ran never awaited it
        self.ended(batch)

    async def _run_async(self, batch: Batch, awaitable: Awaitable[Any] | None) -> None:
        batch.job.started = True
        try:
            results = batch.call() if awaitable is None else awaitable
            if inspect.isawaitable(results):
                results = await results
        except asyncio.CancelledError:
            batch.fail(Interrupted())
            raise
        except BaseException as exc:
            batch.fail(exc)
        else:
            batch.complete(results)

    def _report(self, module: Any, function: Any, fn: Batched) -> None:
        key = (module, function)
        if type(module) is str and key not in self._reported:
            self._reported.add(key)
            self._sync.send([P.BATCHED, module, function, fn.max_size])

    def _form(self, queue: _Queue) -> None:
        """Start the batches that are due; set the timer for the next one."""
        fn = queue.fn
        pending = queue.pending
        while pending and (fn.is_async or not queue.running):
            now = _monotonic()
            due = pending[0].arrived + fn.max_wait
            if len(pending) < fn.max_size and now < due:
                self._arm(queue, due)
                return
            taken = pending[: fn.max_size]
            del pending[: fn.max_size]
            entries = []
            for entry in taken:
                deadline = entry.job.deadline
                if deadline is not None and deadline <= now:
                    self.jobs.finish(entry.job, P.FAIL, TIMEOUT)  # its caller has gone
                else:
                    entries.append(entry)
            if entries:
                self._start(queue, Batch(self, queue, entries))
        if not pending and not queue.running and queue.timer is None:
            if self._queues.get(fn) is queue:
                del self._queues[fn]  # idle: a function redefined leaves nothing behind

    def _start(self, queue: _Queue, batch: Batch) -> None:
        queue.running += 1
        for entry in batch.entries:
            entry.job.batch = batch
        if queue.fn.is_async:
            self.start_task(batch, None)
        else:
            self._sync.submit(batch.job)

    def _arm(self, queue: _Queue, when: float) -> None:
        timer = queue.timer
        if timer is not None:
            if timer.when() <= when:
                return  # it fires first, and sets the next
            timer.cancel()
        queue.timer = self.loop.call_at(when, self._on_timer, queue)

    def _on_timer(self, queue: _Queue) -> None:
        queue.timer = None
        self._form(queue)

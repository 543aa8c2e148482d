"""Sync work on the main thread, and its interruption.

The main thread runs sync requests one at a time, in arrival order: plain calls,
``eval``/``exec``, imports and sync generators. It is the main thread so that ``signal``
and libraries that insist on the main thread keep working. A sync generator that runs out
of credit is *parked* (it is a suspended frame, nothing blocks) and the main thread goes
on with other requests until Erlang grants more.

User code runs inside an *interruptible window* (:meth:`SyncRunner._user`): a cancel
raises :class:`Interrupted` in it with ``PyThreadState_SetAsyncExc``, under a lock, and a
pending interrupt is cleared when user code returns, so it never lands in the runtime's
own code.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import itertools
import logging
import os
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any, Final, NoReturn

from . import _protocol as P
from ._batched import Batched
from ._codec import Atom, pack, thread_packer
from ._deadline import DEADLINE
from ._errors import BadName, Interrupted
from ._handoff import Handoff
from ._held import HOLD, HeldReplies, QuickCalls
from ._jobs import CANCELLED, Job, Jobs, Pending
from ._messages import Call, Eval, Exec, StreamCall, StreamEval
from ._names import Resolver, compile_code, kwargs, namespace
from ._process import ProcessState, exit_forked
from ._stream import BATCH_ITEMS, produce
from ._tasks import Tasks
from ._wire import FrameWriter

# Collecting streams (credit 0: py:stream, py:stream_eval) send up to this many items a
# message: big enough to pull items at C speed, small enough that Erlang decodes one chunk
# while Python makes the next (65536 took twice as long for 100k items)...
COLLECT_CHUNK: Final = 1 << 13
# ... and about this many bytes: big items go a few at a time, so that collecting holds
# no more of them than streaming does (with max_memory, 8,192 items of 4 MB could not be
# collected). The first chunk, of COLLECT_FIRST items, tells how big they are.
COLLECT_BYTES: Final = 1 << 20
COLLECT_FIRST: Final = 16

# Requests after which the main thread reads the pipe itself when idle.
_PLAIN: Final = (Call, Eval, Exec, StreamCall, StreamEval)

# Where erlpy's own code is (a signal that interrupts it is dropped).
_PACKAGE_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Put on the main thread's queue to wake a waiter; otherwise ignored.
_WAKE: Final = object()

# int PyThreadState_SetAsyncExc(unsigned long id, PyObject *exc); exc NULL clears.
_SetAsyncExc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)


class SyncRunner:
    """The main thread's queue of sync work, the code that runs it, and its interrupts."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        writer: FrameWriter,
        jobs: Jobs,
        tasks: Tasks,
        resolver: Resolver,
        main_module: types.ModuleType,
        process: ProcessState,
    ) -> None:
        self._loop = loop
        self._writer = writer
        self._jobs = jobs
        self._tasks = tasks
        self._resolver = resolver
        self._globals = main_module.__dict__
        self._process = process
        self._queue: Handoff[Job | object] = Handoff()
        self.submit = self._queue.put  # queue a job for the main thread (any thread)
        self.main_ident = threading.get_ident()
        # A function pointer of our own, not ctypes.pythonapi's: setting argtypes on that
        # one would change it for every user of ctypes in the process.
        self._set_async_exc = _SetAsyncExc(("PyThreadState_SetAsyncExc", ctypes.pythonapi))
        self.interrupt_lock = threading.Lock()
        self._current: Job | None = None  # the job whose user code may be interrupted
        self._interrupt_pending = False
        self._sigint_held: Job | None = None  # SIGINT came during this job's write
        # Reads Erlang's pipe on the main thread while it is idle (Dispatcher): done after
        # a plain sync request, as the next one is likely another.
        self.read_while_idle: Callable[[Handoff[Job | object]], bool] | None = None
        # Gives the pipe back to the loop thread if the main thread kept it (Dispatcher).
        self.give_back: Callable[[], None] = _nothing
        self._reads_when_idle = False
        # Results held while more requests wait behind them, and which calls are quick
        # (_held): only those hold them.
        self._held = HeldReplies(loop, writer, self._hold_timer_fired)
        self._quick = QuickCalls()
        self._job_started = 0.0  # when the job the main thread runs started (0: none)
        self._running: Job | None = None  # that job
        # Where a call to an erlpy.batched function resolved here goes (_batch.Batcher).
        self.to_batcher: Callable[[Job, Batched, Call], None] | None = None

    def after_fork_in_child(self) -> None:
        self.interrupt_lock = threading.Lock()  # a thread that held it is not here
        self._queue.after_fork_in_child()

    def run_forever(self) -> NoReturn:
        while True:
            try:
                self._next()
            except BaseException as exc:
                # What a job's code lets escape (a batch's results that raise when read, a
                # signal handler's exception) must not end the main thread, and with it the
                # worker and every request on it: the job gets the error. Outside any job,
                # the runtime itself failed: the worker exits, and Erlang starts another.
                job, self._running = self._running, None
                if job is None or self._process.forked:
                    raise
                self._job_started = 0.0
                self.give_back()
                if not job.answered:
                    self._jobs.finish(job, P.ERROR, exc)
                logging.getLogger("erlpy").error("erlpy: a request's %r reached the runtime", exc)

    def on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
        """SIGINT, or ``_thread.interrupt_main()``: a KeyboardInterrupt in the sync user
        code it interrupts, as in plain Python. Arriving while erlpy's own code runs, it
        is dropped (between requests it would end the worker and every request on it),
        but for one that comes while user code is in erlpy's: it is raised after that
        job's next write to Erlang (a print's; inside the write it would leave the
        writer taken), if there is one."""
        if self._current is None:
            return
        if frame is not None and not frame.f_code.co_filename.startswith(_PACKAGE_DIR):
            raise KeyboardInterrupt
        # In erlpy's code that user code called (a print's write to Erlang): raised once
        # that write is done, back on the way to user code (SyncRunner.send).
        self._sigint_held = self._current

    def _next(self) -> None:
        """Wait for the next item of the queue and run it."""
        if self._queue.empty():
            self._held.release()
            if self._reads_when_idle and self.read_while_idle:
                self._reads_when_idle = self.read_while_idle(self._queue)
            else:
                self.give_back()
        item = self._queue.get()
        if type(item) is Job:
            quick = self._quick.expected(item.request)
            self._held.before_job(not self._queue.empty(), quick)
            # The pipe the main thread read stays its own only through a burst of
            # quick calls, whose held replies' timer takes it back if one is long.
            if not (quick and self._held.holding):
                self.give_back()
            self._job_started = time.monotonic()
            self._running = item
            self._run(item)
            self._running = None
            self._job_started = 0.0
            # After a request it answered, the next is likely another: read for it.
            self._reads_when_idle = item.answered and type(item.request) in _PLAIN
        # anything else is a _WAKE nobody waits for any more

    def _hold_timer_fired(self) -> bool:
        """The held replies' timer fired, on the loop thread. A job that has run for HOLD
        is not the quick call it was taken for: the loop thread takes the pipe back (to
        read a cancel, say). Returns whether to arm the timer again: a job has just
        started, which may turn out long too."""
        started = self._job_started
        if started and time.monotonic() - started < HOLD:
            return True
        if started:
            self.give_back()
        return False

    def resume(self, job: Job) -> None:
        """Give a parked sync stream back to the main thread."""
        self._queue.put(job)

    # ------------------------------------------------------------------ interrupts

    def send(self, message: list[Any]) -> None:
        """Send a message that is no job's terminal one (logs, callbacks, erlang.send)."""
        data = pack(message)
        if self._current is None or threading.get_ident() != self.main_ident:
            self._writer.send(data)
            return
        # Sync user code (print, erlang.send, erlang.call) where a cancel may interrupt
        # it: an interrupt inside the writer would lose the frame and leave the writer
        # taken for good. Hold interrupts off while writing, and raise a pending one after.
        with self.interrupt_lock:
            interrupted = self._interrupt_pending
            if interrupted:
                self._interrupt_pending = False
                self._set_async_exc(self.main_ident, ctypes.py_object())
            self._writer.send(data)
        if self._sigint_held is not None:
            held, self._sigint_held = self._sigint_held, None
            if held is self._current:
                raise KeyboardInterrupt
        if interrupted:
            raise Interrupted

    def cancel(self, job: Job) -> tuple[bool, Pending | None]:
        """Mark a sync job cancelled and interrupt it if its user code runs. Returns whether
        to answer it now, and the callback it waited for (now abandoned), if any."""
        abandoned: Pending | None = None
        with self.interrupt_lock:
            job.cancelled = True
            # Still queued behind other sync work: answer now, so Erlang's grace timer
            # does not mistake waiting for being stuck.
            answer = not job.started
            if job.waiting is not None and not job.closing:
                # Waiting in erlpy.erlang.call(), maybe under other requests the main
                # thread runs meanwhile: answer now too. The wait raises Interrupted once
                # the main thread is back in it; the job's later answer is dropped.
                abandoned = job.waiting
                abandoned.finish(None, Interrupted())
                answer = True
            elif self._current is job and not job.closing:
                self._interrupt_pending = True
                self._set_async_exc(self.main_ident, ctypes.py_object(Interrupted))
        if abandoned is not None:
            self._queue.put(_WAKE)
        return answer, abandoned

    def wake(self) -> None:
        """Wake the main thread if it waits for a callback (see :meth:`wait_for`)."""
        self._queue.put(_WAKE)

    def _user(self, job: Job, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run user code on the main thread where Erlang may interrupt it."""
        return self._window(job, False, fn, args, kw)

    def _user_cleanup(self, job: Job, fn: Callable[[], Any]) -> None:
        """Run user clean-up code (a generator's ``close``), even for a cancelled job. A
        cancel that comes meanwhile (it may be the one this clean-up is for: it resumed
        the parked generator before marking the job) must not cut it short."""
        self._window(job, True, fn, (), {})

    def _window(
        self,
        job: Job,
        closing: bool,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> Any:
        """The interruptible window around user code, with the job's deadline set (outside
        the window, so an interrupt never lands in setting it back). A forked child that
        comes back here exits."""
        token = DEADLINE.set(job.deadline)
        try:
            with self.interrupt_lock:
                if closing:
                    job.closing = True
                elif job.cancelled:
                    raise Interrupted
                self._current = job
            try:
                value = fn(*args, **kw)
            except BaseException as exc:
                if self._process.forked:
                    exit_forked(exc)
                raise
            else:
                if self._process.forked:
                    exit_forked(None)
            finally:
                self._leave_user()
        finally:
            DEADLINE.reset(token)
        return value

    def _leave_user(self) -> None:
        # An interrupt set just before we got here may still be pending: clear it under the
        # lock, retrying if it fires first, so it can never hit the runtime's own code.
        while True:
            try:
                with self.interrupt_lock:
                    self._current = None
                    if self._interrupt_pending:
                        self._interrupt_pending = False
                        self._set_async_exc(self.main_ident, ctypes.py_object())
                return
            except Interrupted:
                continue

    # ------------------------------------------------------------------ callbacks

    def job_to_wait(self) -> Job | None:
        """The job whose user code calls into Erlang (None outside a job). The clean-up of
        a cancelled job (a generator's ``finally``) may call: it runs to its end, as an
        asyncio task's ``finally`` may await after its cancellation.

        Raises:
            Interrupted: it is cancelled, and maybe answered already: no new callback.
        """
        job = self._current
        if job is not None and job.cancelled and not job.closing:
            raise Interrupted
        return job

    def wait_for(self, job: Job | None, pending: Pending, message: list[Any]) -> None:
        """Send a CALLBACK and wait for its reply on the main thread, which keeps running
        sync requests meanwhile: the Erlang function may itself call into this worker
        (re-entrancy), and Erlang may cancel ``job``."""
        self._held.release()  # the requests it runs meanwhile answer at once
        self.give_back()  # the loop thread reads the reply
        try:
            if job is not None:
                job.waiting = pending
            self.send(message)
            while not pending.done:
                item = self._queue.get()
                if type(item) is Job:
                    self._run(item)
                    with self.interrupt_lock:
                        self._current = job
                    if job is not None and job.cancelled and not job.closing:
                        raise Interrupted
        finally:
            if job is not None:
                job.waiting = None

    # ------------------------------------------------------------------ requests

    def _run(self, job: Job) -> None:
        if job.iterator is not None:
            self._pump(job)  # a parked stream got credit (or was cancelled)
            return
        if job.batch is not None:
            # A batch of calls to an erlpy.batched function (_batch): it ends (and lets
            # the next batch start) even if every caller has given up meanwhile.
            job.batch.run(self._user)
            return
        with self.interrupt_lock:
            if job.cancelled:
                return  # answered by the cancel while it waited in the queue
            job.started = True
        request = job.request
        try:
            match request:  # class patterns without arguments: positional ones are slow
                case Call():
                    fn = job.fn
                    if fn is None:
                        fn = self._resolver.resolve(request.module, request.function)[0]
                        if type(fn) is Batched and self.to_batcher is not None:
                            return self.to_batcher(job, fn, request)  # just imported
                    start = time.perf_counter()
                    value = self._user(job, fn, *request.args, **kwargs(request.kwargs))
                    self._quick.took(request, time.perf_counter() - start)
                    self._complete(job, value)
                case Eval() | StreamEval():
                    code = compile_code(request.code, "eval")
                    globals_ = self._globals if request.session is None else request.session.globals
                    value = self._user(job, eval, code, namespace(globals_, request.locals))
                    if type(request) is Eval:
                        self._complete(job, value)
                    else:
                        self._stream_value(job, value)
                case Exec():
                    code = compile_code(request.code, "exec")
                    if request.session is None:
                        self._user(job, exec, code, self._globals)
                        self._resolver.clear()
                    else:
                        self._user(job, exec, code, request.session.globals)
                    self._jobs.finish(job, P.RESULT, None)
                case StreamCall():
                    fn = job.fn or self._resolver.resolve(request.module, request.function)[0]
                    stream = job.stream
                    assert stream is not None
                    args = request.args
                    if stream.input is not None:
                        args = [stream.input, *args]
                    value = self._user(job, fn, *args, **kwargs(request.kwargs))
                    self._stream_value(job, value)
        except Interrupted:
            self._jobs.finish(job, P.FAIL, CANCELLED)
        except BadName as exc:
            self._jobs.finish(job, P.FAIL, (Atom("badarg"), (Atom("invalid_name"), str(exc))))
        except BaseException as exc:
            self._jobs.finish(job, P.ERROR, exc)

    def _complete(self, job: Job, result: Any) -> None:
        """Reply with a sync call's result; a coroutine it returned goes to the loop."""
        if inspect.isawaitable(result):
            self._loop.call_soon_threadsafe(self._tasks.start_awaitable, job, result)
            return
        self._jobs.finish(job, P.RESULT, result, self._held.holding)

    def _stream_value(self, job: Job, value: Any) -> None:
        if hasattr(value, "__aiter__") or inspect.isawaitable(value):
            self._loop.call_soon_threadsafe(self._tasks.start_stream, job, value)
            return
        job.iterator = iter(value)
        assert job.stream is not None
        if job.stream.credit == 0:
            self._collect(job)
        else:
            self._pump(job)

    def _collect(self, job: Job) -> None:
        """A stream the caller collects whole: no flow control, so pull items in big
        chunks at C speed (still interruptible between items)."""
        stream = job.stream
        iterator = job.iterator
        assert stream is not None and iterator is not None
        size = COLLECT_FIRST
        try:
            while True:
                chunk = self._user(job, list, itertools.islice(iterator, size))
                if stream.cancelled:
                    raise Interrupted  # maybe answered already (cancel): send nothing more
                if len(chunk) < size:
                    size = 0  # the generator has ended
                if chunk:
                    data = pack(chunk)
                    self._writer.send(*stream.data_parts(data))
                    if size:
                        size = max(1, min(COLLECT_CHUNK, COLLECT_BYTES * len(chunk) // len(data)))
                if not size:
                    break
        except BaseException as exc:
            self._end_stream(job, iterator, exc)
            return
        self._end_stream(job, iterator, None)

    def _pump(self, job: Job) -> None:
        """Run a sync stream until it ends, runs out of credit (it parks), or has produced
        a batch while other sync work waits (it goes to the back of the queue)."""
        stream = job.stream
        iterator = job.iterator
        assert stream is not None and iterator is not None
        next_item = iterator.__next__
        pack_item = thread_packer().pack
        produced = 0
        try:
            while True:
                if stream.cancelled:
                    raise Interrupted
                if stream.credit <= 0:
                    stream.flush()
                    if stream.park():
                        return
                    continue
                if produced >= BATCH_ITEMS and not self._queue.empty():
                    stream.flush()
                    self._queue.put(job)
                    return
                count, ended = self._user(
                    job, produce, self._process, stream, next_item, pack_item, BATCH_ITEMS
                )
                produced += count
                if ended:
                    break
                stream.flush()
        except BaseException as exc:
            self._end_stream(job, iterator, exc)
            return
        self._end_stream(job, iterator, None)

    def _end_stream(self, job: Job, iterator: Iterator[Any], exc: BaseException | None) -> None:
        """Close the generator first, so its `finally` has run when the owner hears the
        end; then exactly one terminal message."""
        job.iterator = None
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                self._user_cleanup(job, close)
            except BaseException as close_exc:
                logging.getLogger("erlpy").warning("closing stream %s: %r", job.id, close_exc)
        if isinstance(exc, Interrupted):
            self._jobs.finish(job, P.FAIL, CANCELLED)
        elif exc is None:
            self._jobs.finish(job, P.DONE)
        else:
            self._jobs.finish(job, P.ERROR, exc)


def _nothing() -> None:
    pass

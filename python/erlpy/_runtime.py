"""The worker runtime: one per Python OS process, driven by one Erlang ``erlpy_worker``.

Threads:

* the **loop thread** runs the asyncio event loop. It reads every frame from Erlang, so
  control messages (cancel, credit, stream input) are handled even while sync code runs,
  and it runs async functions and async generators, interleaved.
* the **main thread** runs sync code, one request at a time, in arrival order: plain
  calls, ``eval``/``exec``, imports and sync generators. It is the main thread so that
  ``signal`` and libraries that insist on the main thread keep working. A sync generator
  that runs out of credit is *parked* (it is a suspended frame, nothing blocks) and the
  main thread goes on with other requests until Erlang grants more.

Anyone may write: :class:`~erlpy._wire.FrameWriter` coalesces messages into frames.

A process forked from user code is not a worker: it drops the protocol at once, and exits
when its code comes back into the runtime, instead of answering the parent's request.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import functools
import importlib
import inspect
import itertools
import logging
import os
import queue
import resource
import selectors
import sys
import textwrap
import threading
import traceback
import types
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

from . import _protocol as P
from ._codec import (
    Atom,
    EncodeError,
    new_unpacker,
    pack,
    pack_parts,
    thread_packer,
    unpack_all,
)
from ._output import LogHandler, LogStream
from ._stream import BATCH_ITEMS, InputStream, Stream
from ._wire import PROTOCOL_LOST, FrameReader, FrameWriter, TooBig, die

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

# Collecting streams (credit 0: py:stream, py:stream_eval) send this many items a message:
# big enough to pull items at C speed, small enough that Erlang decodes one chunk while
# Python makes the next (65536 took twice as long for 100k items).
COLLECT_CHUNK: Final = 1 << 13
# Threads switch the GIL this often (seconds). The default, 5 ms, would let a busy sync
# generator hold off the loop thread, which reads control messages (credit, cancel).
SWITCH_INTERVAL: Final = 0.001
# Pipes this large let a big frame cross in a few system calls (Linux caps unprivileged
# processes at /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_SIZE: Final = 1 << 20

# Exit status of a worker whose event loop ended: nothing reads Erlang's messages any more.
LOOP_DIED: Final = 71

_CANCELLED: Final = Atom("cancelled")


class Interrupted(BaseException):
    """Raised in sync Python code whose request was cancelled or timed out.

    A ``BaseException``, like ``KeyboardInterrupt``, so ``except Exception`` in user code
    does not swallow it.
    """


_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]

_runtime: Runtime | None = None


def current() -> Runtime:
    """The runtime of this worker process; raises when not running inside erlpy."""
    if _runtime is None:
        raise RuntimeError("not running inside an erlpy worker")
    return _runtime


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=1024)
def _compile(code: str, mode: str) -> types.CodeType:
    if mode == "exec" and _indented(code):
        # Code indented to sit inside Erlang source (py:exec, a pool's `init`).
        code = textwrap.dedent(code)
    return compile(code, "<erlpy>", mode)


def _indented(code: str) -> bool:
    for line in code.splitlines():
        if line.strip():
            return line[0] in " \t"
    return False


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and all(part.isidentifier() for part in name.split("."))


class BadName(Exception):
    """A module or function name that is not a dotted Python identifier."""


class _Pending:
    """A callback into Erlang awaited by the main thread."""

    __slots__ = ("callback_id", "done", "error", "value")

    def __init__(self, callback_id: int) -> None:
        self.callback_id = callback_id
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def finish(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error, self.done = value, error, True


# Put on the main thread's queue to wake a waiter; otherwise ignored.
_WAKE: Final = object()


@dataclass(eq=False, slots=True)
class Job:
    """One request from Erlang, alive until its terminal reply is sent."""

    id: int
    msg: list[Any]
    cancelled: bool = False
    started: bool = False
    answered: bool = False  # its terminal message is sent (see Runtime._claim)
    task: asyncio.Task[None] | None = None
    stream: Stream | None = None
    iterator: Iterator[Any] | None = None  # a sync stream being pumped or parked
    waiting: _Pending | None = None  # a callback into Erlang the job waits for
    fn: Callable[..., Any] | None = None  # the function, when the loop thread resolved it


def _produce(
    rt: Runtime,
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
        if rt.forked:
            _exit_forked(None)  # the generator forked: its child must not send the item
        try:
            data = pack_item(item)
        except ValueError as exc:
            raise EncodeError(f"cannot send value to Erlang: {exc}") from None
        count += 1
        if stream.queue(data, on_loop=False) or count >= limit:
            return count, False


def _exit_forked(outcome: BaseException | None) -> NoReturn:
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


class _ForkSafeSelector(selectors.BaseSelector):
    """The event loop's selector, which a forked child can let go of: the epoll instance
    is shared across fork, so a child that changed it (epoll_ctl) or waited on it would
    take events meant for the parent's loop (its reads, its self-pipe wake-ups)."""

    def __init__(self) -> None:
        self._inner: selectors.BaseSelector = selectors.DefaultSelector()

    def detach_in_child(self) -> None:
        """Start afresh; closing the child's copy of the epoll fd leaves the parent's
        registrations alone."""
        self._inner.close()
        self._inner = selectors.DefaultSelector()

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

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return self._inner.select(timeout)

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()


class Runtime:
    def __init__(self, fd_in: int, fd_out: int) -> None:
        self.fd_in = fd_in
        self.reader = FrameReader(fd_in)  # used by the loop thread only
        self.writer = FrameWriter(fd_out)
        self._selector = _ForkSafeSelector()
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(self._selector)
        self.worker_pid: Any = None
        self.main_module = types.ModuleType("__main__")
        self.main_module.__dict__["__builtins__"] = __builtins__
        self._jobs: dict[int, Job] = {}
        self._sync: queue.SimpleQueue[Job | object] = queue.SimpleQueue()
        # (module, name) -> (function, is it async?); not for '__main__', which exec changes
        self._resolved: dict[tuple[str, str], tuple[Callable[..., Any], bool]] = {}
        self._callbacks: dict[int, Future[Any] | asyncio.Future[Any] | _Pending] = {}
        self._callback_ids = itertools.count(1)
        self._main_ident = threading.get_ident()
        self._loop_ident = 0
        self._interrupt_lock = threading.Lock()
        self._current: Job | None = None
        self._interrupt_pending = False
        self._answer_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._log_handler: LogHandler | None = None
        self.forked = False  # this is a forked copy of the worker process

    # ------------------------------------------------------------------ start-up

    def serve(self) -> None:
        """Run the worker until Erlang closes the pipe. Never returns."""
        global _runtime
        _runtime = self
        from . import erlang

        sys.modules["__main__"] = self.main_module
        sys.modules.setdefault("erlang", erlang)  # `import erlang`, as in erlang_python
        self.main_module.__dict__.update(asyncio=asyncio, erlang=erlang)
        self._redirect_output()
        _keep_freed_memory(True)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
        sys.setswitchinterval(SWITCH_INTERVAL)
        for fd in (self.fd_in, self.writer.fd):
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # not a pipe, or over the system's limit: smaller frames, same result
        os.set_blocking(self.fd_in, False)
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        thread = threading.Thread(target=self._run_loop, name="erlpy-loop", daemon=True)
        thread.start()
        self.send(
            [
                P.READY,
                {
                    "python": sys.version.split()[0],
                    "executable": sys.executable,
                    "os_pid": os.getpid(),
                },
            ]
        )
        while True:
            self._run_item(self._sync.get())

    def _redirect_output(self) -> None:
        def emit(level: Atom, text: str) -> None:
            self.send([P.LOG, level, text])

        sys.stdout = LogStream(emit, "notice", "<stdout>")
        sys.stderr = LogStream(emit, "warning", "<stderr>")
        root = logging.getLogger()
        self._log_handler = LogHandler(emit)
        root.addHandler(self._log_handler)
        root.setLevel(logging.INFO)

    def _after_fork_in_child(self) -> None:
        """A fork from user code (os.fork, multiprocessing): the child is no worker. It
        lets go of the protocol and of the parent's event loop registrations, and writes
        to its real fds 1/2."""
        global _runtime
        self.forked = True
        _runtime = None
        # Threads that held these at fork time do not exist here.
        self._interrupt_lock = threading.Lock()
        self._answer_lock = threading.Lock()
        self.writer.close_in_child()
        try:
            os.close(self.fd_in)
        except OSError:
            pass
        if sys.__stdout__ is not None:
            sys.stdout = sys.__stdout__
        if sys.__stderr__ is not None:
            sys.stderr = sys.__stderr__
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
        self._selector.detach_in_child()

    def _exit_if_forked(self, outcome: BaseException | None) -> None:
        if self.forked:
            _exit_forked(outcome)

    def _run_loop(self) -> None:
        try:
            self._loop_ident = threading.get_ident()
            asyncio.set_event_loop(self.loop)
            self.loop.add_reader(self.fd_in, self._on_readable)
            self.loop.run_forever()
            reason = "the event loop stopped"
        except BaseException as exc:
            reason = f"the event loop died: {exc!r}"
        # Nobody reads Erlang's messages any more: die, so that Erlang restarts the worker
        # instead of waiting on a deaf one.
        die(reason, LOOP_DIED)

    def _on_readable(self) -> None:
        if self.forked:
            return  # queued before a fork on the loop thread: the pipe is the parent's
        reader = self.reader
        # Drain the pipe: a large frame arrives in many reads, no need to go back to the
        # selector between them.
        while True:
            try:
                frames = reader.read()
            except BlockingIOError:
                return
            except OSError as exc:  # EBADF and the like: the protocol is gone
                die(f"cannot read from Erlang: {exc}", PROTOCOL_LOST)
            if frames is None:
                os._exit(0)  # Erlang is gone: never outlive the port
            for frame in frames:
                if isinstance(frame, TooBig):
                    self._refuse_too_big(frame.head)
                else:
                    self._dispatch_frame(frame)

    def _dispatch_frame(self, frame: bytearray | memoryview) -> None:
        # Each frame is decoded on its own, so a damaged one cannot swallow the next.
        try:
            if len(frame) > FrameReader.BIG:
                messages = unpack_all(frame)
            else:
                unpacker = new_unpacker()
                unpacker.feed(frame)
                messages = list(unpacker)
                if unpacker.tell() != len(frame):
                    raise ValueError(f"frame ends inside a message ({len(frame)} bytes)")
        except Exception as exc:
            text = f"erlpy: dropped an undecodable frame: {exc!r}"
            self.send([P.LOG, Atom("error"), text])
            return
        for message in messages:
            try:
                self._dispatch(message)
            except Exception as exc:  # not a message of the protocol: say so, go on
                text = f"erlpy: dropped a malformed message: {exc!r}"
                self.send([P.LOG, Atom("error"), text])

    def _refuse_too_big(self, head: bytes) -> None:
        """A request too big for this worker's memory (max_memory): answer it if its head
        says which one it was."""
        try:
            unpacker = new_unpacker()
            unpacker.feed(head)
            unpacker.read_array_header()
            unpacker.unpack()  # the kind of message
            job_id = unpacker.unpack()
        except Exception:
            job_id = None
        if isinstance(job_id, int):
            error = MemoryError("the request does not fit in this worker's memory (max_memory)")
            self.error(Job(job_id, []), error)
        else:
            self.send([P.LOG, Atom("error"), "erlpy: dropped a frame too big for max_memory"])

    # ------------------------------------------------------------------ output

    def send(self, message: list[Any]) -> None:
        data = pack(message)
        if self._current is None or threading.get_ident() != self._main_ident:
            self.writer.send(data)
            return
        # Sync user code (print, erlang.send, erlang.call) where a cancel may interrupt
        # it: an interrupt inside the writer would lose the frame and leave the writer
        # taken for good. Hold interrupts off while writing, and raise a pending one after.
        with self._interrupt_lock:
            interrupted = self._interrupt_pending
            if interrupted:
                self._interrupt_pending = False
                _set_async_exc(self._main_ident, ctypes.py_object())
            self.writer.send(data)
        if interrupted:
            raise Interrupted

    def _claim(self, job: Job) -> bool:
        """Whether the caller is the one to send the job's terminal message: a cancel may
        answer a job the main thread is still unwinding."""
        with self._answer_lock:
            if job.answered:
                return False
            job.answered = True
            return True

    def reply(self, job: Job, value: Any) -> None:
        self._exit_if_forked(None)
        try:
            parts = pack_parts([P.RESULT, job.id, value])
        except EncodeError as exc:
            self.error(job, exc)
            return
        if self._claim(job):
            self.writer.send(*parts)

    def error(self, job: Job, exc: BaseException) -> None:
        self._exit_if_forked(exc)
        if not self._claim(job):
            return
        tb = exc.__traceback__
        # Drop the runtime's own frames so the traceback starts in user code.
        while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        try:
            message = str(exc)
        except Exception as str_exc:  # a broken __str__ must not cost the reply
            message = f"<str() failed: {str_exc!r}>"
        fields = [_type_name(type(exc)), message, text]
        try:
            data = pack([P.ERROR, job.id, *fields])
        except EncodeError:
            # Lone surrogates and the like: keep the text, lose only what cannot travel.
            safe = [f.encode("utf-8", "backslashreplace").decode("utf-8") for f in fields]
            data = pack([P.ERROR, job.id, *safe])
        self.writer.send(data)

    def fail(self, job: Job, reason: Any) -> None:
        if self.forked:
            _exit_forked(SystemExit(1))
        if self._claim(job):
            self.send([P.FAIL, job.id, reason])

    def done(self, job: Job) -> None:
        self._exit_if_forked(None)
        if self._claim(job):
            self.send([P.DONE, job.id])

    def _finish(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    # ------------------------------------------------------------------ dispatch (loop thread)

    def _dispatch(self, msg: list[Any]) -> None:
        op = msg[0]
        if op == P.CALL or op == P.STREAM_CALL:
            job = Job(msg[1], msg)
            self._jobs[job.id] = job
            if op == P.STREAM_CALL:
                job.stream = Stream(self, job, msg[6])
                if msg[7]:
                    job.stream.input = InputStream()
            resolved = self._resolve_now(msg[2], msg[3])
            if resolved is not None and resolved[1]:
                self._start_async_call(job, resolved[0])
            else:
                job.fn = resolved[0] if resolved is not None else None
                self._sync.put(job)
        elif op == P.EVAL or op == P.EXEC or op == P.STREAM_EVAL:
            job = Job(msg[1], msg)
            if op == P.STREAM_EVAL:
                job.stream = Stream(self, job, msg[4])
            self._jobs[job.id] = job
            self._sync.put(job)
        elif op == P.CANCEL:
            job_or_none = self._jobs.get(msg[1])
            if job_or_none is not None:
                self._cancel(job_or_none)
        elif op == P.CREDIT:
            job_or_none = self._jobs.get(msg[1])
            if job_or_none is not None and job_or_none.stream is not None:
                job_or_none.stream.add_credit(msg[2])
        elif op == P.INPUT or op == P.INPUT_CLOSE:
            job_or_none = self._jobs.get(msg[1])
            stream = job_or_none.stream if job_or_none is not None else None
            if stream is not None and stream.input is not None:
                if op == P.INPUT:
                    stream.input.put(msg[2])
                else:
                    stream.input.close()
        elif op == P.REPLY:
            self._on_callback_reply(msg[1], msg[2], msg[3])
        elif op == P.SETUP:
            # Answered like a call: the worker is ready only once its limits are in place.
            job = Job(msg[1], msg)
            self.worker_pid = msg[2]
            try:
                if _apply_limits(msg[3]):
                    # Memory kept is memory a later request cannot have.
                    _keep_freed_memory(False)
                    self.reader.keep = 0
            except Exception as exc:
                self.error(job, exc)
            else:
                self.reply(job, None)
        else:
            self.send([P.LOG, Atom("error"), f"erlpy: unknown message {op!r}"])

    def _cancel(self, job: Job) -> None:
        if job.stream is not None:
            job.stream.cancel()
        if job.task is not None:
            job.cancelled = True
            job.task.cancel()
            return
        abandoned: _Pending | None = None
        with self._interrupt_lock:
            job.cancelled = True
            # Still queued behind other sync work: answer now, so Erlang's grace timer
            # does not mistake waiting for being stuck.
            answer = not job.started
            if job.waiting is not None:
                # Waiting in erlpy.erlang.call(), maybe under other requests the main
                # thread runs meanwhile: answer now too. The wait raises Interrupted once
                # the main thread is back in it; the job's later answer is dropped.
                abandoned = job.waiting
                abandoned.finish(None, Interrupted())
                answer = True
            elif self._current is job:
                self._interrupt_pending = True
                _set_async_exc(self._main_ident, ctypes.py_object(Interrupted))
        if abandoned is not None:
            self._sync.put(_WAKE)
            self._abandon(abandoned.callback_id)
        if answer:
            self._finish(job)
            self.fail(job, _CANCELLED)

    def resume(self, job: Job) -> None:
        """Give a parked sync stream back to the main thread."""
        self._sync.put(job)

    def _spawn(self, job: Job, coro: Any) -> None:
        task = self.loop.create_task(coro)
        job.task = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, job))
        if job.cancelled:
            task.cancel()

    def _task_done(self, job: Job, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if job.id in self._jobs:
            # Cancelled before it first ran: its coroutine never got to answer.
            self._finish(job)
            self.fail(job, _CANCELLED)

    # ------------------------------------------------------------------ name resolution

    def _resolve_now(self, module: Any, name: Any) -> tuple[Callable[..., Any], bool] | None:
        """Resolve without importing (the loop thread must not block on imports)."""
        cached = self._resolved.get((module, name))
        if cached is not None:
            return cached
        if module != "__main__" and module not in sys.modules:
            return None
        try:
            return self._resolve(module, name)
        except Exception:
            return None  # the main thread resolves again and reports the error

    def _resolve(self, module: Any, name: Any) -> tuple[Callable[..., Any], bool]:
        cached = self._resolved.get((module, name))
        if cached is not None:
            return cached
        if not _valid_name(module):
            raise BadName(f"invalid module name: {module!r}")
        if not _valid_name(name):
            raise BadName(f"invalid function name: {name!r}")
        obj: Any = self.main_module if module == "__main__" else self._import(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{module}.{name} is not callable")
        resolved = (obj, inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj))
        if module != "__main__":
            self._resolved[(module, name)] = resolved
        return resolved

    @staticmethod
    def _import(module: str) -> Any:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # 'pkg.mod.Class': import the longest module prefix, then walk attributes.
            head, _, attr = module.rpartition(".")
            if not head or exc.name != module:
                raise
            return getattr(Runtime._import(head), attr)

    # ------------------------------------------------------------------ sync work (main thread)

    def _run_item(self, item: Job | object) -> None:
        if type(item) is Job:
            self._run_sync(item)
        # anything else is a _WAKE nobody waits for any more

    def _user(self, job: Job, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run user code on the main thread where Erlang may interrupt it."""
        with self._interrupt_lock:
            if job.cancelled:
                raise Interrupted
            self._current = job
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            self._exit_if_forked(exc)
            raise
        else:
            self._exit_if_forked(None)
        finally:
            self._leave_user()
        return value

    def _user_cleanup(self, job: Job, fn: Callable[[], Any]) -> None:
        """Run user clean-up code (a generator's ``close``), even for a cancelled job."""
        with self._interrupt_lock:
            self._current = job
        try:
            fn()
        except BaseException as exc:
            self._exit_if_forked(exc)
            raise
        else:
            self._exit_if_forked(None)
        finally:
            self._leave_user()

    def _leave_user(self) -> None:
        # An interrupt set just before we got here may still be pending: clear it under the
        # lock, retrying if it fires first, so it can never hit the runtime's own code.
        while True:
            try:
                with self._interrupt_lock:
                    self._current = None
                    if self._interrupt_pending:
                        self._interrupt_pending = False
                        _set_async_exc(self._main_ident, ctypes.py_object())
                return
            except Interrupted:
                continue

    def _run_sync(self, job: Job) -> None:
        if job.iterator is not None:
            self._pump(job)  # a parked stream got credit (or was cancelled)
            return
        with self._interrupt_lock:
            if job.cancelled:
                return  # answered by _cancel while it waited in the queue
            job.started = True
        msg = job.msg
        op = msg[0]
        try:
            if op == P.CALL:
                fn = job.fn or self._resolve(msg[2], msg[3])[0]
                self._complete(job, self._user(job, fn, *msg[4], **_kwargs(msg[5])))
            elif op == P.EVAL:
                code = _compile(msg[2], "eval")
                self._complete(job, self._user(job, eval, code, self._namespace(msg[3])))
            elif op == P.EXEC:
                code = _compile(msg[2], "exec")
                self._user(job, exec, code, self.main_module.__dict__)
                self._resolved.clear()
                self._finish(job)
                self.reply(job, None)
            elif op == P.STREAM_CALL:
                fn = job.fn or self._resolve(msg[2], msg[3])[0]
                stream = job.stream
                assert stream is not None
                args = msg[4] if stream.input is None else [stream.input, *msg[4]]
                self._stream_value(job, self._user(job, fn, *args, **_kwargs(msg[5])))
            elif op == P.STREAM_EVAL:
                code = _compile(msg[2], "eval")
                self._stream_value(job, self._user(job, eval, code, self._namespace(msg[3])))
        except Interrupted:
            self._finish(job)
            self.fail(job, _CANCELLED)
        except BadName as exc:
            self._finish(job)
            self.fail(job, (Atom("badarg"), (Atom("invalid_name"), str(exc))))
        except BaseException as exc:
            self._finish(job)
            self.error(job, exc)

    def _complete(self, job: Job, result: Any) -> None:
        """Reply with a sync call's result; a coroutine it returned goes to the loop."""
        if inspect.isawaitable(result):
            self.loop.call_soon_threadsafe(self._start_awaitable, job, result)
            return
        self._finish(job)
        self.reply(job, result)

    def _namespace(self, local_vars: dict[Any, Any]) -> dict[str, Any]:
        globals_ = self.main_module.__dict__
        if not local_vars:
            return globals_
        # One namespace, so comprehensions and lambdas in the expression see the locals.
        return {**globals_, **{_str_key(k): v for k, v in local_vars.items()}}

    def _stream_value(self, job: Job, value: Any) -> None:
        if hasattr(value, "__aiter__") or inspect.isawaitable(value):
            self.loop.call_soon_threadsafe(self._start_async_stream, job, value)
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
        try:
            while True:
                chunk = self._user(job, list, itertools.islice(iterator, COLLECT_CHUNK))
                if stream.cancelled:
                    raise Interrupted  # maybe answered already (_cancel): send nothing more
                if chunk:
                    self.writer.send(*stream.data_parts(pack(chunk)))
                if len(chunk) < COLLECT_CHUNK:
                    break
        except BaseException as exc:
            self._end_sync_stream(job, iterator, exc)
            return
        self._end_sync_stream(job, iterator, None)

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
                if produced >= BATCH_ITEMS and not self._sync.empty():
                    stream.flush()
                    self._sync.put(job)
                    return
                count, ended = self._user(
                    job, _produce, self, stream, next_item, pack_item, BATCH_ITEMS
                )
                produced += count
                if ended:
                    break
                stream.flush()
        except BaseException as exc:
            self._end_sync_stream(job, iterator, exc)
            return
        self._end_sync_stream(job, iterator, None)

    def _end_sync_stream(
        self, job: Job, iterator: Iterator[Any], exc: BaseException | None
    ) -> None:
        """Close the generator first, so its `finally` has run when the owner hears the
        end; then send the items still pending and exactly one terminal message."""
        self._close_sync(job, iterator)
        self._finish(job)
        if isinstance(exc, Interrupted):
            self.fail(job, _CANCELLED)  # the items pending are dropped with the stream
            return
        assert job.stream is not None
        job.stream.flush()
        if exc is None:
            self.done(job)
        else:
            self.error(job, exc)

    def _close_sync(self, job: Job, iterator: Iterator[Any]) -> None:
        job.iterator = None
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                self._user_cleanup(job, close)
            except BaseException as exc:
                logging.getLogger("erlpy").warning("closing stream %s: %r", job.id, exc)

    # ------------------------------------------------------------------ async work (loop thread)

    def _start_async_call(self, job: Job, fn: Callable[..., Any]) -> None:
        msg = job.msg
        stream = job.stream
        args = msg[4] if stream is None or stream.input is None else [stream.input, *msg[4]]
        try:
            value = fn(*args, **_kwargs(msg[5]))
        except BaseException as exc:  # a bad signature raises before any await
            self._finish(job)
            self.error(job, exc)
            return
        if stream is None:
            self._start_awaitable(job, value)
        else:
            self._start_async_stream(job, value)

    def _start_awaitable(self, job: Job, awaitable: Any) -> None:
        self._spawn(job, self._await_call(job, awaitable))

    def _start_async_stream(self, job: Job, value: Any) -> None:
        self._spawn(job, self._await_stream(job, value))

    async def _await_call(self, job: Job, awaitable: Any) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            self._finish(job)
            self.fail(job, _CANCELLED)
            return
        except BaseException as exc:
            self._finish(job)
            self.error(job, exc)
            return
        self._finish(job)
        self.reply(job, result)

    async def _await_stream(self, job: Job, value: Any) -> None:
        stream = job.stream
        assert stream is not None
        iterator: Any = None
        outcome: BaseException | None = None
        try:
            if inspect.isawaitable(value):
                value = await value
            if hasattr(value, "__aiter__"):
                iterator = aiter(value)
                await self._drive_async(stream, iterator)
            else:
                iterator = iter(value)
                for item in iterator:  # a coroutine that returned a plain iterable
                    self._exit_if_forked(None)
                    stream.push(pack(item), on_loop=True)
                    if stream.credit <= 0 and stream.limited:
                        await stream.wait_credit()
                    if stream.cancelled:
                        raise asyncio.CancelledError
        except BaseException as exc:
            outcome = exc
        self._exit_if_forked(outcome)
        # Close the generator before the terminal message, so that when the owner hears
        # the stream ended its `finally` blocks have run.
        await self._close_async(job, iterator)
        self._finish(job)
        if outcome is None:
            stream.flush()
            self.done(job)
        elif isinstance(outcome, asyncio.CancelledError):
            self.fail(job, _CANCELLED)
        else:
            stream.flush()
            self.error(job, outcome)

    async def _close_async(self, job: Job, iterator: Any) -> None:
        try:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            else:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # the stream is over: report and move on
            logging.getLogger("erlpy").warning("closing stream %s: %r", job.id, exc)

    async def _drive_async(self, stream: Stream, iterator: AsyncIterator[Any]) -> None:
        pack_item = thread_packer().pack
        since_yield = 0
        async for item in iterator:
            self._exit_if_forked(None)  # the generator forked: its child must not send
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

    # ------------------------------------------------------------------ callbacks into Erlang

    def call_erlang(self, name: str, args: tuple[Any, ...]) -> Any:
        if self.forked:
            raise RuntimeError("not running inside an erlpy worker")
        ident = threading.get_ident()
        if ident == self._loop_ident:
            raise RuntimeError(
                "erlpy.erlang.call() would block the event loop; "
                "use `await erlpy.erlang.acall(...)` in async code"
            )
        callback_id = next(self._callback_ids)
        if ident != self._main_ident:
            future: Future[Any] = Future()
            self._callbacks[callback_id] = future
            try:
                self.send([P.CALLBACK, callback_id, name, list(args)])
                return future.result()
            finally:
                self._abandon(callback_id)
        return self._call_erlang_main(callback_id, name, args)

    def _call_erlang_main(self, callback_id: int, name: str, args: tuple[Any, ...]) -> Any:
        # The main thread keeps running sync requests while it waits: the Erlang function
        # may itself call into this worker (re-entrancy), and Erlang may cancel us.
        pending = _Pending(callback_id)
        job = self._current
        if job is not None and job.cancelled:
            raise Interrupted  # answered already, maybe: no new callback for it
        try:
            self._callbacks[callback_id] = pending
            if job is not None:
                job.waiting = pending
            self.send([P.CALLBACK, callback_id, name, list(args)])
            while not pending.done:
                item = self._sync.get()
                if isinstance(item, Job):
                    self._run_sync(item)
                    with self._interrupt_lock:
                        self._current = job
                    if job is not None and job.cancelled:
                        raise Interrupted
        finally:
            if job is not None:
                job.waiting = None
            self._abandon(callback_id)
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def acall_erlang(self, name: str, args: tuple[Any, ...]) -> Any:
        if self.forked:
            raise RuntimeError("not running inside an erlpy worker")
        future: asyncio.Future[Any] = self.loop.create_future()
        callback_id = next(self._callback_ids)
        self._callbacks[callback_id] = future
        try:
            self.send([P.CALLBACK, callback_id, name, list(args)])
            return await future
        finally:  # cancelled (CancelledError goes on up) or interrupted before the reply
            self._abandon(callback_id)

    def _abandon(self, callback_id: int) -> None:
        """Nobody waits for this callback any more: have Erlang end the process running
        it. Nothing to do once its reply came (whoever pops the waiter owns it)."""
        if self._callbacks.pop(callback_id, None) is not None:
            self.send([P.CALLBACK_CANCEL, callback_id])

    def _on_callback_reply(self, callback_id: int, ok: bool, value: Any) -> None:
        from .erlang import ErlangError

        waiter = self._callbacks.pop(callback_id, None)
        error = None if ok else ErlangError(value)
        if isinstance(waiter, _Pending):
            with self._interrupt_lock:
                if not waiter.done:
                    waiter.finish(value, error)
            self._sync.put(_WAKE)
        elif waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(value)
            else:
                waiter.set_exception(error)


def _apply_limits(limits: dict[Any, Any]) -> bool:
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


# glibc's largest mmap threshold on 64-bit (blocks above it are always mapped afresh), the
# free memory an allocator arena may keep, and glibc's default for both.
_MMAP_THRESHOLD: Final = 32 << 20
_TRIM_THRESHOLD: Final = 64 << 20
_GLIBC_DEFAULT: Final = 128 << 10


def _keep_freed_memory(keep: bool) -> None:
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


def _kwargs(kwargs: dict[Any, Any]) -> dict[str, Any]:
    return {_str_key(k): v for k, v in kwargs.items()} if kwargs else {}


def _str_key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    raise TypeError(f"keyword and local names must be atoms or strings, not {key!r}")

"""The worker runtime: one per Python OS process, driven by one Erlang ``erlpy_worker``.

Threads:

* the **loop thread** runs the asyncio event loop. It reads every frame from fd 3, so
  control messages (cancel, credit, stream input) are handled even while sync code runs,
  and it runs async functions and async generators, interleaved.
* the **main thread** runs sync code, one request at a time, in arrival order: plain
  calls, ``eval``/``exec``, imports and sync generators. It is the main thread so that
  ``signal`` and libraries that insist on the main thread keep working.

Anyone may write: :class:`~erlpy._wire.FrameWriter` coalesces messages into frames.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import importlib
import inspect
import itertools
import logging
import os
import queue
import sys
import threading
import traceback
import types
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from . import _protocol as P
from ._codec import Atom, EncodeError, new_packer, new_unpacker
from ._output import LogHandler, LogStream
from ._wire import FrameReader, FrameWriter

# A stream flushes once this many items (or bytes) are pending; slower producers flush
# sooner, whenever the event loop gets control (see Stream.push).
BATCH_ITEMS: Final = 1024
BATCH_BYTES: Final = 1 << 16

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


_local = threading.local()


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = new_packer()
    return packer


def pack(message: Any) -> bytes:
    try:
        return _packer().pack(message)  # type: ignore[no-any-return]
    except ValueError as exc:  # msgpack's nesting limit
        raise EncodeError(f"cannot send value to Erlang: {exc}") from None


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=1024)
def _compile(code: str, mode: str) -> types.CodeType:
    return compile(code, "<erlpy>", mode)


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and all(part.isidentifier() for part in name.split("."))


class BadName(Exception):
    """A module or function name that is not a dotted Python identifier."""


@dataclass(eq=False, slots=True)
class Job:
    """One request from Erlang, alive until its terminal reply is sent."""

    id: int
    msg: list[Any]
    cancelled: bool = False
    task: asyncio.Task[None] | None = None
    stream: Stream | None = None


class Stream:
    """Output side of one stream: batching and credit (flow control).

    Python may run at most ``credit`` items ahead of what Erlang has accepted; Erlang
    grants more with CREDIT messages as it forwards items to the owner.
    """

    def __init__(self, rt: Runtime, job_id: int, credit: int) -> None:
        self._rt = rt
        self._prefix = b"\x93" + pack(P.DATA) + pack(job_id)
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self._event: asyncio.Event | None = None
        self.credit = credit
        self.cancelled = False
        self._items: list[bytes] = []
        self._bytes = 0
        self._started = False
        self._flush_scheduled = False
        self.input: InputStream | None = None

    def push(self, data: bytes, on_loop: bool) -> bool:
        """Queue one packed item. Returns True when the producer must wait for credit."""
        with self.lock:
            self._items.append(data)
            self._bytes += len(data)
            self.credit -= 1
            urgent = (
                not self._started
                or self.credit <= 0
                or len(self._items) >= BATCH_ITEMS
                or self._bytes >= BATCH_BYTES
            )
            if not urgent and not self._flush_scheduled:
                # Flush when the loop next gets control: at once for a slow producer,
                # and after a batch has built up for a fast one.
                self._flush_scheduled = True
                if on_loop:
                    self._rt.loop.call_soon(self.flush)
                else:
                    self._rt.loop.call_soon_threadsafe(self.flush)
            blocked = self.credit <= 0
        if urgent:
            self._started = True
            self.flush()
        return blocked

    def flush(self) -> None:
        with self.lock:
            self._flush_scheduled = False
            items = self._items
            if not items:
                return
            self._items = []
            self._bytes = 0
            message = self._prefix + _array_header(len(items)) + b"".join(items)
            drain = self._rt.writer.enqueue(message)
        if drain:
            self._rt.writer.drain()

    def add_credit(self, n: int) -> None:
        with self.lock:
            self.credit += n
            self._cond.notify_all()
        if self._event is not None:
            self._event.set()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            self._cond.notify_all()
        if self._event is not None:
            self._event.set()

    def wait_credit_sync(self) -> None:
        with self.lock:
            while self.credit <= 0 and not self.cancelled:
                self._cond.wait()

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


@dataclass(eq=False)
class Runtime:
    fd_in: int = 3
    fd_out: int = 4
    writer: FrameWriter = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)
    main_module: types.ModuleType = field(init=False)
    worker_pid: Any = None

    def __post_init__(self) -> None:
        self.writer = FrameWriter(self.fd_out)
        self.loop = asyncio.new_event_loop()
        self._jobs: dict[int, Job] = {}
        self._sync: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._resolved: dict[tuple[str, str], Callable[..., Any]] = {}
        self._callbacks: dict[int, Future[Any] | asyncio.Future[Any]] = {}
        self._callback_ids = itertools.count(1)
        self._main_ident = threading.get_ident()
        self._loop_ident = 0
        self._interrupt_lock = threading.Lock()
        self._current: Job | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.main_module = types.ModuleType("__main__")
        self.main_module.__dict__["__builtins__"] = __builtins__

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
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
        os.set_blocking(self.fd_in, False)
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
            self._run_sync(self._sync.get())

    def _redirect_output(self) -> None:
        def emit(level: Atom, text: str) -> None:
            self.send([P.LOG, level, text])

        sys.stdout = LogStream(emit, "notice", "<stdout>")
        sys.stderr = LogStream(emit, "warning", "<stderr>")
        root = logging.getLogger()
        root.addHandler(LogHandler(emit))
        root.setLevel(logging.INFO)

    def _run_loop(self) -> None:
        self._loop_ident = threading.get_ident()
        asyncio.set_event_loop(self.loop)
        reader = FrameReader()
        unpacker = new_unpacker()

        def on_readable() -> None:
            nonlocal unpacker
            try:
                data = os.read(self.fd_in, reader.wanted())
            except BlockingIOError:
                return
            if not data:
                os._exit(0)  # Erlang is gone: never outlive the port
            for frame in reader.feed(data):
                unpacker.feed(frame)
                try:
                    for message in unpacker:
                        self._dispatch(message)
                except Exception as exc:
                    unpacker = new_unpacker()
                    self.send([P.LOG, Atom("error"), f"erlpy: dropped an undecodable frame: {exc}"])

        self.loop.add_reader(self.fd_in, on_readable)
        self.loop.run_forever()

    # ------------------------------------------------------------------ output

    def send(self, message: list[Any]) -> None:
        self.writer.send(pack(message))

    def reply(self, job: Job, value: Any) -> None:
        try:
            data = pack([P.RESULT, job.id, value])
        except EncodeError as exc:
            self.error(job, exc)
            return
        self.writer.send(data)

    def error(self, job: Job, exc: BaseException) -> None:
        tb = exc.__traceback__
        # Drop the runtime's own frames so the traceback starts in user code.
        while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        self.send([P.ERROR, job.id, _type_name(type(exc)), str(exc), text])

    def fail(self, job: Job, reason: Any) -> None:
        self.send([P.FAIL, job.id, reason])

    def _finish(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    # ------------------------------------------------------------------ dispatch (loop thread)

    def _dispatch(self, msg: list[Any]) -> None:
        op = msg[0]
        if op == P.CALL or op == P.STREAM_CALL:
            job = Job(msg[1], msg)
            self._jobs[job.id] = job
            if op == P.STREAM_CALL:
                job.stream = Stream(self, job.id, msg[6])
                if msg[7]:
                    job.stream.input = InputStream()
            fn = self._resolve_now(msg[2], msg[3])
            if fn is not None and (
                inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
            ):
                self._start_async_call(job, fn)
            else:
                self._sync.put(job)
        elif op == P.EVAL or op == P.EXEC or op == P.STREAM_EVAL:
            job = Job(msg[1], msg)
            if op == P.STREAM_EVAL:
                job.stream = Stream(self, job.id, msg[4])
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
            self.worker_pid = msg[1]
        else:
            self.send([P.LOG, Atom("error"), f"erlpy: unknown message {op!r}"])

    def _cancel(self, job: Job) -> None:
        job.cancelled = True
        if job.stream is not None:
            job.stream.cancel()
        if job.task is not None:
            job.task.cancel()
        else:
            with self._interrupt_lock:
                if self._current is job:
                    _set_async_exc(self._main_ident, ctypes.py_object(Interrupted))

    def _spawn(self, job: Job, coro: Any) -> None:
        task = self.loop.create_task(coro)
        job.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if job.cancelled:
            task.cancel()

    # ------------------------------------------------------------------ name resolution

    def _resolve_now(self, module: Any, name: Any) -> Callable[..., Any] | None:
        """Resolve without importing (the loop thread must not block on imports)."""
        if module != "__main__":
            fn = self._resolved.get((module, name))
            if fn is not None or module not in sys.modules:
                return fn
        try:
            return self._resolve(module, name)
        except Exception:
            return None  # the main thread resolves again and reports the error

    def _resolve(self, module: Any, name: Any) -> Callable[..., Any]:
        if not _valid_name(module):
            raise BadName(f"invalid module name: {module!r}")
        if not _valid_name(name):
            raise BadName(f"invalid function name: {name!r}")
        if module == "__main__":
            obj: Any = self.main_module
        else:
            cached = self._resolved.get((module, name))
            if cached is not None:
                return cached
            obj = self._import(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{module}.{name} is not callable")
        if module != "__main__":
            self._resolved[(module, name)] = obj
        return obj  # type: ignore[no-any-return]

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

    def _user(self, job: Job, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run user code on the main thread where Erlang may interrupt it."""
        with self._interrupt_lock:
            if job.cancelled:
                raise Interrupted
            self._current = job
        try:
            return fn(*args, **kwargs)
        finally:
            self._leave_user()

    def _user_cleanup(self, job: Job, fn: Callable[[], Any]) -> None:
        """Run user clean-up code (a generator's ``close``), even for a cancelled job."""
        with self._interrupt_lock:
            self._current = job
        try:
            fn()
        finally:
            self._leave_user()

    def _leave_user(self) -> None:
        # An interrupt set just before we got here may still be pending: clear it under the
        # lock, retrying if it fires first, so it can never hit the runtime's own code.
        while True:
            try:
                with self._interrupt_lock:
                    self._current = None
                    _set_async_exc(self._main_ident, ctypes.py_object())
                return
            except Interrupted:
                continue

    def _run_sync(self, job: Job) -> None:
        msg = job.msg
        op = msg[0]
        try:
            if job.cancelled:
                raise Interrupted
            if op == P.CALL:
                fn = self._resolve(msg[2], msg[3])
                result = self._user(job, fn, *msg[4], **_kwargs(msg[5]))
                if inspect.isawaitable(result):
                    self.loop.call_soon_threadsafe(self._start_awaitable, job, result)
                    return
                self._finish(job)
                self.reply(job, result)
            elif op == P.EVAL:
                code = _compile(msg[2], "eval")
                result = self._user(job, eval, code, self._namespace(msg[3]))
                if inspect.isawaitable(result):
                    self.loop.call_soon_threadsafe(self._start_awaitable, job, result)
                    return
                self._finish(job)
                self.reply(job, result)
            elif op == P.EXEC:
                code = _compile(msg[2], "exec")
                self._user(job, exec, code, self.main_module.__dict__)
                self._resolved.clear()
                self._finish(job)
                self.reply(job, None)
            elif op == P.STREAM_CALL:
                fn = self._resolve(msg[2], msg[3])
                args = (
                    msg[4]
                    if job.stream is None or job.stream.input is None
                    else [
                        job.stream.input,
                        *msg[4],
                    ]
                )
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
            if job.stream is not None:
                job.stream.flush()
            self.error(job, exc)

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
        iterator = iter(value)
        try:
            self._stream_sync(job, iterator)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                self._user_cleanup(job, close)

    def _stream_sync(self, job: Job, iterator: Iterator[Any]) -> None:
        stream = job.stream
        assert stream is not None
        packer = _packer()
        pack_item = packer.pack
        next_item = iterator.__next__
        while not stream.cancelled:
            try:
                item = self._user(job, next_item)
            except StopIteration:
                stream.flush()
                self._finish(job)
                self.send([P.DONE, job.id])
                return
            try:
                data = pack_item(item)
            except ValueError as exc:
                raise EncodeError(f"cannot send value to Erlang: {exc}") from None
            if stream.push(data, on_loop=False):
                stream.wait_credit_sync()
        raise Interrupted

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
        try:
            if inspect.isawaitable(value):
                value = await value
            if hasattr(value, "__aiter__"):
                iterator = aiter(value)
                await self._drive_async(stream, iterator)
            else:
                iterator = iter(value)
                for item in iterator:  # a coroutine that returned a plain iterable
                    if stream.push(pack(item), on_loop=True):
                        await stream.wait_credit()
                    if stream.cancelled:
                        raise asyncio.CancelledError
            stream.flush()
            self._finish(job)
            self.send([P.DONE, job.id])
        except asyncio.CancelledError:
            self._finish(job)
            self.fail(job, _CANCELLED)
        except BaseException as exc:
            stream.flush()
            self._finish(job)
            self.error(job, exc)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except BaseException as exc:  # the stream is over: report and move on
                    logging.getLogger("erlpy").warning("closing stream %s: %r", job.id, exc)
            close = getattr(iterator, "close", None)
            if close is not None and aclose is None:
                close()

    async def _drive_async(self, stream: Stream, iterator: AsyncIterator[Any]) -> None:
        pack_item = _packer().pack
        since_yield = 0
        async for item in iterator:
            try:
                data = pack_item(item)
            except ValueError as exc:
                raise EncodeError(f"cannot send value to Erlang: {exc}") from None
            if stream.push(data, on_loop=True):
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
        if threading.get_ident() == self._loop_ident:
            raise RuntimeError(
                "erlpy.erlang.call() would block the event loop; "
                "use `await erlpy.erlang.acall(...)` in async code"
            )
        future: Future[Any] = Future()
        callback_id = next(self._callback_ids)
        self._callbacks[callback_id] = future
        self.send([P.CALLBACK, callback_id, name, list(args)])
        return future.result()

    async def acall_erlang(self, name: str, args: tuple[Any, ...]) -> Any:
        future: asyncio.Future[Any] = self.loop.create_future()
        callback_id = next(self._callback_ids)
        self._callbacks[callback_id] = future
        self.send([P.CALLBACK, callback_id, name, list(args)])
        return await future

    def _on_callback_reply(self, callback_id: int, ok: bool, value: Any) -> None:
        from .erlang import ErlangError

        future = self._callbacks.pop(callback_id, None)
        if future is None or future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(ErlangError(value))


def _kwargs(kwargs: dict[Any, Any]) -> dict[str, Any]:
    return {_str_key(k): v for k, v in kwargs.items()} if kwargs else {}


def _str_key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    raise TypeError(f"keyword and local names must be atoms or strings, not {key!r}")

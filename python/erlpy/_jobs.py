"""Jobs, one per request from Erlang, and :meth:`Jobs.finish`: the one way a job's terminal
message (RESULT, ERROR, FAIL or DONE) is sent, exactly once."""

from __future__ import annotations

import asyncio
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from . import _handles, _output
from . import _protocol as P
from ._codec import Atom, EncodeError, pack, pack_parts
from ._messages import Request
from ._process import ProcessState, exit_forked
from ._stream import Stream
from ._wire import FrameWriter

CANCELLED: Final = Atom("cancelled")
TIMEOUT: Final = Atom("timeout")  # the answer to a request whose caller had gone

# A traceback sent to Erlang starts in user code: leading frames of these are dropped.
_RUNTIME_MODULES: Final = frozenset(
    f"erlpy.{name}"
    for name in (
        "_runtime",
        "_dispatch",
        "_sync",
        "_tasks",
        "_callbacks",
        "_jobs",
        "_names",
        "_reload",
        "_batch",
        "_batched",
    )
)


class Pending:
    """A callback into Erlang awaited by the main thread."""

    __slots__ = ("callback_id", "done", "error", "value")

    def __init__(self, callback_id: int) -> None:
        self.callback_id = callback_id
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def finish(self, value: Any, error: BaseException | None) -> None:
        self.value, self.error, self.done = value, error, True

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass(eq=False, slots=True)
class Job:
    """One request from Erlang, alive until its terminal message is sent."""

    id: int
    request: Request | None  # None for SETUP, a request too big to read, and a batch
    deadline: float | None = None  # its caller's, as a time.monotonic() value (_deadline)
    cancelled: bool = False
    started: bool = False
    answered: bool = False  # its terminal message is sent (see Jobs.finish)
    task: asyncio.Task[None] | None = None
    stream: Stream | None = None
    iterator: Iterator[Any] | None = None  # a sync stream being pumped or parked
    waiting: Pending | None = None  # a callback into Erlang the job waits for
    closing: bool = False  # its generator is being closed: no cancel interrupts that
    fn: Callable[..., Any] | None = None  # the function, when the loop thread resolved it
    ref: bool = False  # its result stays here as a handle (return => ref)
    # erlpy.batched (_batch): for a call, the queue it waits in, then the batch it is in;
    # for a batch's own job (no request, never answered), the batch it runs.
    batch: Any = None


class Jobs:
    """The jobs in flight, by id, and their terminal messages."""

    def __init__(self, writer: FrameWriter, process: ProcessState) -> None:
        self.table: dict[int, Job] = {}  # the loop thread adds, anyone removes (finish)
        self._writer = writer
        self._process = process
        self._lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a thread that held it at fork time is not here

    def finish(self, job: Job, kind: int, value: Any = None, hold: bool = False) -> None:
        """End a job: send what its stream still holds, then its terminal message, unless
        one was sent already (a cancel may answer a job the main thread is still
        unwinding). Every terminal message goes through here.

        Args:
            job: the job; it leaves the table.
            kind: ``P.RESULT`` (``value`` is the result), ``P.ERROR`` (the exception),
                ``P.FAIL`` (an erlpy error term, e.g. ``CANCELLED``) or ``P.DONE``.
            hold: a result may wait to go with the next frame (FrameWriter.hold).
        """
        self.table.pop(job.id, None)
        if _output._pending:
            _output.flush_pending()  # output the job left without a newline comes first
        if self._process.forked:
            # A forked child's code came back into the runtime: it exits instead.
            if kind == P.ERROR:
                exit_forked(value)
            exit_forked(SystemExit(1) if kind == P.FAIL else None)
        if kind == P.RESULT and job.ref:
            self._finish_ref(job, value)
            return
        if kind == P.RESULT:
            try:
                parts = pack_parts([P.RESULT, job.id, value])
            except EncodeError as exc:
                kind, value = P.ERROR, exc
            else:
                if not self._claim(job):
                    return
                if hold:
                    self._writer.hold(*parts)
                else:
                    self._writer.send(*parts)
                return
        if kind != P.FAIL and job.stream is not None:
            job.stream.flush()  # a cancelled stream's pending items go with it (FAIL)
        if not self._claim(job):
            return
        match kind:
            case P.ERROR:
                data = _error_message(job.id, value)
            case P.FAIL:
                data = pack([P.FAIL, job.id, value])
            case _:
                data = pack([P.DONE, job.id])
        self._writer.send(data)

    def _finish_ref(self, job: Job, value: Any) -> None:
        # Kept only if answered: a cancelled job's value would be held by nobody.
        if not self._claim(job):
            return
        try:
            _handles.store(job.id, value)
        except _handles.TooManyRefs as exc:
            self._writer.send(pack([P.FAIL, job.id, (Atom("max_refs"), exc.limit)]))
        else:
            self._writer.send(pack([P.RESULT, job.id, job.id]))

    def _claim(self, job: Job) -> bool:
        with self._lock:
            if job.answered:
                return False
            job.answered = True
            return True


def _error_message(job_id: int, exc: BaseException) -> bytes:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in _RUNTIME_MODULES:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        message = str(exc)
    except Exception as str_exc:  # a broken __str__ must not cost the reply
        message = f"<str() failed: {str_exc!r}>"
    fields = [_type_name(type(exc)), message, text]
    try:
        return pack([P.ERROR, job_id, *fields])
    except EncodeError:
        # Lone surrogates and the like: keep the text, lose only what cannot travel.
        safe = [f.encode("utf-8", "backslashreplace").decode("utf-8") for f in fields]
        return pack([P.ERROR, job_id, *safe])


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"

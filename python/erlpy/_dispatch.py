"""Reading Erlang's frames and dispatching their messages, on the loop thread: so control
messages (cancel, credit, stream input, callback replies) are handled even while the main
thread runs sync code."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from typing import Any, Final

from . import _protocol as P
from ._batch import Batcher
from ._batched import Batched
from ._callbacks import Callbacks
from ._codec import Atom, message_bounds, new_unpacker, unpack_all, unpack_frame, unpackb
from ._handles import Limits, find_stale, release
from ._handoff import Handoff
from ._jobs import CANCELLED, Job, Jobs
from ._messages import (
    Call,
    Cancel,
    Credit,
    Eval,
    Exec,
    Input,
    InputClose,
    Message,
    Release,
    Reply,
    Setup,
    Stop,
    StreamCall,
    StreamEval,
    Undecodable,
    decode,
)
from ._names import Resolver
from ._process import ForkSafeSelector, ProcessState, apply_limits, keep_freed_memory
from ._stream import InputStream, Stream
from ._sync import SyncRunner
from ._tasks import Tasks
from ._wire import PROTOCOL_LOST, FrameReader, FrameWriter, TooBig, die

# A decoded message, and whether its frame named a handle this process does not hold.
Decoded = tuple[Message, bool]
# What the main thread read and leaves to the loop thread: decoded messages, and frames
# (decoded by the loop, in turn).
Handed = Decoded | TooBig | bytearray | memoryview


# The messages that start a job (and so get an answer of their own).
_REQUESTS: Final = frozenset(
    {
        P.CALL,
        P.EVAL,
        P.EXEC,
        P.STREAM_CALL,
        P.STREAM_EVAL,
        P.CALL_REF,
        P.EVAL_REF,
        P.EVAL_IN,
        P.EXEC_IN,
        P.STREAM_EVAL_IN,
    }
)


def _head(part: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """The kind and id (or callback id) a message starts with, read without decoding the
    rest: None if it does not start so."""
    try:
        unpacker = new_unpacker()
        unpacker.feed(part)
        unpacker.read_array_header()
        kind, ident = unpacker.unpack(), unpacker.unpack()
    except Exception:
        return None
    return (kind, ident) if type(kind) is int and type(ident) is int else None


class Dispatcher:
    """Turns each message from Erlang into work for the main thread or the loop, or into
    a change to a job in flight."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reader: FrameReader,
        writer: FrameWriter,
        jobs: Jobs,
        sync: SyncRunner,
        tasks: Tasks,
        callbacks: Callbacks,
        resolver: Resolver,
        process: ProcessState,
        batcher: Batcher,
        selector: ForkSafeSelector,
        fd: int,
    ) -> None:
        self._loop = loop
        self._reader = reader
        self._selector = selector
        self._fd = fd
        # Who reads the pipe: the loop thread, or the main thread while it is idle. The
        # lock keeps reading and dispatching in order whichever thread does it.
        self._reading = threading.Lock()
        self._main_reads = False
        self._handed: list[Handed] = []  # read by the main thread, for the loop
        self._writer = writer
        self._jobs = jobs
        self._table = jobs.table
        self._sync = sync
        self._submit = sync.submit
        self._tasks = tasks
        self._callbacks = callbacks
        self._resolver = resolver
        self._process = process
        self._batcher = batcher

    def on_readable(self) -> None:
        # A turn of the event loop costs more than an async call's own work: while only
        # the pipe wants the loop thread, it reads the pipe here, back to back.
        while self._on_readable() and self._wait_inline():
            pass

    def _wait_inline(self) -> bool:
        """After a read, with nothing else for the loop to do, poll here for up to poll_us
        instead of going back through a turn of the event loop. Returns whether the pipe,
        alone, became readable (read it here); anything else for the loop (a callback, a
        timer due, another fd) sends it back through its turn."""
        poll = self._process.poll
        if not poll or self._main_reads:
            return False
        # The loop's own queues (BaseEventLoop's; the loop is always ours, a
        # SelectorEventLoop): callbacks ready to run, and timers by due time.
        loop: Any = self._loop
        ready, scheduled = loop._ready, loop._scheduled
        if scheduled and scheduled[0].when() < loop.time() + poll:
            return False
        if ready:
            return False
        events = self._selector.spin(poll, lambda: bool(ready) or self._main_reads)
        return len(events) == 1 and events[0][0] == self._fd and not self._main_reads

    def _on_readable(self) -> bool:
        if self._process.forked:
            return False  # queued before a fork on the loop thread: the pipe is the parent's
        with self._reading:
            if self._main_reads:
                return False  # an event from before the main thread took the pipe over
            handed, self._handed = self._handed, []
            for item in handed:
                if isinstance(item, (bytearray, memoryview)):
                    self._dispatch_frame(item)
                else:
                    self._dispatch_item(item)
            # Drain the pipe: a large frame arrives in many reads, no need to go back to
            # the selector between them. A short read means the pipe is empty: stop there.
            while True:
                frames = self._read()
                if frames is None:
                    return True
                for frame in frames:
                    if isinstance(frame, TooBig):
                        self._refuse_too_big(frame.head)
                    else:
                        self._dispatch_frame(frame)
                if self._reader.drained:
                    return True

    def _dispatch_frame(self, frame: bytearray | memoryview) -> None:
        # Decoded only once the frames before it are dispatched: decoding looks up the
        # handles it names, which an earlier RELEASE may have let go.
        for item in self._decode_frame(frame):
            self._dispatch_item(item)

    def read_while_idle(self, handoff: Handoff[Any]) -> bool:
        """The main thread, with nothing to do, reads Erlang's pipe itself instead of
        waiting for the loop thread to hand it its next request: a sync call then costs
        no thread switch (each is tens of microseconds on a VM). It dispatches sync calls,
        ``eval``, ``exec`` and sync streams, which queue on the main thread, and returns
        once it has work; anything else it hands to the loop thread, which reads from then
        on. Returns whether to do so next time too.

        It returns with the pipe still its own when it has queued work: the main thread
        gives it back (:meth:`give_back`) before it runs anything but a quick call in a
        burst (SyncRunner), or the loop thread takes it back if such a call turns out long
        (the held replies' timer). So the loop thread reads whenever user code may run for
        long (a cancel is read meanwhile), and sleeps through a burst of quick calls
        instead of waking for each frame to contend for the GIL."""
        with self._reading:
            if not self._main_reads:
                if self._handed:
                    # What it handed the loop thread last time is not dispatched yet:
                    # taking the pipe now would keep the loop thread from it (it does not
                    # dispatch while the main thread reads) until the next request came.
                    return True
                if self._process.forked or not self._selector.pause(self._fd):
                    return False
                self._main_reads = True
        again = True
        try:
            while handoff.empty():
                if not handoff.wait(self._fd, self._process.poll):
                    continue
                with self._reading:
                    if not self._main_reads:
                        break  # the loop thread took the pipe back
                    frames = self._read()
                    if frames is None:
                        continue
                    rest = self._dispatch_on_main(frames)
                    if rest:
                        self._handed.extend(rest)
                        again = False
                        break
        finally:
            if not again or handoff.empty():
                self.give_back()
        return again

    def give_back(self) -> None:
        """The loop thread reads Erlang's pipe from now on (see :meth:`read_while_idle`).
        Called by the main thread, or by the loop thread to take the pipe back."""
        if not self._main_reads:
            return  # only the main thread sets it: no need for the lock to see it is not
        with self._reading:
            if not self._main_reads:
                return
            self._main_reads = False
            self._selector.resume(self._fd)
        if self._handed:
            self._loop.call_soon_threadsafe(self.on_readable)

    def _dispatch_on_main(self, frames: list[bytearray | memoryview | TooBig]) -> list[Handed]:
        """Dispatch what only queues work for the main thread, frame by frame; return the
        rest, from the first frame that holds anything else on, for the loop thread."""
        for i, frame in enumerate(frames):
            if isinstance(frame, TooBig):
                return list(frames[i:])
            items = self._decode_frame(frame)
            if not all(map(self._main_may_dispatch, items)):
                rest: list[Handed] = [*items, *frames[i + 1 :]]
                return rest
            for item in items:
                self._dispatch_item(item)
        return []

    def _main_may_dispatch(self, item: Decoded) -> bool:
        """Whether dispatching ``item`` only queues work for the main thread."""
        message = item[0]
        if isinstance(message, (Call, StreamCall)):
            if isinstance(message, StreamCall) and message.input:
                return False  # its input goes to the loop's queue
            try:
                resolved = self._resolver.now(message.module, message.function)
            except Exception:  # a malformed name: the loop thread reports it
                return False
            # A batched function's calls go to the loop's batcher.
            return resolved is None or not (resolved[1] or type(resolved[0]) is Batched)
        if isinstance(message, Undecodable):
            return message.kind in _REQUESTS  # a new request's error; the rest is the loop's
        return isinstance(message, (Eval, Exec, StreamEval))

    def _read(self) -> list[bytearray | memoryview | TooBig] | None:
        """The frames one read completes; None when there is nothing to read."""
        try:
            frames = self._reader.read()
        except BlockingIOError:
            return None
        except OSError as exc:  # EBADF and the like: the protocol is gone
            die(f"cannot read from Erlang: {exc}", PROTOCOL_LOST)
        if frames is None:
            os._exit(0)  # Erlang is gone: never outlive the port
        return frames

    def _decode_frame(self, frame: bytearray | memoryview) -> list[Decoded]:
        # Each frame is decoded on its own, so a damaged one cannot swallow the next.
        try:
            if len(frame) > FrameReader.BIG:
                messages = unpack_all(frame)
            else:
                messages = unpack_frame(frame)
        except Exception:
            messages = None
        if messages is None:  # outside the except: the errors it reports chain to nothing
            messages = self._unpack_each(frame)
        stale = Limits.stale_seen
        if stale:
            Limits.stale_seen = False
        decoded: list[Decoded] = []
        for raw in messages:
            if type(raw) is Undecodable:
                decoded.append((raw, False))
                continue
            try:
                message = decode(raw)
            except Exception as exc:  # not a message of the protocol: say so, go on
                self._log(f"erlpy: dropped a malformed message: {exc!r}")
                continue
            if message is None:
                self._log(f"erlpy: unknown message {raw[0]!r}")
            else:
                decoded.append((message, stale))
        return decoded

    def _unpack_each(self, frame: bytearray | memoryview) -> list[Any]:
        """A frame that does not decode as a whole: its messages one by one, so that only
        those that fail do, and each is answered (a handle to a list as a map key cannot
        be a dict's key: TypeError). The other requests of the frame, often other callers',
        go on."""
        messages = []
        end = 0
        for start, end in message_bounds(frame):
            part = frame[start:end]
            try:
                messages.append(unpackb(part))
            except Exception as exc:
                head = _head(part)
                if head is None:
                    self._log(f"erlpy: dropped an undecodable message: {exc!r}")
                else:  # answered in turn with the frame's other messages (dispatch)
                    messages.append(Undecodable(head[0], head[1], exc.with_traceback(None)))
        if end < len(frame):
            self._log(f"erlpy: dropped the undecodable end of a frame ({len(frame) - end} bytes)")
        return messages

    def _refuse(self, message: Undecodable) -> None:
        """A message Python could not decode: a request fails with the error, a callback's
        reply raises it in the code that waits for it, a stream's input ends the stream
        with it (not a silent gap)."""
        job = None
        if message.kind in (P.INPUT, P.INPUT_CLOSE):
            job = self._table.get(message.id)
        if message.kind in _REQUESTS:
            self._jobs.finish(Job(message.id, None), P.ERROR, message.error)
        elif message.kind == P.REPLY:
            reason = (Atom("badarg"), (Atom("undecodable"), repr(message.error)))
            self._callbacks.on_reply(message.id, False, reason)
        elif job is not None:
            self._jobs.finish(job, P.ERROR, message.error)
            self._cancel(job)  # its own end, later, sends nothing more (Jobs.finish)
        else:
            self._log(f"erlpy: dropped an undecodable message: {message.error!r}")

    def _dispatch_item(self, item: Decoded | TooBig) -> None:
        if isinstance(item, TooBig):
            self._refuse_too_big(item.head)
            return
        message, stale = item
        try:
            if not (stale and self._refuse_stale(message)):
                self.dispatch(message)
        except Exception as exc:  # not a message of the protocol: say so, go on
            self._log(f"erlpy: dropped a malformed message: {exc!r}")

    def _refuse_stale(self, message: Message) -> bool:
        """Answer a request that carries a handle this process does not hold."""
        match message:
            case Call() | StreamCall():
                found = find_stale([message.module, message.args, message.kwargs])
            case Eval() | StreamEval():
                found = find_stale([message.locals, message.session])
            case Exec():
                found = find_stale(message.session)
            case _:
                return False
        if found is None:
            return False
        reason = (Atom("stale_ref"), found.id)
        self._jobs.finish(Job(message.id, None), P.FAIL, reason)
        return True

    def _log(self, text: str) -> None:
        self._sync.send([P.LOG, Atom("error"), text])

    def _refuse_too_big(self, head: bytes) -> None:
        """A request too big for this worker's memory (max_memory): answer it if its head
        says which one it was."""
        found = _head(head)
        if found is not None:
            error = MemoryError("the request does not fit in this worker's memory (max_memory)")
            self._jobs.finish(Job(found[1], None), P.ERROR, error)
        else:
            self._log("erlpy: dropped a frame too big for max_memory")

    def dispatch(self, message: Message) -> None:
        # Class patterns without arguments: positional ones cost ~300 ns per request.
        match message:
            case Call():
                job = Job(message.id, message, message.deadline)
                if message.ref:
                    job.ref = True
                self._table[job.id] = job
                self._start_call(job, message)
            case Credit():
                job_or_none = self._table.get(message.id)
                if job_or_none is not None and job_or_none.stream is not None:
                    job_or_none.stream.add_credit(message.n)
            case StreamCall():
                job = Job(message.id, message, message.deadline)
                self._table[job.id] = job
                job.stream = self._stream(job, message.credit)
                if message.input:
                    job.stream.input = InputStream()
                self._start_call(job, message)
            case Eval() | Exec():
                job = Job(message.id, message, message.deadline)
                if isinstance(message, Eval) and message.ref:
                    job.ref = True
                self._table[job.id] = job
                self._submit(job)
            case StreamEval():
                job = Job(message.id, message, message.deadline)
                job.stream = self._stream(job, message.credit)
                self._table[job.id] = job
                self._submit(job)
            case Reply():
                self._callbacks.on_reply(message.callback_id, message.ok, message.value)
            case Cancel():
                job_or_none = self._table.get(message.id)
                if job_or_none is not None:
                    self._cancel(job_or_none)
            case Input() | InputClose():
                job_or_none = self._table.get(message.id)
                stream = job_or_none.stream if job_or_none is not None else None
                if stream is not None and stream.input is not None:
                    if isinstance(message, Input):
                        stream.input.put(message.values)
                    else:
                        stream.input.close()
            case Release():
                release(message.ids)
            case Setup():
                self._setup(Job(message.id, None), message.worker_pid, message.limits)
            case Undecodable():
                self._refuse(message)
            case Stop():
                # As a kill would, without waiting for a signal: the supervisor sees the
                # exit and ends what Python started at once (_boot).
                os._exit(0)

    def _start_call(self, job: Job, request: Call | StreamCall) -> None:
        """An async function starts on the loop at once, a call to a batched function
        waits for its batch; anything else, or a name the loop cannot resolve without
        importing, goes to the main thread."""
        resolved = self._resolver.now(request.module, request.function)
        if resolved is not None and resolved[1]:
            self._tasks.start_call(job, resolved[0], request.args, request.kwargs)
        elif resolved is not None and type(resolved[0]) is Batched and type(request) is Call:
            self._batcher.add(job, resolved[0], request)
        else:
            job.fn = resolved[0] if resolved is not None else None
            self._submit(job)

    def _stream(self, job: Job, credit: int) -> Stream:
        resume = functools.partial(self._sync.resume, job)
        return Stream(self._loop, self._writer, job.id, credit, resume)

    def _setup(self, job: Job, worker_pid: Any, limits: dict[Any, Any]) -> None:
        # Answered like a call: the worker is ready only once its limits are in place.
        self._callbacks.worker_pid = worker_pid
        max_refs = limits.get("max_refs")
        Limits.max_refs = max_refs if isinstance(max_refs, int) else None
        poll_us = limits.get("poll_us")
        self._process.poll = poll_us / 1e6 if isinstance(poll_us, int) and poll_us > 0 else 0.0
        try:
            if apply_limits(limits):
                # Memory kept is memory a later request cannot have.
                keep_freed_memory(False)
                self._reader.keep = 0
        except Exception as exc:
            self._jobs.finish(job, P.ERROR, exc)
        else:
            self._jobs.finish(job, P.RESULT, None)

    def _cancel(self, job: Job) -> None:
        if job.batch is not None:
            # A call to a batched function is answered at once; its batch is stopped only
            # once none of its callers is left.
            batch_job = self._batcher.cancel(job)
            if batch_job is None:
                return
            job = batch_job
        if job.stream is not None:
            job.stream.cancel()
        if job.task is not None:
            job.cancelled = True
            job.task.cancel()
            if not job.started:  # its task never ran, so it cannot answer
                self._jobs.finish(job, P.FAIL, CANCELLED)
            return
        answer, abandoned = self._sync.cancel(job)
        if abandoned is not None:
            self._callbacks.abandon(abandoned.callback_id)
        if answer:
            self._jobs.finish(job, P.FAIL, CANCELLED)

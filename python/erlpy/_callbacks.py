"""Calls from Python into functions registered in Erlang (``erlpy.erlang.call``/``acall``).

Each call is a CALLBACK message answered by a REPLY. Erlang runs the function in a new
process; a call nobody waits for any more (cancelled, interrupted) is abandoned with
CALLBACK_CANCEL, so Erlang ends that process.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import Future
from typing import Any

from . import _protocol as P
from ._errors import ErlangError
from ._jobs import Pending
from ._process import ProcessState
from ._sync import SyncRunner

_NOT_A_WORKER = "not running inside an erlpy worker"


class Callbacks:
    """The callbacks in flight, by id, each with whoever waits for its reply."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sync: SyncRunner, process: ProcessState
    ) -> None:
        self._loop = loop
        self._sync = sync
        self._process = process
        self._waiters: dict[int, Future[Any] | asyncio.Future[Any] | Pending] = {}
        self._ids = itertools.count(1)
        self.loop_ident = 0  # the loop thread, once it runs
        self.worker_pid: Any = None  # the Erlang process that owns this worker (SETUP)

    def call(self, name: str, args: tuple[Any, ...]) -> Any:
        """Call from a thread: the main thread, or one user code started."""
        if self._process.forked:
            raise RuntimeError(_NOT_A_WORKER)
        ident = threading.get_ident()
        if ident == self.loop_ident:
            raise RuntimeError(
                "erlpy.erlang.call() would block the event loop; "
                "use `await erlpy.erlang.acall(...)` in async code"
            )
        callback_id = next(self._ids)
        message = [P.CALLBACK, callback_id, name, list(args)]
        if ident != self._sync.main_ident:
            future: Future[Any] = Future()
            self._waiters[callback_id] = future
            try:
                self._sync.send(message)
                return future.result()
            finally:
                self.abandon(callback_id)
        job = self._sync.job_to_wait()
        pending = Pending(callback_id)
        try:
            self._waiters[callback_id] = pending
            self._sync.wait_for(job, pending, message)
        finally:
            self.abandon(callback_id)
        return pending.result()

    async def acall(self, name: str, args: tuple[Any, ...]) -> Any:
        if self._process.forked:
            raise RuntimeError(_NOT_A_WORKER)
        future: asyncio.Future[Any] = self._loop.create_future()
        callback_id = next(self._ids)
        self._waiters[callback_id] = future
        try:
            self._sync.send([P.CALLBACK, callback_id, name, list(args)])
            return await future
        finally:  # cancelled (CancelledError goes on up) or interrupted before the reply
            self.abandon(callback_id)

    def abandon(self, callback_id: int) -> None:
        """Nobody waits for this callback any more: have Erlang end the process running
        it. Nothing to do once its reply came (whoever pops the waiter owns it)."""
        if self._waiters.pop(callback_id, None) is not None:
            self._sync.send([P.CALLBACK_CANCEL, callback_id])

    def on_reply(self, callback_id: int, ok: bool, value: Any) -> None:
        """Erlang's REPLY (loop thread)."""
        waiter = self._waiters.pop(callback_id, None)
        error = None if ok else ErlangError(value)
        if isinstance(waiter, Pending):
            with self._sync.interrupt_lock:
                if not waiter.done:
                    waiter.finish(value, error)
            self._sync.wake()
        elif waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(value)
            else:
                waiter.set_exception(error)

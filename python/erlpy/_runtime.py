"""The worker runtime: one per Python OS process, driven by one Erlang ``erlpy_worker``.
This module puts the parts together and runs them; each concern has a module of its own:

* ``_dispatch``: the **loop thread** reads every frame from Erlang and dispatches it, so
  control messages (cancel, credit, stream input) are handled even while sync code runs;
* ``_sync``: the **main thread** runs sync code one request at a time, interruptibly;
* ``_tasks``: the loop thread runs async functions and async generators, interleaved;
* ``_stream``: stream batching and credit; ``_callbacks``: calls into Erlang;
* ``_batch``: dynamic batching of the calls to ``erlpy.batched`` functions;
* ``_jobs``: the requests in flight and their terminal messages;
* ``_process``: process set-up, limits and forks.

Anyone may write: :class:`~erlpy._wire.FrameWriter` coalesces messages into frames.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import types
from typing import Any, Final, NoReturn

from . import _protocol as P
from ._batch import Batcher
from ._callbacks import Callbacks
from ._codec import Atom
from ._dispatch import Dispatcher
from ._jobs import Jobs
from ._names import Resolver
from ._output import LogHandler, LogStream
from ._process import ForkSafeSelector, ProcessState, set_up
from ._sync import SyncRunner
from ._tasks import Tasks
from ._wire import FrameReader, FrameWriter, die

# Exit status of a worker whose event loop ended: nothing reads Erlang's messages any more.
LOOP_DIED: Final = 71

_runtime: Runtime | None = None


def current() -> Runtime:
    """The runtime of this worker process; raises when not running inside erlpy."""
    if _runtime is None:
        raise RuntimeError("not running inside an erlpy worker")
    return _runtime


class Runtime:
    def __init__(self, fd_in: int, fd_out: int) -> None:
        self.fd_in = fd_in
        self.writer = FrameWriter(fd_out)
        self.process = ProcessState()
        self._selector = ForkSafeSelector(self.process)
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop(self._selector)
        self.main_module = types.ModuleType("__main__")
        self.main_module.__dict__["__builtins__"] = __builtins__
        self.main_module.__dict__["asyncio"] = asyncio
        reader = FrameReader(fd_in)  # used by the loop thread only
        resolver = Resolver(self.main_module)
        self.jobs = Jobs(self.writer, self.process)
        self.tasks = Tasks(self.loop, self.jobs, self.process)
        self.sync = SyncRunner(
            self.loop, self.writer, self.jobs, self.tasks, resolver, self.main_module, self.process
        )
        self.callbacks = Callbacks(self.loop, self.sync, self.process)
        self.batcher = Batcher(self.loop, self.jobs, self.sync, self.tasks)
        self.sync.to_batcher = self.batcher.add_threadsafe
        self.dispatcher = Dispatcher(
            self.loop,
            reader,
            self.writer,
            self.jobs,
            self.sync,
            self.tasks,
            self.callbacks,
            resolver,
            self.process,
            self.batcher,
            self._selector,
            fd_in,
        )
        self.sync.read_while_idle = self.dispatcher.read_while_idle
        self.sync.give_back = self.dispatcher.give_back
        self._log_handler: LogHandler | None = None

    def send(self, message: list[Any]) -> None:
        """Send a message to Erlang (no job's terminal one: see Jobs.finish)."""
        self.sync.send(message)

    def serve(self) -> NoReturn:
        """Run the worker until Erlang closes the pipe."""
        global _runtime
        _runtime = self
        sys.modules["__main__"] = self.main_module
        self._redirect_output()
        set_up(self.fd_in, self.writer.fd)
        signal.signal(signal.SIGINT, self.sync.on_sigint)
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
        self.sync.run_forever()

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
        self.process.forked = True
        _runtime = None
        self.sync.after_fork_in_child()
        self.jobs.after_fork_in_child()
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

    def _run_loop(self) -> None:
        try:
            self.callbacks.loop_ident = threading.get_ident()
            asyncio.set_event_loop(self.loop)
            self.loop.add_reader(self.fd_in, self.dispatcher.on_readable)
            self.loop.run_forever()
            reason = "the event loop stopped"
        except BaseException as exc:
            reason = f"the event loop died: {exc!r}"
        # Nobody reads Erlang's messages any more: die, so that Erlang restarts the worker
        # instead of waiting on a deaf one.
        die(reason, LOOP_DIED)

"""Call back into Erlang from Python code running in an erlpy worker.

``call``/``acall`` run functions registered with ``py:register_function/2``; ``send``
sends a term to an Erlang process; ``atom`` makes an atom; ``self`` is the pid of the
Erlang process that owns this worker. Registered functions can also be called as
attributes: ``erlang.my_func(1, 2)`` is ``erlang.call("my_func", 1, 2)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _protocol as P
from . import _runtime
from ._codec import Atom, Pid
from ._errors import ErlangError as ErlangError

ErlangError.__module__ = __name__  # shown (and reported to Erlang) as erlpy.erlang.ErlangError


def call(name: str, *args: Any) -> Any:
    """Call the Erlang function registered as ``name`` and return its result.

    Blocks the calling thread; in async code use :func:`acall`.

    Raises:
        ErlangError: the function is not registered, or it raised.
    """
    return _runtime.current().callbacks.call(str(name), args)


async def acall(name: str, *args: Any) -> Any:
    """Async version of :func:`call`, for coroutines and async generators."""
    return await _runtime.current().callbacks.acall(str(name), args)


def send(pid: Pid | Atom, term: Any) -> None:
    """Send ``term`` to an Erlang process (a pid, or a registered name as an atom)."""
    if not isinstance(pid, (Pid, Atom)):
        raise TypeError(f"send() needs an erlpy.Pid or erlpy.Atom, not {type(pid).__name__}")
    _runtime.current().send([P.SEND, pid, term])


def atom(name: str) -> Atom:
    """The Erlang atom ``name``."""
    return Atom(name)


def self() -> Pid:
    """The pid of the Erlang process that owns this worker (``erlpy_worker``)."""
    pid = _runtime.current().callbacks.worker_pid
    if not isinstance(pid, Pid):
        raise RuntimeError("the worker has not been told its Erlang pid yet")
    return pid


def __getattr__(name: str) -> Callable[..., Any]:
    if name.startswith("__"):
        raise AttributeError(name)

    def registered(*args: Any) -> Any:
        return call(name, *args)

    registered.__name__ = name
    return registered

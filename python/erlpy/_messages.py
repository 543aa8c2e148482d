"""Erlang's messages to Python, decoded once into small typed records that the runtime
matches on (docs/internals.md, "The wire protocol").

Decoding checks only that a message has its fields, as reading them by position did: a
field of the wrong type fails where it is used, and the request it belongs to gets the
error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from . import _protocol as P
from ._deadline import from_timeout

# Slotted and not frozen: one of these is made per request, and a frozen dataclass's
# __init__ goes through object.__setattr__.


@dataclass(slots=True)
class Call:
    id: int
    module: Any  # a module name, or (object,) for a handle's object (py:call_method)
    function: str
    args: list[Any]
    kwargs: dict[Any, Any]
    ref: bool = False  # the result stays in Python as a handle (return => ref)
    deadline: float | None = None  # the caller's, as a time.monotonic() value (_deadline)


@dataclass(slots=True)
class Eval:
    id: int
    code: str
    locals: dict[Any, Any]
    ref: bool = False  # the result stays in Python as a handle (return => ref)
    session: Any = None  # a session's namespace (a handle's Session), else __main__
    deadline: float | None = None


@dataclass(slots=True)
class Exec:
    id: int
    code: str
    session: Any = None  # a session's namespace (a handle's Session), else __main__
    deadline: float | None = None


@dataclass(slots=True)
class StreamCall:
    id: int
    module: Any  # a module name, or (object,) for a handle's object
    function: str
    args: list[Any]
    kwargs: dict[Any, Any]
    credit: int  # 0: collected whole, no flow control
    input: bool  # the function gets an InputStream as its first argument
    deadline: float | None = None


@dataclass(slots=True)
class StreamEval:
    id: int
    code: str
    locals: dict[Any, Any]
    credit: int
    session: Any = None  # a session's namespace (a handle's Session), else __main__
    deadline: float | None = None


@dataclass(slots=True)
class Cancel:
    id: int


@dataclass(slots=True)
class Credit:
    id: int
    n: int


@dataclass(slots=True)
class Input:
    id: int
    values: list[Any]


@dataclass(slots=True)
class InputClose:
    id: int


@dataclass(slots=True)
class Reply:
    """Erlang's answer to a CALLBACK."""

    callback_id: int
    ok: bool
    value: Any  # the result, or the error reason


@dataclass(slots=True)
class Release:
    """Handles Erlang no longer uses."""

    ids: list[Any]


@dataclass(slots=True)
class Stop:
    """The worker stops: exit at once."""


@dataclass(slots=True)
class Setup:
    id: int
    worker_pid: Any
    limits: dict[Any, Any]


@dataclass(slots=True)
class Undecodable:
    """A message whose values cannot be made in Python (a handle to a list as a map key):
    its kind and id, read without them, and why."""

    kind: int
    id: int
    error: Exception


Request: TypeAlias = Call | Eval | Exec | StreamCall | StreamEval
Message: TypeAlias = (
    Request | Cancel | Credit | Input | InputClose | Reply | Setup | Release | Stop | Undecodable
)


def decode(msg: list[Any]) -> Message | None:
    """The message a decoded msgpack array stands for; None for an unknown kind.

    A request's optional last field is the time its caller has left, in milliseconds
    (absent or nil: no deadline); it becomes the request's ``deadline``.

    Raises:
        IndexError, TypeError, KeyError: not a message of the protocol.
    """
    match msg[0]:  # the common kinds first
        case P.CALL:
            return Call(msg[1], msg[2], msg[3], msg[4], msg[5], False, _deadline(msg, 6))
        case P.CREDIT:
            return Credit(msg[1], msg[2])
        case P.STREAM_CALL:
            return StreamCall(
                msg[1], msg[2], msg[3], msg[4], msg[5], msg[6], msg[7], _deadline(msg, 8)
            )
        case P.EVAL:
            return Eval(msg[1], msg[2], msg[3], False, None, _deadline(msg, 4))
        case P.REPLY:
            return Reply(msg[1], msg[2], msg[3])
        case P.CANCEL:
            return Cancel(msg[1])
        case P.INPUT:
            return Input(msg[1], msg[2])
        case P.INPUT_CLOSE:
            return InputClose(msg[1])
        case P.EXEC:
            return Exec(msg[1], msg[2], None, _deadline(msg, 3))
        case P.STREAM_EVAL:
            return StreamEval(msg[1], msg[2], msg[3], msg[4], None, _deadline(msg, 5))
        case P.SETUP:
            return Setup(msg[1], msg[2], msg[3])
        case P.RELEASE:
            return Release(msg[1])
        case P.CALL_REF:
            return Call(msg[1], msg[2], msg[3], msg[4], msg[5], True, _deadline(msg, 6))
        case P.EVAL_REF:
            return Eval(msg[1], msg[2], msg[3], True, None, _deadline(msg, 4))
        case P.EVAL_IN:
            return Eval(msg[1], msg[2], msg[3], msg[5], msg[4], _deadline(msg, 6))
        case P.EXEC_IN:
            return Exec(msg[1], msg[2], msg[3], _deadline(msg, 4))
        case P.STREAM_EVAL_IN:
            return StreamEval(msg[1], msg[2], msg[3], msg[4], msg[5], _deadline(msg, 6))
        case P.STOP:
            return Stop()
    return None


def _deadline(msg: list[Any], index: int) -> float | None:
    return from_timeout(msg[index]) if len(msg) > index else None

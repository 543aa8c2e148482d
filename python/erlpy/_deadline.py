"""The deadline of the request being served: the caller's ``timeout`` seen from Python.

Erlang sends each request with the milliseconds its caller has left (or nothing, for
``infinity``); Python turns that into an absolute ``time.monotonic()`` value on receipt
(:func:`from_timeout`) and the runtime sets :data:`DEADLINE` around the request's code:
the sync code on the main thread, an async job's task (which every task and
``asyncio.to_thread`` call it starts inherits), a generator each time it is stepped.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any, Final

# The deadline of the request whose code runs in this context; None: none (`infinity`,
# or no request, as in a thread started without the request's context).
DEADLINE: Final[ContextVar[float | None]] = ContextVar("erlpy_deadline", default=None)

_monotonic = time.monotonic


def from_timeout(timeout_ms: Any) -> float | None:
    """The absolute deadline of a request received now with ``timeout_ms`` left (None,
    or anything but a number: no deadline)."""
    if type(timeout_ms) is int or type(timeout_ms) is float:
        return _monotonic() + timeout_ms / 1000
    return None


def time_left() -> float | None:
    """Seconds left before the current request's caller stops waiting for it.

    Returns:
        The seconds left (0.0 once the deadline has passed), or None when the request has
        no deadline (its ``timeout`` is ``infinity``, or the code runs outside a request:
        see docs/serving.md for threads).
    """
    deadline = DEADLINE.get()
    if deadline is None:
        return None
    return max(0.0, deadline - _monotonic())


def deadline() -> float | None:
    """The current request's deadline as a ``time.monotonic()`` value (the clock of
    ``asyncio``'s event loop, so ``asyncio.timeout_at(erlpy.deadline())`` works), or
    None when it has none (see :func:`time_left`)."""
    return DEADLINE.get()

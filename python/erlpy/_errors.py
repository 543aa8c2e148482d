"""The runtime's exceptions, in a module of their own so that every layer can raise them
without importing another (the public ones are re-exported by ``erlpy`` and
``erlpy.erlang``, which give them their public names)."""

from __future__ import annotations

from typing import Any


class Interrupted(BaseException):
    """Raised in sync Python code whose request was cancelled or timed out.

    A ``BaseException``, like ``KeyboardInterrupt``, so ``except Exception`` in user code
    does not swallow it.
    """


class ErlangError(Exception):
    """A registered Erlang function failed, or no function has that name.

    ``reason`` holds the Erlang error term, for example ``(Atom('not_registered'), 'f')``.
    """

    def __init__(self, reason: Any) -> None:
        super().__init__(_describe(reason))
        self.reason = reason


def _describe(reason: Any) -> str:
    if isinstance(reason, tuple) and len(reason) == 2 and reason[0] == "not_registered":
        return (
            f"no Erlang function is registered as {reason[1]!r} "
            "(register it with py:register_function/2)"
        )
    return f"Erlang function failed: {reason!r}"


class BadName(Exception):
    """A module or function name that is not a dotted Python identifier."""

"""Objects kept for Erlang: the value of a call made with ``return => ref`` stays in this
process under the id of the request that made it, until Erlang releases it (docs/state.md).

A handle travels as msgpack ext 6 holding that id. Decoding one gives the object itself;
an id this process does not hold (released, or made by an earlier Python of the worker)
gives a :class:`Stale` marker, and the request that carries it fails with
``{stale_ref, Id}``, never with another object.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Final

from . import _codec

objects: dict[int, Any] = {}
_MISSING: Final = object()


class Limits:
    """The pool's cap on live handles (``max_refs``), and whether a stale handle was
    decoded since the dispatcher last looked."""

    max_refs: int | None = None
    stale_seen = False


class Stale:
    """A handle this process does not hold."""

    __slots__ = ("id",)

    def __init__(self, handle_id: int) -> None:
        self.id = handle_id

    def __repr__(self) -> str:
        return f"Stale({self.id})"


class Session:
    """A session's namespace (py:session_start): the globals its evals, execs and calls of
    ``__main__`` functions run in, seen by no other session and no plain request."""

    __slots__ = ("globals",)

    def __init__(self) -> None:
        import asyncio
        import builtins

        self.globals: dict[str, Any] = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "asyncio": asyncio,
        }

    def __repr__(self) -> str:
        return f"<erlpy session with {len(self.globals)} names>"


def new_session() -> Session:
    """The object of a new session (py:session_start keeps it as a handle)."""
    return Session()


class TooManyRefs(Exception):
    """The worker holds ``max_refs`` handles already."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this worker holds max_refs ({limit}) handles already")
        self.limit = limit


def decode(data: bytes) -> Any:
    """The object a handle names, or a :class:`Stale` marker (ext hook; loop thread)."""
    handle_id = int.from_bytes(data, "big")
    obj = objects.get(handle_id, _MISSING)
    if obj is _MISSING:
        Limits.stale_seen = True
        return Stale(handle_id)
    return obj


def store(handle_id: int, value: Any) -> None:
    """Keep ``value`` under ``handle_id``.

    Raises:
        TooManyRefs: the worker holds ``max_refs`` handles already.
    """
    limit = Limits.max_refs
    if limit is not None and len(objects) >= limit:
        raise TooManyRefs(limit)
    objects[handle_id] = value


_codec.handle_decoder = decode


def release(ids: list[Any]) -> None:
    """Let go of the objects of these handles (RELEASE, on the loop thread). The last
    reference goes on a thread of its own: what that runs (``__del__``, a finalizer) may
    take as long as it likes without keeping the loop thread from Erlang's messages."""
    dropped = [obj for obj in map(objects.pop, ids, itertools.repeat(None)) if obj is not None]
    if dropped:
        _releases.put(dropped)
        global _releaser
        if _releaser is None or not _releaser.is_alive():  # none yet, or a fork's parent's
            _releaser = threading.Thread(target=_drop_released, name="erlpy-release", daemon=True)
            _releaser.start()


_releases: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
_releaser: threading.Thread | None = None


def _drop_released() -> None:
    while True:
        _releases.get().clear()  # the objects' last references, as a rule


def find_stale(value: Any) -> Stale | None:
    """The first :class:`Stale` marker in a request's arguments, if any (looked for only
    in a frame that decoded one): in lists, tuples and maps, keys too, however deep
    (Erlang sends at most 500 levels)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, Stale):
            return item
        if isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
    return None

"""``erlpy.batched``: a function over a list of items that Erlang calls one item at a time.

The decorator only marks the function; the worker's batcher (``_batch``) gathers the
calls to it and runs one call per batch. Called from Python, it takes one item and runs a
batch of one, so code and tests can use it as Erlang sees it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, overload


class Batched:
    """A function of a list of items, called by Erlang with one item per call; see
    :func:`batched`."""

    def __init__(self, func: Callable[[list[Any]], Any], max_size: int, max_wait: float) -> None:
        self.func = func
        self.max_size = max_size
        self.max_wait = max_wait
        self.is_async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)  # __name__, __doc__, __wrapped__

    def __call__(self, item: Any) -> Any:
        """A batch of one, outside the batcher: the result for ``item`` (a coroutine
        for an async function)."""
        if self.is_async:
            return self._call_async(item)
        return one_result(self.func([item]))

    async def _call_async(self, item: Any) -> Any:
        return one_result(await self.func([item]))

    def __repr__(self) -> str:
        return f"<erlpy.batched {self.func!r} max_size={self.max_size} max_wait={self.max_wait}>"


def one_result(results: Any) -> Any:
    """The only result of a batch of one; an exception instance is raised."""
    [result] = check_results(results, 1)
    if isinstance(result, BaseException):
        raise result
    return result


def check_results(results: Any, count: int) -> list[Any]:
    """A batch's results as a list, one per item.

    Raises:
        TypeError: the function did not return a list (or tuple, or numpy array) of
            ``count`` results.
    """
    if type(results).__module__ == "numpy" and hasattr(results, "tolist"):
        results = results.tolist()  # an array of a model's outputs
    if not isinstance(results, (list, tuple)):
        # Not any iterable: a str or a dict would hand out its characters or keys, a set
        # its members in any order, and a generator run user code outside the window.
        raise TypeError(
            f"an erlpy.batched function must return a list, not {type(results).__name__}"
        )
    listed = list(results)
    if len(listed) != count:
        raise TypeError(
            f"an erlpy.batched function returned {len(listed)} results for {count} items"
        )
    return listed


@overload
def batched(func: Callable[[list[Any]], Any], /) -> Batched: ...


@overload
def batched(
    *, max_size: int = ..., max_wait: float = ...
) -> Callable[[Callable[[list[Any]], Any]], Batched]: ...


def batched(
    func: Callable[[list[Any]], Any] | None = None,
    /,
    *,
    max_size: int = 32,
    max_wait: float = 0.002,
) -> Batched | Callable[[Callable[[list[Any]], Any]], Batched]:
    """Serve a function of a list of items to many Erlang callers, one item each.

    Erlang calls it as ``py:call(Module, Name, [Item])``; erlpy gathers the items of
    concurrent calls into batches of at most ``max_size``, waiting at most ``max_wait``
    seconds after the first item for a batch to fill, calls ``func(items)`` once per batch
    and gives each caller its own result (docs/serving.md).

    Args:
        func: a function (or ``async def``) that takes a list of items and returns a list
            of results of the same length; a result may be an exception instance, which
            only its item's caller gets as an error.
        max_size: the most items in one batch.
        max_wait: the most seconds the first item of a batch waits for more to come.

    Returns:
        The decorated function (usable as ``@erlpy.batched`` or
        ``@erlpy.batched(max_size=..., max_wait=...)``).
    """
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, not {max_size!r}")
    if (
        not isinstance(max_wait, (int, float))
        or isinstance(max_wait, bool)
        or not 0 <= max_wait < math.inf  # nor inf (a lone call would wait for ever), nor nan
    ):
        raise ValueError(f"max_wait must be a finite number of seconds >= 0, not {max_wait!r}")
    if func is None:
        return functools.partial(batched, max_size=max_size, max_wait=float(max_wait))
    if not callable(func):
        raise TypeError(f"erlpy.batched needs a function, not {func!r}")
    return Batched(func, max_size, float(max_wait))

"""Functions and generators for the benchmarks: plain Python, as a user would write them."""

import math
from collections.abc import AsyncIterator, Iterator


def count(n: int) -> Iterator[int]:
    for i in range(n):  # noqa: UP028 - item by item, as a user's generator runs
        yield i


async def acount(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def asqrt(x: float) -> float:
    """math.sqrt as an `async def`: the sequential call of SPEC §9 on the event loop."""
    return math.sqrt(x)


def identity(x: object) -> object:
    return x

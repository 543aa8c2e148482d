"""Generators for the benchmarks: plain Python, as a user would write them."""

from collections.abc import AsyncIterator, Iterator


def count(n: int) -> Iterator[int]:
    for i in range(n):
        yield i


async def acount(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def identity(x: object) -> object:
    return x

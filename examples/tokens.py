"""Token sources for the demo: stand-ins for an LLM that emits a word every few ms.

Plain Python: nothing here knows about Erlang. The demo puts this directory on the
pool's `path` and streams these generators with py:stream_start/4.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

from erlpy import streams

TEXT = "Erlang supervises, Python computes, and every token streams straight into the BEAM."


async def tokens(text: str = TEXT, delay: float = 0.05) -> AsyncIterator[str]:
    """An async generator, like an LLM client streaming a completion."""
    for word in text.split():
        await asyncio.sleep(delay)
        yield word


async def two_models() -> AsyncIterator[str]:
    """Two sources merged: items arrive in the order they are produced."""
    fast = tokens("alpha beta gamma delta epsilon", 0.04)
    slow = tokens("ONE TWO THREE", 0.07)
    async with contextlib.aclosing(streams.merge(fast, slow)) as merged:
        async for token in merged:
            yield token


def countdown(n: int) -> Iterator[int]:
    """A sync generator; its finally block runs when Erlang cancels it."""
    try:
        for i in range(n, 0, -1):
            time.sleep(0.05)
            yield i
    finally:
        print("countdown stopped before reaching 0")  # reaches Erlang's logger

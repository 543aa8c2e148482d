"""Processors, as genai_processors has them: a processor turns a stream of parts into a
stream of parts, and processors chain with ``+``.

    class Upper(processor.Processor):
        async def call(self, content):
            async for part in content:
                yield content_api.ProcessorPart(part.text.upper())

    async for part in (Upper() + Shout())(input_stream):
        ...
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator

from .content import ProcessorPart

__all__ = ["Processor"]


class Processor(abc.ABC):
    """A step of a pipeline: :meth:`call` reads the parts of its input stream and yields
    the parts of its output as soon as they are ready."""

    @abc.abstractmethod
    def call(self, content: AsyncIterable[ProcessorPart]) -> AsyncIterator[ProcessorPart]:
        """The parts made from ``content`` (an ``async def`` with ``yield``)."""

    def __call__(self, content: AsyncIterable[ProcessorPart]) -> AsyncIterator[ProcessorPart]:
        return self.call(content)

    def __add__(self, other: Processor) -> Processor:
        """This processor's output is ``other``'s input."""
        if not isinstance(other, Processor):
            return NotImplemented
        return _Chain([*_steps(self), *_steps(other)])


class _Chain(Processor):
    def __init__(self, steps: list[Processor]) -> None:
        self._steps = steps

    def call(self, content: AsyncIterable[ProcessorPart]) -> AsyncIterator[ProcessorPart]:
        stream: AsyncIterable[ProcessorPart] = content
        for step in self._steps:
            stream = step(stream)
        return aiter(stream)

    def __repr__(self) -> str:
        return " + ".join(map(repr, self._steps))


def _steps(p: Processor) -> list[Processor]:
    return p._steps if isinstance(p, _Chain) else [p]

"""Small content helpers: a text part, a stream over given content, `as_text`."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, TypeVar

__all__ = ["ContentStream", "ProcessorPart", "as_text"]

_T = TypeVar("_T")


@dataclasses.dataclass
class ProcessorPart:
    """A piece of content flowing through a stream, such as a chunk of text.

    Attributes:
        text: the text of the part ("" for non-text content).
        mimetype: the type of the content.
        metadata: free-form information attached to the part.
    """

    text: str = ""
    mimetype: str = "text/plain"
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


class ContentStream(AsyncIterable[_T]):
    """An async iterable over the items of a synchronous iterable.

    Each ``async for`` starts a new pass over `content`: a collection such as
    a list is streamed again from the start, while a one-shot iterator (a
    generator) is exhausted by the first pass and yields nothing after that.

    Args:
        content: the items to stream.
    """

    __slots__ = ("_content",)

    def __init__(self, content: Iterable[_T] = ()) -> None:
        self._content = content

    def __aiter__(self) -> AsyncIterator[_T]:
        return _iterate(self._content)

    def __repr__(self) -> str:
        return f"ContentStream(content={self._content!r})"


async def _iterate(content: Iterable[_T]) -> AsyncIterator[_T]:
    for item in content:
        yield item


def as_text(parts: Iterable[object], *, strict: bool = False) -> str:
    """Joins the text of parts into one string.

    A `str` item is used as is; any other item with a `str` attribute
    ``text`` (such as a `ProcessorPart`) contributes that attribute. Other
    items are skipped.

    Args:
        parts: the parts to join.
        strict: raise instead of skipping items that carry no text.

    Returns:
        The concatenated text.

    Raises:
        ValueError: if `strict` and an item carries no text.
    """
    chunks: list[str] = []
    for part in parts:
        if isinstance(part, str):
            chunks.append(part)
            continue
        text = getattr(part, "text", None)
        if isinstance(text, str):
            chunks.append(text)
        elif strict:
            raise ValueError(f"not a text part: {part!r}")
    return "".join(chunks)

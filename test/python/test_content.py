"""Tests of erlpy.content (content_api, its genai_processors name) and erlpy.processor."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import pytest

from erlpy import content, content_api, processor, streams


@pytest.mark.asyncio
async def test_content_stream_over_a_list_can_be_iterated_again() -> None:
    stream = content.ContentStream(content=["Hello", "World"])
    assert await streams.gather_stream(stream) == ["Hello", "World"]
    assert await streams.gather_stream(stream) == ["Hello", "World"]


@pytest.mark.asyncio
async def test_content_stream_over_an_iterator_is_one_shot() -> None:
    stream = content.ContentStream(iter([1, 2]))
    assert await streams.gather_stream(stream) == [1, 2]
    assert await streams.gather_stream(stream) == []


@pytest.mark.asyncio
async def test_content_stream_defaults_to_empty_and_has_a_repr() -> None:
    assert await streams.gather_stream(content.ContentStream()) == []
    assert repr(content.ContentStream([1])) == "ContentStream(content=[1])"


@pytest.mark.asyncio
async def test_content_stream_works_with_the_stream_functions() -> None:
    s1, s2 = streams.split(content.ContentStream(["a", "b"]))
    merged = streams.concat(s1, s2, content.ContentStream(["c"]))
    assert await streams.gather_stream(merged) == ["a", "b", "a", "b", "c"]


def test_processor_part_defaults_and_copies() -> None:
    part = content.ProcessorPart("hi")
    assert (part.text, part.mimetype, part.metadata) == ("hi", "text/plain", {})
    clone = copy.deepcopy(part)
    clone.metadata["k"] = 1
    assert part.metadata == {}
    assert content.ProcessorPart("a") == content.ProcessorPart("a")


@dataclass
class _Chunk:
    text: str


class _Image:
    mimetype = "image/png"


def test_as_text_joins_strings_and_text_attributes() -> None:
    parts = ["Hello", content.ProcessorPart(", "), _Chunk("World"), _Image(), b"raw"]
    assert content.as_text(parts) == "Hello, World"
    assert content.as_text([]) == ""


def test_as_text_strict_rejects_non_text_parts() -> None:
    assert content.as_text(["a", _Chunk("b")], strict=True) == "ab"
    with pytest.raises(ValueError, match="not a text part"):
        content.as_text(["a", _Image()], strict=True)


async def _collect(stream: AsyncIterable[content_api.ProcessorPart]) -> list[str]:
    return [part.text async for part in stream]


class _Upper(processor.Processor):
    async def call(
        self, content: AsyncIterable[content_api.ProcessorPart]
    ) -> AsyncIterator[content_api.ProcessorPart]:
        async for part in content:
            yield content_api.ProcessorPart(part.text.upper())


class _Exclaim(processor.Processor):
    async def call(
        self, content: AsyncIterable[content_api.ProcessorPart]
    ) -> AsyncIterator[content_api.ProcessorPart]:
        async for part in content:
            yield content_api.ProcessorPart(part.text + "!")


def test_processors_chain_with_plus() -> None:
    parts = content_api.ContentStream(content=[content_api.ProcessorPart(t) for t in "ab"])
    chain = _Upper() + _Exclaim() + _Upper()
    assert asyncio.run(_collect(chain(parts))) == ["A!", "B!"]
    assert asyncio.run(_collect((_Exclaim() + chain)(parts))) == ["A!!", "B!!"]
    assert "+" in repr(chain)


def test_a_processor_must_define_call() -> None:
    with pytest.raises(TypeError):
        processor.Processor()  # type: ignore[abstract]


def test_content_api_is_content() -> None:
    assert content_api.ProcessorPart is content.ProcessorPart
    assert content_api.as_text(["a", content.ProcessorPart("b")]) == "ab"

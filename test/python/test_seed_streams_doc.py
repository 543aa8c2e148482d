"""Runs every example of the "Async & Streaming" seed document.

The document (shared/seeds/000_5071469a3e47ce1e.txt) was written for
genai_processors; here `genai_processors` is `erlpy`, which has its `processor`,
`streams` and `content_api` modules. Where the document leans on things it does not
define (a `MyProcessor`, a `model`, an `input_stream`), small stand-ins are defined
below. Two slips of the document are fixed: `endless_stream()` is not a block
statement, and `enqeue` is `enqueue` (a coroutine, so it is awaited).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import pytest

from erlpy import content_api, processor, streams

TIMEOUT = 5


class MyProcessor(processor.Processor):
    """Stand-in for the document's processor: upper-cases each text part."""

    async def call(
        self, input_stream: AsyncIterable[content_api.ProcessorPart]
    ) -> AsyncIterator[content_api.ProcessorPart]:
        async for part in input_stream:
            yield content_api.ProcessorPart(part.text.upper())


async def model(
    input_stream: AsyncIterable[content_api.ProcessorPart],
) -> AsyncIterator[content_api.ProcessorPart]:
    """Stand-in for a model: streams its answer token by token."""
    async for _ in input_stream:
        pass
    for token in ["The ", "answer ", "is ", "42."]:
        await asyncio.sleep(0)
        yield content_api.ProcessorPart(token)


def parts(*texts: str) -> content_api.ContentStream[content_api.ProcessorPart]:
    return content_api.ContentStream(content=[content_api.ProcessorPart(t) for t in texts])


@pytest.mark.asyncio
async def test_the_basic_loop(capsys: pytest.CaptureFixture[str]) -> None:
    input_stream = parts("hello", "world")

    async def main() -> None:
        # 1. Initialize your processor
        my_proc = MyProcessor()

        # 2. Process the input stream
        async for part in my_proc(input_stream):
            print(part.text)

    await main()
    assert capsys.readouterr().out == "HELLO\nWORLD\n"


@pytest.mark.asyncio
async def test_token_by_token_streaming(capsys: pytest.CaptureFixture[str]) -> None:
    input_stream = parts("question")
    async for part in model(input_stream):
        # 'part.text' contains the latest token or chunk
        print(part.text, end="", flush=True)
    assert capsys.readouterr().out == "The answer is 42."


@pytest.mark.asyncio
async def test_buffering() -> None:
    input_stream = parts("question")
    # Collect all stream parts into a single list
    parts_ = await streams.gather_stream(model(input_stream))

    # Combine them into a single string
    full_text = content_api.as_text(parts_)
    assert full_text == "The answer is 42."


@pytest.mark.asyncio
async def test_creating_streams() -> None:
    # From a list
    stream = content_api.ContentStream(content=["Hello", "World"])
    assert await streams.gather_stream(stream) == ["Hello", "World"]

    # From a list with delays (useful for testing) between iterations
    stream2 = streams.stream_content(content=["Hi", "there"], with_delay_sec=0.5)
    assert await streams.gather_stream(stream2) == ["Hi", "there"]

    # Create an infinite stream (keeps agents alive waiting for input)
    stream3 = streams.endless_stream()  # Never ends unless cancelled
    task = asyncio.create_task(streams.gather_stream(stream3))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=TIMEOUT)
    assert done and task.cancelled()


@pytest.mark.asyncio
async def test_streams_and_queues_are_interchangeable() -> None:
    # Queue of parts. None is added to indicate when the queue is done.
    q = asyncio.Queue[content_api.ProcessorPart | None]()
    for text in ["a", "b"]:
        q.put_nowait(content_api.ProcessorPart(text))
    q.put_nowait(None)

    # Builds an iterable over the parts of q until None is met.
    stream = streams.dequeue(q)

    # Adds the content of stream into the queue q, adds None when done.
    # p has the same content than q.
    p = asyncio.Queue[content_api.ProcessorPart | None]()
    async with asyncio.timeout(TIMEOUT):
        await streams.enqueue(stream, p)

    got = [p.get_nowait() for _ in range(p.qsize())]
    assert got == [content_api.ProcessorPart("a"), content_api.ProcessorPart("b"), None]


@pytest.mark.asyncio
async def test_splitting_streams() -> None:
    content = parts("x", "y")
    # 'split' creates two independent iterators from one source
    stream1, stream2 = streams.split(content, n=2)
    assert [p.text for p in await streams.gather_stream(stream1)] == ["x", "y"]
    assert [p.text for p in await streams.gather_stream(stream2)] == ["x", "y"]

    # Use 'with_copy=True' if downstream processors might mutate the objects
    content = parts("x")
    s1, s2 = streams.split(content, n=2, with_copy=True)
    [first] = await streams.gather_stream(s1)
    first.text = "mutated"
    [second] = await streams.gather_stream(s2)
    assert second.text == "x"


@pytest.mark.asyncio
async def test_concatenation(capsys: pytest.CaptureFixture[str]) -> None:
    async def slow_site() -> AsyncIterator[content_api.ProcessorPart]:
        await asyncio.sleep(0.02)
        yield content_api.ProcessorPart("A1")
        yield content_api.ProcessorPart("A2")

    stream1, stream2 = slow_site(), parts("B1", "B2")
    # stream1 is returned before stream2
    async for part in streams.concat(stream1, stream2):
        print(part.text)
    assert capsys.readouterr().out == "A1\nA2\nB1\nB2\n"


@pytest.mark.asyncio
async def test_merging(capsys: pytest.CaptureFixture[str]) -> None:
    async def audio() -> AsyncIterator[content_api.ProcessorPart]:
        await asyncio.sleep(0.05)
        yield content_api.ProcessorPart("audio")

    stream1, stream2 = audio(), parts("image1", "image2")
    # Output: Mixed parts from stream1 and stream2 as they arrive
    async for part in streams.merge([stream1, stream2]):
        print(part.text)
    assert capsys.readouterr().out == "image1\nimage2\naudio\n"


@pytest.mark.asyncio
async def test_merging_stop_on_first() -> None:
    stream1, stream2 = streams.endless_stream(), parts("only")
    async with asyncio.timeout(TIMEOUT):
        merged = streams.merge([stream1, stream2], stop_on_first=True)
        assert [p.text for p in await streams.gather_stream(merged)] == ["only"]
    assert asyncio.all_tasks() == {asyncio.current_task()}

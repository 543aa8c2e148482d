"""Tests of erlpy.streams: ordering, errors, cancellation and bounded buffers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from erlpy import streams

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5  # Generous: only there to turn a hang into a failure.


# --- helpers -----------------------------------------------------------------


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collects what the event loop would log (e.g. "exception never retrieved")."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


async def settle() -> None:
    """Lets finalizers and pending callbacks run."""
    gc.collect()
    for _ in range(10):
        await asyncio.sleep(0)


async def assert_cancelled(task: asyncio.Task[Any]) -> None:
    """Waits (boundedly) for a cancelled task and checks it ended cancelled."""
    done, _ = await asyncio.wait({task}, timeout=TIMEOUT)
    assert done, "the task did not finish"
    assert task.cancelled()


def only_current_task() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


async def items(*values: Any, delay: float = 0) -> AsyncIterator[Any]:
    for value in values:
        if delay:
            await asyncio.sleep(delay)
        yield value


async def failing(*values: Any, error: BaseException) -> AsyncIterator[Any]:
    for value in values:
        yield value
        await asyncio.sleep(0)
    raise error


class Tracked:
    """An async generator source that records its lifecycle."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count
        self.started = False
        self.closed = False
        self.produced = 0

    async def stream(self) -> AsyncIterator[int]:
        self.started = True
        try:
            i = 0
            while self.count is None or i < self.count:
                self.produced += 1
                yield i
                i += 1
                await asyncio.sleep(0)
        finally:
            self.closed = True


class Turns:
    """Makes the interleaving of several producers deterministic."""

    def __init__(self) -> None:
        self.turn = 0
        self._changed = asyncio.Event()

    async def wait_for(self, turn: int) -> None:
        while self.turn < turn:
            self._changed.clear()
            await self._changed.wait()

    def advance(self) -> None:
        self.turn += 1
        self._changed.set()

    async def stream(
        self, name: str, turns: list[int], end_turn: int | None = None
    ) -> AsyncIterator[str]:
        for n, turn in enumerate(turns):
            await self.wait_for(turn)
            yield f"{name}{n}"
        if end_turn is not None:
            await self.wait_for(end_turn)


# --- gather_stream, stream_content, endless_stream, aenumerate ---------------


@pytest.mark.asyncio
async def test_gather_stream_keeps_order() -> None:
    assert await streams.gather_stream(items(1, 2, 3)) == [1, 2, 3]
    assert await streams.gather_stream(items()) == []


@pytest.mark.asyncio
async def test_gather_stream_raises_the_stream_error() -> None:
    with pytest.raises(ValueError, match="bad"):
        await streams.gather_stream(failing(1, error=ValueError("bad")))


@pytest.mark.asyncio
async def test_gather_stream_closes_source_when_cancelled() -> None:
    source = Tracked()
    task = asyncio.create_task(streams.gather_stream(source.stream()))
    await asyncio.sleep(0.01)
    task.cancel()
    await assert_cancelled(task)
    assert source.closed


@pytest.mark.asyncio
async def test_stream_content_without_delay() -> None:
    assert await streams.gather_stream(streams.stream_content(["a", "b"])) == ["a", "b"]
    assert await streams.gather_stream(streams.stream_content(iter(range(3)))) == [0, 1, 2]


@pytest.mark.asyncio
async def test_stream_content_sleeps_between_items(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    log: list[object] = []

    async def fake_sleep(delay: float) -> None:
        log.append(("sleep", delay))
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    async for item in streams.stream_content(["a", "b", "c"], with_delay_sec=0.5):
        log.append(item)
    assert log == ["a", ("sleep", 0.5), "b", ("sleep", 0.5), "c"]

    log.clear()
    stream = streams.stream_content(["a"], with_delay_sec=1, delay_first=True, delay_end=True)
    async for item in stream:
        log.append(item)
    assert log == [("sleep", 1), "a", ("sleep", 1)]


def test_stream_content_rejects_negative_delay() -> None:
    with pytest.raises(ValueError):
        streams.stream_content([1], with_delay_sec=-1)


@pytest.mark.asyncio
async def test_endless_stream_waits_until_cancelled() -> None:
    stream = streams.endless_stream()
    assert aiter(stream) is stream
    task = asyncio.create_task(streams.gather_stream(stream))
    await asyncio.sleep(0.02)
    assert not task.done()
    task.cancel()
    await assert_cancelled(task)
    assert only_current_task()


@pytest.mark.asyncio
async def test_aenumerate() -> None:
    assert await streams.gather_stream(streams.aenumerate(items("a", "b"))) == [
        (0, "a"),
        (1, "b"),
    ]
    result = await streams.gather_stream(streams.aenumerate(items("a", "b"), start=5))
    assert result == [(5, "a"), (6, "b")]


@pytest.mark.asyncio
async def test_aenumerate_closes_its_source() -> None:
    source = Tracked()
    async with contextlib.aclosing(streams.aenumerate(source.stream())) as numbered:
        async for index, _ in numbered:
            if index == 2:
                break
    assert source.closed


# --- enqueue / dequeue -------------------------------------------------------


@pytest.mark.asyncio
async def test_enqueue_then_dequeue_round_trip() -> None:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    await streams.enqueue(items("a", "b"), queue)
    assert queue.qsize() == 3
    assert await streams.gather_stream(streams.dequeue(queue)) == ["a", "b"]
    await asyncio.wait_for(queue.join(), TIMEOUT)  # task_done() was called for each item.


@pytest.mark.asyncio
async def test_enqueue_puts_none_when_the_stream_fails() -> None:
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    with pytest.raises(KeyError):
        await streams.enqueue(failing(1, error=KeyError("k")), queue)
    assert [queue.get_nowait(), queue.get_nowait()] == [1, None]


@pytest.mark.asyncio
async def test_enqueue_into_bounded_queue_with_concurrent_reader() -> None:
    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=2)
    async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tg:
        tg.create_task(streams.enqueue(items(*range(50)), queue))
        result = await streams.gather_stream(streams.dequeue(queue))
    assert result == list(range(50))


@pytest.mark.asyncio
async def test_cancelled_enqueue_on_full_queue_does_not_hang() -> None:
    source = Tracked()
    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=2)
    task = asyncio.create_task(streams.enqueue(source.stream(), queue))
    await asyncio.sleep(0.01)
    assert queue.full()
    task.cancel()
    await assert_cancelled(task)
    assert source.closed
    assert [queue.get_nowait(), queue.get_nowait()] == [0, 1]  # No room was left for None.


@pytest.mark.asyncio
async def test_cancelled_enqueue_puts_none_when_there_is_room() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.create_task(streams.enqueue(streams.endless_stream(), queue))
    await asyncio.sleep(0.01)
    task.cancel()
    await assert_cancelled(task)
    assert queue.get_nowait() is None


# --- concat ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concat_strict_argument_order_with_slow_first_input() -> None:
    result = await streams.gather_stream(
        streams.concat(items("a0", "a1", delay=0.02), items("b0", "b1"), items("c0"))
    )
    assert result == ["a0", "a1", "b0", "b1", "c0"]


@pytest.mark.asyncio
async def test_concat_computes_inputs_concurrently() -> None:
    second_ran = asyncio.Event()

    async def first() -> AsyncIterator[str]:
        await second_ran.wait()  # Only completes if the second input runs meanwhile.
        yield "first"

    async def second() -> AsyncIterator[str]:
        second_ran.set()
        yield "second"

    async with asyncio.timeout(TIMEOUT):
        assert await streams.gather_stream(streams.concat(first(), second())) == [
            "first",
            "second",
        ]


@pytest.mark.asyncio
async def test_concat_empty() -> None:
    assert await streams.gather_stream(streams.concat()) == []
    assert await streams.gather_stream(streams.concat(items(), items(1), items())) == [1]


def test_concat_rejects_non_async_iterables() -> None:
    with pytest.raises(TypeError):
        streams.concat([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        streams.concat(items(), queue_maxsize=-1)


@pytest.mark.asyncio
async def test_concat_error_in_later_input_reaches_consumer_promptly() -> None:
    with loop_errors() as errors:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ValueError, match="late"):
                async for _ in streams.concat(
                    streams.endless_stream(), failing(1, error=ValueError("late"))
                ):
                    pass
        await settle()
    assert errors == []
    assert only_current_task()


@pytest.mark.asyncio
async def test_concat_aclose_cancels_every_producer() -> None:
    sources = [Tracked(), Tracked()]
    merged = streams.concat(*(s.stream() for s in sources), queue_maxsize=4)
    assert await anext(merged) == 0
    await merged.aclose()
    assert only_current_task()
    assert all(s.closed for s in sources)


@pytest.mark.asyncio
async def test_concat_second_input_is_bounded() -> None:
    first, second = Tracked(), Tracked(count=1000)
    concatenated = streams.concat(first.stream(), second.stream(), queue_maxsize=8)
    async with contextlib.aclosing(concatenated):
        await anext(concatenated)
        await asyncio.sleep(0.05)  # The first input is endless: the second waits.
        assert second.produced <= 8 + 2
    assert second.closed


# --- merge -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_merge_yields_in_arrival_order() -> None:
    turns = Turns()
    a = turns.stream("a", [0, 2, 4])
    b = turns.stream("b", [1, 3])
    result = []
    async with asyncio.timeout(TIMEOUT):
        async for item in streams.merge(a, b):
            result.append(item)
            turns.advance()
    assert result == ["a0", "b0", "a1", "b1", "a2"]


@pytest.mark.asyncio
async def test_merge_with_timed_inputs() -> None:
    result = await streams.gather_stream(
        streams.merge([items("slow", delay=0.05), items("fast0", "fast1")])
    )
    assert result == ["fast0", "fast1", "slow"]


@pytest.mark.asyncio
async def test_merge_accepts_varargs_list_and_generator() -> None:
    assert sorted(await streams.gather_stream(streams.merge(items(1), items(2)))) == [1, 2]
    assert sorted(await streams.gather_stream(streams.merge([items(1), items(2)]))) == [1, 2]
    gen = (items(i) for i in range(3))
    assert sorted(await streams.gather_stream(streams.merge(gen))) == [0, 1, 2]
    assert await streams.gather_stream(streams.merge()) == []
    assert await streams.gather_stream(streams.merge([])) == []


def test_merge_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        streams.merge(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        streams.merge([[1]])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        streams.merge(items(), queue_maxsize=-1)


@pytest.mark.asyncio
async def test_merge_stop_on_first_ends_with_the_first_input() -> None:
    endless = Tracked()

    async def finite() -> AsyncIterator[int]:
        await asyncio.sleep(0.01)
        yield -1

    async with asyncio.timeout(TIMEOUT):
        result = await streams.gather_stream(
            streams.merge(endless.stream(), finite(), stop_on_first=True)
        )
    assert -1 in result
    assert endless.closed
    assert only_current_task()


@pytest.mark.asyncio
async def test_merge_stop_on_first_keeps_items_that_arrived_before_the_end() -> None:
    turns = Turns()
    a = turns.stream("a", [0, 2, 4])
    b = turns.stream("b", [1], end_turn=3)  # Ends after a1 arrived, before a2.
    result = []
    async with asyncio.timeout(TIMEOUT):
        async for item in streams.merge([a, b], stop_on_first=True):
            result.append(item)
            turns.advance()
    assert result == ["a0", "b0", "a1"]


@pytest.mark.asyncio
async def test_merge_without_stop_on_first_waits_for_all() -> None:
    result = await streams.gather_stream(streams.merge(items(1), items(2, 3, delay=0.01)))
    assert sorted(result) == [1, 2, 3]


@pytest.mark.asyncio
async def test_merge_error_reaches_consumer_promptly_with_original_type() -> None:
    endless = Tracked()
    with loop_errors() as errors:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ValueError, match="boom") as info:
                async for _ in streams.merge(endless.stream(), failing(error=ValueError("boom"))):
                    pass
        await settle()
    assert not isinstance(info.value, BaseExceptionGroup)
    assert errors == []
    assert endless.closed
    assert only_current_task()


@pytest.mark.asyncio
async def test_merge_keeps_later_failures_as_notes() -> None:
    async def fails_on_cancel() -> AsyncIterator[int]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise KeyError("cleanup failed") from None
        yield 0

    async def fails() -> AsyncIterator[int]:
        await asyncio.sleep(0.01)
        raise ValueError("first")
        yield 0

    with pytest.raises(ValueError, match="first") as info:
        await streams.gather_stream(streams.merge(fails_on_cancel(), fails()))
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1
    assert "KeyError: 'cleanup failed'" in notes[0]
    assert only_current_task()


@pytest.mark.asyncio
async def test_merge_input_raising_cancelled_error_does_not_hang() -> None:
    async def odd() -> AsyncIterator[int]:
        yield 1
        raise asyncio.CancelledError

    async def consume() -> list[int]:
        return await streams.gather_stream(streams.merge(odd(), streams.endless_stream()))

    task = asyncio.create_task(consume())
    await assert_cancelled(task)
    assert only_current_task()


@pytest.mark.asyncio
async def test_merge_break_with_aclosing_cancels_producers() -> None:
    sources = [Tracked(), Tracked()]
    async with contextlib.aclosing(streams.merge([s.stream() for s in sources])) as merged:
        async for item in merged:
            if item == 3:
                break
    assert only_current_task()
    assert all(s.closed for s in sources)


@pytest.mark.asyncio
async def test_merge_plain_break_is_cleaned_up_by_garbage_collection() -> None:
    sources = [Tracked(), Tracked()]
    with loop_errors() as errors:
        async for item in streams.merge([s.stream() for s in sources]):
            if item == 3:
                break
        await settle()
    assert errors == []
    assert only_current_task()
    assert all(s.closed for s in sources)


@pytest.mark.asyncio
async def test_merge_consumer_cancellation_cancels_producers() -> None:
    sources = [Tracked(), Tracked()]
    received = asyncio.Event()

    async def consume() -> None:
        async for _ in streams.merge([s.stream() for s in sources], queue_maxsize=2):
            received.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(received.wait(), TIMEOUT)
    task.cancel()
    await assert_cancelled(task)
    await settle()
    assert only_current_task()
    assert all(s.closed for s in sources)


@pytest.mark.asyncio
async def test_merge_cancelled_while_waiting_inside_the_stream() -> None:
    endless = Tracked()

    async def slow() -> AsyncIterator[int]:
        await asyncio.Event().wait()
        yield 0

    task = asyncio.create_task(streams.gather_stream(streams.merge(slow(), endless.stream())))
    await asyncio.sleep(0.01)
    task.cancel()
    await assert_cancelled(task)
    assert only_current_task()
    assert endless.closed


@pytest.mark.asyncio
async def test_merge_is_bounded_under_a_slow_consumer() -> None:
    sources = [Tracked(count=500), Tracked(count=500)]
    maxsize = 10
    consumed = 0
    async with asyncio.timeout(TIMEOUT):
        async for _ in streams.merge([s.stream() for s in sources], queue_maxsize=maxsize):
            consumed += 1
            for _ in range(3):
                await asyncio.sleep(0)
            produced = sum(s.produced for s in sources)
            # Each producer may hold one item while it waits for room.
            assert produced - consumed <= maxsize + len(sources)
    assert consumed == 1000


@pytest.mark.asyncio
async def test_merge_bounded_queue_with_cancellation_does_not_deadlock() -> None:
    sources = [Tracked(), Tracked(), Tracked()]
    merged = streams.merge([s.stream() for s in sources], queue_maxsize=1)
    await anext(merged)
    await asyncio.sleep(0.01)  # Every producer is now blocked on the full buffer.
    async with asyncio.timeout(TIMEOUT):
        await merged.aclose()
    assert only_current_task()
    assert all(s.closed for s in sources)


@pytest.mark.asyncio
async def test_merge_unbounded() -> None:
    result = await streams.gather_stream(streams.merge(items(*range(1000)), queue_maxsize=0))
    assert result == list(range(1000))


# --- split -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_split_gives_each_output_every_item() -> None:
    s1, s2 = streams.split(items(1, 2, 3))
    results = await asyncio.gather(streams.gather_stream(s1), streams.gather_stream(s2))
    assert list(results) == [[1, 2, 3], [1, 2, 3]]


@pytest.mark.asyncio
async def test_split_outputs_can_be_read_one_after_the_other() -> None:
    s1, s2, s3 = streams.split(items(*range(10)), n=3)
    assert await streams.gather_stream(s1) == list(range(10))
    assert await streams.gather_stream(s3) == list(range(10))
    assert await streams.gather_stream(s2) == list(range(10))


@pytest.mark.asyncio
async def test_split_n_1_and_empty_source() -> None:
    (only,) = streams.split(items("x"), n=1)
    assert await streams.gather_stream(only) == ["x"]
    s1, s2 = streams.split(items())
    assert await streams.gather_stream(s1) == []
    assert await streams.gather_stream(s2) == []


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        streams.split(items(), n=0)
    with pytest.raises(TypeError):
        streams.split([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        streams.split(items(), queue_maxsize=-1)


@pytest.mark.asyncio
async def test_split_without_copy_shares_items() -> None:
    s1, s2 = streams.split(items({"k": 1}))
    [a], [b] = await asyncio.gather(streams.gather_stream(s1), streams.gather_stream(s2))
    assert a is b


@pytest.mark.asyncio
async def test_split_with_copy_isolates_outputs() -> None:
    original = {"k": [1]}
    s1, s2, s3 = streams.split(items(original), n=3, with_copy=True)
    [a] = await streams.gather_stream(s1)
    a["k"].append(2)
    [b], [c] = await asyncio.gather(streams.gather_stream(s2), streams.gather_stream(s3))
    assert b == {"k": [1]} and c == {"k": [1]}
    assert original == {"k": [1]}
    assert b is not c


@pytest.mark.asyncio
async def test_split_is_lazy() -> None:
    source = Tracked(count=3)
    s1, s2 = streams.split(source.stream())
    await settle()
    assert not source.started
    assert only_current_task()
    assert await streams.gather_stream(s1) == [0, 1, 2]
    assert source.started
    assert await streams.gather_stream(s2) == [0, 1, 2]


@pytest.mark.asyncio
async def test_split_error_reaches_every_output_after_its_items() -> None:
    s1, s2 = streams.split(failing(1, 2, error=ValueError("src")))
    for output in (s1, s2):
        received = []
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ValueError, match="src"):
                async for item in output:
                    received.append(item)
        assert received == [1, 2]
    assert only_current_task()


@pytest.mark.asyncio
async def test_split_fastest_output_is_bounded_by_the_slowest() -> None:
    source = Tracked(count=100)
    maxsize = 5
    s1, s2 = streams.split(source.stream(), queue_maxsize=maxsize)
    got1: list[int] = []

    async def read_all_of_s1() -> None:
        async for item in s1:
            got1.append(item)

    async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tg:
        tg.create_task(read_all_of_s1())
        await asyncio.sleep(0.05)
        # s2 is not read: s1 can only get ahead by its buffer size.
        assert len(got1) <= maxsize + 1
        assert source.produced <= maxsize + 2
        got2 = await streams.gather_stream(s2)
    assert got1 == got2 == list(range(100))


@pytest.mark.asyncio
async def test_split_closed_output_does_not_hold_back_the_others() -> None:
    s1, s2 = streams.split(items(*range(100)), queue_maxsize=3)
    assert await anext(s2) == 0
    await s2.aclose()
    async with asyncio.timeout(TIMEOUT):
        assert await streams.gather_stream(s1) == list(range(100))


@pytest.mark.asyncio
async def test_split_collected_output_does_not_hold_back_the_others() -> None:
    s1, s2 = streams.split(items(*range(100)), queue_maxsize=3)
    del s2
    gc.collect()
    async with asyncio.timeout(TIMEOUT):
        assert await streams.gather_stream(s1) == list(range(100))


@pytest.mark.asyncio
async def test_split_closing_every_output_closes_the_source() -> None:
    source = Tracked()
    s1, s2 = streams.split(source.stream(), queue_maxsize=4)
    assert await anext(s1) == 0
    assert await anext(s2) == 0
    await s1.aclose()
    assert not source.closed
    await s2.aclose()
    assert source.closed
    assert only_current_task()


@pytest.mark.asyncio
async def test_split_consumer_cancellation() -> None:
    source = Tracked()
    (only,) = streams.split(source.stream(), n=1, queue_maxsize=2)
    task = asyncio.create_task(streams.gather_stream(only))
    await asyncio.sleep(0.01)
    task.cancel()
    await assert_cancelled(task)
    assert source.closed
    assert only_current_task()


# --- no warnings outside pytest's control ------------------------------------

_LEAK_SCRIPT = """
import asyncio, gc
from erlpy import streams

async def count():
    i = 0
    while True:
        yield i
        i += 1
        await asyncio.sleep(0)

async def boom():
    yield 0
    raise ValueError("boom")

async def main():
    async for _ in streams.merge(count(), count()):
        break
    async for _ in streams.concat(count(), count()):
        break
    s1, s2 = streams.split(count())
    async for _ in s1:
        break
    del s1, s2
    try:
        async for _ in streams.merge(boom(), streams.endless_stream()):
            pass
    except ValueError:
        pass
    # Left running on purpose: asyncio.run must clean these up quietly.
    leftover = streams.merge(count(), count())
    await anext(leftover)
    gc.collect()
    await asyncio.sleep(0.01)

asyncio.run(main())
print("ok")
"""


def test_plain_break_and_leftovers_log_nothing() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(_LEAK_SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert proc.stderr == ""

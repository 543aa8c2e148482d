"""The runtime's parts on their own, without a worker process: typed messages, the one
terminal message per job, and async jobs that are cancelled."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fake_erlang import Pipe

from erlpy import _protocol as P
from erlpy._codec import Atom
from erlpy._handoff import Handoff
from erlpy._jobs import CANCELLED, Job, Jobs
from erlpy._messages import Call, Cancel, Credit, Setup, StreamCall, decode
from erlpy._process import ProcessState
from erlpy._stream import Stream
from erlpy._tasks import Tasks, start_eagerly


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.close()


def test_messages_decode_by_kind() -> None:
    assert decode([P.CALL, 7, "m", "f", [1], {}]) == Call(7, "m", "f", [1], {})
    assert decode([P.STREAM_CALL, 7, "m", "f", [], {}, 0, True]) == StreamCall(
        7, "m", "f", [], {}, 0, True
    )
    assert decode([P.CANCEL, 7]) == Cancel(7)
    assert decode([P.CREDIT, 7, 32]) == Credit(7, 32)
    assert decode([P.SETUP, 1, None, {}]) == Setup(1, None, {})
    assert decode([P.CALL, 7, "m", "f", [1], {}, None, "more"]) == Call(7, "m", "f", [1], {})
    assert decode([42, 7]) is None
    with pytest.raises(IndexError):
        decode([P.CALL, 7])


def test_a_job_gets_one_terminal_message(pipe: Pipe) -> None:
    jobs = Jobs(pipe.writer, ProcessState())
    job = Job(3, None)
    jobs.table[3] = job
    jobs.finish(job, P.FAIL, CANCELLED)
    jobs.finish(job, P.RESULT, "late")
    jobs.finish(job, P.ERROR, ValueError("late"))
    jobs.finish(job, P.DONE)
    assert pipe.messages() == [[P.FAIL, 3, Atom("cancelled")]]
    assert jobs.table == {}


def test_a_result_that_cannot_travel_is_an_error(pipe: Pipe) -> None:
    jobs = Jobs(pipe.writer, ProcessState())
    jobs.finish(Job(4, None), P.RESULT, object())
    [[kind, job_id, type_name, *_]] = pipe.messages()
    assert (kind, job_id, type_name) == (P.ERROR, 4, "erlpy.EncodeError")


def _tasks(pipe: Pipe) -> tuple[asyncio.AbstractEventLoop, Jobs, Tasks]:
    loop = asyncio.new_event_loop()
    jobs = Jobs(pipe.writer, ProcessState())
    return loop, jobs, Tasks(loop, jobs, ProcessState())


def test_a_cancelled_async_call_is_answered_then_ends_cancelled(pipe: Pipe) -> None:
    loop, _, tasks = _tasks(pipe)
    job = Job(5, None)
    try:
        tasks.start_awaitable(job, asyncio.sleep(30))
        loop.run_until_complete(asyncio.sleep(0))
        assert job.task is not None
        job.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(job.task)
        assert job.task.cancelled()  # the CancelledError went on up, once answered
        assert pipe.messages() == [[P.FAIL, 5, Atom("cancelled")]]
    finally:
        loop.close()


def test_a_cancelled_async_stream_closes_its_generator_first(pipe: Pipe) -> None:
    loop, _, tasks = _tasks(pipe)
    job = Job(6, None)
    job.stream = Stream(loop, pipe.writer, 6, credit=10, resume=lambda: None)
    closed = []

    async def numbers() -> Any:
        try:
            for i in range(3):
                yield i
            await asyncio.sleep(30)
        finally:
            closed.append(pipe.messages())  # what Erlang had heard when it closed

    try:
        tasks.start_stream(job, numbers())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert job.task is not None
        job.stream.cancel()
        job.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(job.task)
        assert job.task.cancelled()
        assert [m[0] for m in closed[0]] == [P.DATA, P.DATA]  # no terminal message yet
        assert pipe.messages() == [[P.FAIL, 6, Atom("cancelled")]]
    finally:
        loop.close()


def test_an_async_job_cancelled_before_it_ran_is_answered(pipe: Pipe) -> None:
    loop, _, tasks = _tasks(pipe)
    job = Job(7, None)
    job.cancelled = True  # while a sync call handed its coroutine over to the loop
    try:
        tasks.start_awaitable(job, loop.create_future())
        assert job.task is None
        assert pipe.messages() == [[P.FAIL, 7, Atom("cancelled")]]
    finally:
        loop.close()


def test_an_async_call_that_does_not_wait_answers_before_the_loop_turns() -> None:
    # Its first step runs as the call is dispatched, inside its own task (so
    # current_task() and asyncio.timeout work there); one that waits goes on later.
    loop = asyncio.new_event_loop()
    seen: list[Any] = []

    async def quick() -> None:
        seen.append(("quick", asyncio.current_task()))

    async def waits() -> None:
        seen.append("waits: first step")
        await asyncio.sleep(0)
        seen.append("waits: second step")

    def dispatch() -> None:
        task = start_eagerly(loop, quick())
        seen.append(("done at once", task.done(), seen[0][1] is task))
        start_eagerly(loop, waits())
        seen.append("dispatched")

    try:
        loop.call_soon(dispatch)
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    assert seen[1:] == [
        ("done at once", True, True),
        "waits: first step",
        "dispatched",
        "waits: second step",
    ]


@pytest.mark.parametrize("eventfd", [True, False], ids=["eventfd", "pipe"])
def test_the_main_threads_queue_wakes_it_for_work_and_for_the_pipe(
    monkeypatch: pytest.MonkeyPatch, eventfd: bool
) -> None:
    if not eventfd:  # as where there is no eventfd (not Linux): a pipe wakes the taker
        for name in ("eventfd", "eventfd_read", "eventfd_write"):
            monkeypatch.delattr(os, name, raising=False)
    handoff: Handoff[int] = Handoff()
    got: list[int] = []

    def take() -> None:
        got.extend(handoff.get() for _ in range(50))

    taker = threading.Thread(target=take)
    taker.start()
    for i in range(50):
        if i % 10 == 0:
            time.sleep(0.01)  # the taker is asleep by now: this put must wake it
        handoff.put(i)
    taker.join(5)
    assert got == list(range(50))
    r, w = os.pipe()
    try:
        threading.Timer(0.05, os.write, (w, b"x")).start()
        assert handoff.wait(r, 0.001) is True  # the pipe became readable
        threading.Timer(0.05, handoff.put, (7,)).start()
        rr, ww = os.pipe()
        assert handoff.wait(rr, 0.001) is False  # an item came, the other fd is quiet
        assert handoff.get() == 7
        os.close(rr)
        os.close(ww)
    finally:
        os.close(r)
        os.close(w)

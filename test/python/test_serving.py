"""erlpy.batched, erlpy.time_left and erlpy.deadline on their own, and the worker's
batcher without a worker process: the decorator, deadlines from the wire, batches that
form, answer each caller, drop callers that give up (the end-to-end cases over real
workers are in test/erlang/erlpy_serving_SUITE.erl)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
from fake_erlang import Pipe

import erlpy
from erlpy import _protocol as P
from erlpy._batch import Batcher
from erlpy._codec import Atom
from erlpy._deadline import DEADLINE, from_timeout
from erlpy._jobs import Job, Jobs
from erlpy._messages import Call, Eval, Exec, StreamCall, StreamEval, decode
from erlpy._names import Resolver
from erlpy._process import ProcessState
from erlpy._sync import SyncRunner
from erlpy._tasks import Tasks

# ---------------------------------------------------------------------------- decorator


def test_batched_called_from_python_is_a_batch_of_one() -> None:
    seen = []

    @erlpy.batched(max_size=4, max_wait=0.01)
    def double(items: list[int]) -> list[int]:
        """Doubles."""
        seen.append(items)
        return [2 * x for x in items]

    assert double(21) == 42
    assert seen == [[21]]
    assert double.__name__ == "double" and double.__doc__ == "Doubles."
    assert (double.max_size, double.max_wait) == (4, 0.01)
    assert "erlpy.batched" in repr(double)


def test_batched_without_arguments_has_defaults() -> None:
    @erlpy.batched
    def ident(items: list[Any]) -> list[Any]:
        return items

    assert ident("x") == "x"
    assert ident.max_size >= 1 and ident.max_wait >= 0


def test_an_exception_instance_result_is_raised_for_its_item() -> None:
    @erlpy.batched(max_size=2)
    def check(items: list[int]) -> list[Any]:
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    assert check(1) == 1
    with pytest.raises(ValueError, match="bad -1"):
        check(-1)


def test_a_wrong_number_of_results_is_a_type_error() -> None:
    @erlpy.batched(max_size=2)
    def nothing(items: list[int]) -> list[int]:
        return []

    with pytest.raises(TypeError, match="0 results for 1 items"):
        nothing(1)

    @erlpy.batched(max_size=2)
    def not_a_list(items: list[int]) -> int:
        return 3

    with pytest.raises(TypeError, match="must return a list"):
        not_a_list(1)


def test_async_batched_called_from_python() -> None:
    @erlpy.batched(max_size=3)
    async def double(items: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return [2 * x for x in items]

    assert asyncio.run(double(4)) == 8


@pytest.mark.parametrize(
    "options",
    [
        {"max_size": 0},
        {"max_size": 1.5},
        {"max_size": True},
        {"max_wait": -1},
        {"max_wait": "1"},
        {"max_wait": float("inf")},  # a lone call waited until its caller's timeout
        {"max_wait": float("nan")},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        erlpy.batched(**options)


def test_batched_needs_a_callable() -> None:
    with pytest.raises(TypeError):
        erlpy.batched(42)


# ---------------------------------------------------------------------------- deadlines


def test_time_left_outside_a_request_is_none() -> None:
    assert erlpy.time_left() is None
    assert erlpy.deadline() is None


def test_time_left_counts_down_to_zero() -> None:
    token = DEADLINE.set(time.monotonic() + 10)
    try:
        left = erlpy.time_left()
        assert left is not None and 9 < left <= 10
        deadline = erlpy.deadline()
        assert deadline is not None and abs(deadline - (time.monotonic() + left)) < 0.01
    finally:
        DEADLINE.reset(token)
    token = DEADLINE.set(time.monotonic() - 1)
    try:
        assert erlpy.time_left() == 0.0
    finally:
        DEADLINE.reset(token)


def test_a_copied_context_carries_the_deadline() -> None:
    token = DEADLINE.set(time.monotonic() + 5)
    try:
        ctx = contextvars.copy_context()
    finally:
        DEADLINE.reset(token)
    left = ctx.run(erlpy.time_left)
    assert left is not None and 4 < left <= 5


def test_from_timeout() -> None:
    before = time.monotonic()
    deadline = from_timeout(1500)
    assert deadline is not None and before + 1.5 <= deadline <= time.monotonic() + 1.5
    assert from_timeout(None) is None
    assert from_timeout(Atom("infinity")) is None


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ([P.CALL, 1, "m", "f", [], {}, 2000], Call),
        ([P.CALL_REF, 1, "m", "f", [], {}, 2000], Call),
        ([P.EVAL, 1, "1", {}, 2000], Eval),
        ([P.EVAL_REF, 1, "1", {}, 2000], Eval),
        ([P.EVAL_IN, 1, "1", {}, None, False, 2000], Eval),
        ([P.EXEC, 1, "pass", 2000], Exec),
        ([P.EXEC_IN, 1, "pass", None, 2000], Exec),
        ([P.STREAM_CALL, 1, "m", "f", [], {}, 0, False, 2000], StreamCall),
        ([P.STREAM_EVAL, 1, "x", {}, 0, 2000], StreamEval),
        ([P.STREAM_EVAL_IN, 1, "x", {}, 0, None, 2000], StreamEval),
    ],
)
def test_every_request_takes_a_timeout_as_its_last_field(message: list[Any], kind: type) -> None:
    requests = (Call, Eval, Exec, StreamCall, StreamEval)
    decoded = decode(message)
    assert isinstance(decoded, kind) and isinstance(decoded, requests)
    assert decoded.deadline is not None
    assert 1.9 < decoded.deadline - time.monotonic() <= 2.0
    for other in (message[:-1], [*message[:-1], None]):  # no timeout field, or nil
        without = decode(other)
        assert isinstance(without, requests) and without.deadline is None


# ---------------------------------------------------------------------------- the batcher


class Worker:
    """The parts of a worker a batcher needs, driven by the test: the loop runs when the
    test runs it, and the test's thread is the main thread."""

    def __init__(self) -> None:
        self.pipe = Pipe()
        self.loop = asyncio.new_event_loop()
        process = ProcessState()
        self.jobs = Jobs(self.pipe.writer, process)
        tasks = Tasks(self.loop, self.jobs, process)
        main = types.ModuleType("__main__")
        self.sync = SyncRunner(
            self.loop, self.pipe.writer, self.jobs, tasks, Resolver(main), main, process
        )
        self.batcher = Batcher(self.loop, self.jobs, self.sync, tasks)
        self.ids = iter(range(1, 1000))

    def call(self, fn: Any, item: Any, timeout_ms: int | None = None) -> Job:
        request = Call(next(self.ids), "mod", fn.__name__, [item], {})
        job = Job(request.id, request, from_timeout(timeout_ms))
        self.jobs.table[job.id] = job
        self.batcher.add(job, fn, request)
        return job

    def run_loop(self, seconds: float = 0.0) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def run_main(self) -> int:
        """Run what waits for the main thread; how many jobs ran."""
        ran = 0
        while not self.sync._queue.empty():
            item = self.sync._queue.get()
            if type(item) is Job:
                self.sync._run(item)
                ran += 1
        return ran

    def answers(self) -> dict[int, list[Any]]:
        return {m[1]: m for m in self.pipe.messages() if m[0] != P.BATCHED}

    def close(self) -> None:
        self.loop.close()
        os.close(self.pipe.r)
        os.close(self.pipe.writer.fd)


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.close()


def test_an_async_batch_forms_when_full_and_answers_each_caller(worker: Worker) -> None:
    batches = []

    @erlpy.batched(max_size=3, max_wait=60)
    async def double(items: list[int]) -> list[int]:
        batches.append(items)
        return [2 * x for x in items]

    jobs = [worker.call(double, x) for x in (1, 2, 3, 4)]
    worker.run_loop(0.01)
    assert batches == [[1, 2, 3]]  # the fourth waits for company (max_wait 60 s)
    messages = worker.pipe.messages()
    assert [P.BATCHED, "mod", "double", 3] in messages  # told once
    assert sorted(m[1:] for m in messages if m[0] == P.RESULT) == [[1, 2], [2, 4], [3, 6]]
    assert not jobs[3].answered


def test_a_sync_batch_runs_on_the_main_thread_one_at_a_time(worker: Worker) -> None:
    batches = []

    @erlpy.batched(max_size=2, max_wait=0)
    def double(items: list[int]) -> list[int]:
        batches.append(items)
        return [2 * x for x in items]

    for x in (1, 2, 3):
        worker.call(double, x)
    worker.run_loop(0.01)
    assert worker.run_main() == 1  # [1, 2]; [3] waits until that batch has ended
    worker.call(double, 4)
    worker.run_loop(0.01)  # the end of the first batch reaches the loop: [3, 4] starts
    assert worker.run_main() == 1
    worker.run_loop(0.01)
    assert batches == [[1, 2], [3, 4]]
    assert {i: m[2] for i, m in worker.answers().items()} == {1: 2, 2: 4, 3: 6, 4: 8}


def test_max_wait_starts_a_batch_that_is_not_full(worker: Worker) -> None:
    @erlpy.batched(max_size=10, max_wait=0.05)
    async def ident(items: list[int]) -> list[int]:
        return items

    worker.call(ident, 7)
    worker.run_loop(0.0)
    assert worker.answers() == {}
    worker.run_loop(0.2)
    assert worker.answers() == {1: [P.RESULT, 1, 7]}


def test_exceptions_raised_and_returned(worker: Worker) -> None:
    @erlpy.batched(max_size=2, max_wait=60)
    async def raises(items: list[int]) -> list[int]:
        raise KeyError("all of them")

    @erlpy.batched(max_size=2, max_wait=60)
    async def returns(items: list[int]) -> list[Any]:
        return [ValueError("mine") if x == 0 else x for x in items]

    for x in (1, 2):
        worker.call(raises, x)
    for x in (0, 3):
        worker.call(returns, x)
    worker.run_loop(0.01)
    answers = worker.answers()
    assert [answers[i][:3] for i in (1, 2)] == [[P.ERROR, 1, "KeyError"], [P.ERROR, 2, "KeyError"]]
    assert answers[3][:4] == [P.ERROR, 3, "ValueError", "mine"]
    assert answers[4] == [P.RESULT, 4, 3]


def test_a_cancelled_caller_leaves_the_queue(worker: Worker) -> None:
    @erlpy.batched(max_size=2, max_wait=60)
    async def ident(items: list[int]) -> list[int]:
        return items

    gone = worker.call(ident, 1)
    assert worker.batcher.cancel(gone) is None
    worker.call(ident, 2)
    worker.run_loop(0.01)
    assert worker.answers() == {1: [P.FAIL, 1, Atom("cancelled")]}  # 2 waits for company
    worker.call(ident, 3)
    worker.run_loop(0.01)
    assert worker.answers() == {2: [P.RESULT, 2, 2], 3: [P.RESULT, 3, 3]}


def test_a_running_batch_is_stopped_once_no_caller_is_left(worker: Worker) -> None:
    started = asyncio.Event()

    @erlpy.batched(max_size=2, max_wait=60)
    async def slow(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(60)
        return items

    first, second = worker.call(slow, 1), worker.call(slow, 2)
    worker.loop.run_until_complete(started.wait())
    assert worker.batcher.cancel(first) is None  # one caller is left: the batch goes on
    batch_job = worker.batcher.cancel(second)
    assert batch_job is not None and batch_job.task is not None
    cancelled = Atom("cancelled")
    assert worker.answers() == {1: [P.FAIL, 1, cancelled], 2: [P.FAIL, 2, cancelled]}
    batch_job.task.cancel()
    worker.run_loop(0.01)
    assert batch_job.task.cancelled()
    assert worker.answers() == {}  # nothing more: the batch's own job never answers


def test_a_call_past_its_deadline_does_not_join_its_batch(worker: Worker) -> None:
    batches = []

    @erlpy.batched(max_size=2, max_wait=60)
    async def ident(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    worker.call(ident, 1, timeout_ms=0)
    worker.call(ident, 2, timeout_ms=60000)  # the batch is full: it forms, without 1
    worker.run_loop(0.01)
    assert worker.answers() == {1: [P.FAIL, 1, Atom("timeout")], 2: [P.RESULT, 2, 2]}
    assert batches == [[2]]


def test_a_batch_sees_its_latest_callers_deadline(worker: Worker) -> None:
    seen = []

    @erlpy.batched(max_size=2, max_wait=60)
    def left(items: list[int]) -> list[int]:
        seen.append(erlpy.time_left())
        return items

    worker.call(left, 1, timeout_ms=5000)
    worker.call(left, 2, timeout_ms=60000)
    worker.run_loop(0.01)
    worker.run_main()
    assert seen[0] is not None and 59 < seen[0] <= 60
    assert erlpy.time_left() is None  # set for the batch only


def test_calls_with_other_than_one_item_are_refused(worker: Worker) -> None:
    @erlpy.batched(max_size=2, max_wait=0)
    async def ident(items: list[int]) -> list[int]:
        return items

    request = Call(50, "mod", "ident", [1, 2], {})
    job = Job(50, request)
    worker.batcher.add(job, ident, request)
    [message] = [m for m in worker.pipe.messages() if m[0] == P.ERROR]
    assert message[:3] == [P.ERROR, 50, "TypeError"]

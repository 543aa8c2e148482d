"""Requests through a real worker (``real_worker``): every request is answered, whichever of
Python's two threads reads it from the pipe and whichever runs it."""

from __future__ import annotations

import time

from real_worker import Worker

from erlpy import _protocol as P


def test_an_async_call_read_with_a_sync_one_is_answered(worker: Worker) -> None:
    # A sync call and an async call in one read of the pipe by the main thread: the async
    # one is handed to the loop thread. The main thread answered the sync call and took the
    # pipe back before the loop thread got to it, which then waited for the next request
    # (most of the rounds, before the fix; erlpy: until the caller's timeout).
    worker.exec("def s():\n    return 's'\n\nasync def a():\n    return 'a'\n")
    for _ in range(100):
        sync, async_ = worker.next_id(), worker.next_id()
        worker.send_frames(
            [[P.CALL, sync, "__main__", "s", [], {}], [P.CALL, async_, "__main__", "a", [], {}]]
        )
        assert worker.answer(sync, timeout=2.0) == [P.RESULT, sync, "s"]
        assert worker.answer(async_, timeout=2.0) == [P.RESULT, async_, "a"]


def test_a_cancel_read_with_a_sync_call_is_acted_on(worker: Worker) -> None:
    # The same hand-over with a cancel in it: left waiting, it was never acted on, and
    # Erlang killed a healthy worker at the end of cancel_grace.
    worker.exec(
        "import asyncio\n\ndef s():\n    return 's'\n\n"
        "async def slow():\n    await asyncio.sleep(30)\n"
    )
    for _ in range(50):
        slow = worker.call("slow")
        assert worker.run("s") == "s"  # the main thread reads the pipe again after this
        sync = worker.next_id()
        worker.send_frames([[P.CALL, sync, "__main__", "s", [], {}], [P.CANCEL, slow]])
        assert worker.answer(sync, timeout=2.0) == [P.RESULT, sync, "s"]
        assert worker.answer(slow, timeout=2.0)[:2] == [P.FAIL, slow]


def test_a_quick_reply_does_not_wait_for_a_long_call_behind_it(worker: Worker) -> None:
    # Replies of requests read together are held and written with the next ones; held
    # behind a call that keeps the GIL in C (a regex), a quick call's reply waited for
    # the whole of it, since the timer that bounds holding needs the GIL to write.
    worker.exec(
        "import re\n\ndef quick():\n    return 1\n\n"
        "def long_in_c():\n    return bool(re.match('(a*)*b', 'a' * 25))\n"
    )
    assert worker.run("quick") == 1  # its duration is known from now on
    for _ in range(2):
        quick, long_ = worker.next_id(), worker.next_id()
        worker.send_frame(
            [
                [P.CALL, quick, "__main__", "quick", [], {}],
                [P.CALL, long_, "__main__", "long_in_c", [], {}],
            ]
        )
        start = time.monotonic()
        assert worker.answer(quick) == [P.RESULT, quick, 1]
        replied = time.monotonic() - start
        assert worker.answer(long_, timeout=30) == [P.RESULT, long_, False]
        took = time.monotonic() - start
        assert replied < took / 4, (replied, took)


def test_a_call_taken_for_quick_that_runs_long_is_still_cancelled(worker: Worker) -> None:
    # Through a burst of quick calls the main thread keeps reading the pipe itself, and
    # the loop thread sleeps. A call of a function that was quick last time and now runs
    # on must give the pipe back (the held replies' timer does), or its cancel is never
    # read and Erlang kills the worker at the end of cancel_grace.
    worker.exec("def f(spin):\n    while spin:\n        pass\n    return 'f'\n")
    assert worker.run("f", False) == "f"  # quick from now on
    for _ in range(3):
        first, long_, last = worker.next_id(), worker.next_id(), worker.next_id()
        worker.send_frame(
            [
                [P.CALL, first, "__main__", "f", [False], {}],
                [P.CALL, long_, "__main__", "f", [True], {}],
                [P.CALL, last, "__main__", "f", [False], {}],
            ]
        )
        assert worker.answer(first) == [P.RESULT, first, "f"]
        worker.send_raw([P.CANCEL, long_])
        assert worker.answer(long_, timeout=2.0) == [P.FAIL, long_, "cancelled"]
        assert worker.answer(last) == [P.RESULT, last, "f"]
        assert worker.run("f", False) == "f"  # quick again


def test_a_quick_function_that_calls_erlang_in_a_burst_gets_its_reply(worker: Worker) -> None:
    # The reply to erlang.call is read by the loop thread: a function taken for quick, in a
    # burst the main thread reads itself, must give it the pipe before it waits.
    worker.exec("def h(back):\n    return erlang.call('cb') if back else 'h'\n")
    assert worker.run("h", False) == "h"
    first, back, last = worker.next_id(), worker.next_id(), worker.next_id()
    worker.send_frame(
        [
            [P.CALL, first, "__main__", "h", [False], {}],
            [P.CALL, back, "__main__", "h", [True], {}],
            [P.CALL, last, "__main__", "h", [False], {}],
        ]
    )
    callback = worker.receive(lambda m: m[0] == P.CALLBACK)
    worker.send_raw([P.REPLY, callback[1], True, "from erlang"])
    assert worker.answer(back, timeout=2.0) == [P.RESULT, back, "from erlang"]
    assert worker.answer(first) == [P.RESULT, first, "h"]
    assert worker.answer(last) == [P.RESULT, last, "h"]

"""Isolation of a worker process from the user code it runs: forks, fds, threads that die,
processes left behind. Each test drives a real runtime (``_boot.py``) over real pipes,
the way erlpy_worker does: Erlang -> Python on fd 3, Python -> Erlang on fd 4."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from real_worker import TIMEOUT, Worker, alive, proc_stat, wait_until

from erlpy import _protocol as P
from erlpy._codec import pack


def dedent(code: str) -> str:
    return textwrap.dedent(code).strip() + "\n"


# --- forks -------------------------------------------------------------------------

FORKS = dedent(
    """
    import os, sys

    def child_returns(): return "child"
    def child_exits_0(): sys.exit(0)
    def child_exits_3(): sys.exit(3)
    def child_exits_text(): sys.exit("bye from the child")
    def child_raises(): raise ValueError("boom in the child")

    def fork_and_wait(child):
        pid = os.fork()
        if pid == 0:
            return globals()[child]()
        return ["parent", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])]

    async def afork_and_wait(child):
        pid = os.fork()
        if pid == 0:
            return globals()[child]()
        return ["parent", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])]
    """
)


def test_a_forked_child_never_answers(worker: Worker) -> None:
    worker.exec(FORKS)
    for _ in range(20):
        assert worker.run("fork_and_wait", "child_returns") == ["parent", 0]
    assert worker.drain() == []


@pytest.mark.parametrize("function", ["fork_and_wait", "afork_and_wait"])
def test_a_forked_child_exits_as_the_interpreter_would(worker: Worker, function: str) -> None:
    worker.exec(FORKS)
    assert worker.run(function, "child_returns") == ["parent", 0]
    assert worker.run(function, "child_exits_0") == ["parent", 0]
    assert worker.run(function, "child_exits_3") == ["parent", 3]
    assert worker.run(function, "child_exits_text") == ["parent", 1]
    assert worker.run(function, "child_raises") == ["parent", 1]
    assert worker.drain() == []
    # The children wrote to the real fd 2, not through the parent's protocol.
    assert "bye from the child" in worker.stderr()
    assert "ValueError: boom in the child" in worker.stderr()


def test_a_forked_child_is_no_worker(worker: Worker) -> None:
    worker.exec(
        dedent(
            """
            import logging, os, sys
            def child_state():
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    try:
                        erlang.call("anything")
                    except RuntimeError as exc:
                        text = str(exc)
                    state = [text, sys.stdout is sys.__stdout__, len(logging.getLogger().handlers)]
                    os.write(w, repr(state).encode())
                    os._exit(0)
                os.close(w)
                os.waitpid(pid, 0)
                with os.fdopen(r) as f:
                    return f.read()
            """
        )
    )
    assert worker.run("child_state") == repr(["not running inside an erlpy worker", True, 0])
    assert worker.drain() == []


def test_a_child_forked_by_async_code_leaves_the_parent_loop_alone(worker: Worker) -> None:
    # The epoll instance of the inherited event loop is shared with the parent: a child
    # that stops watching an fd it inherited must not stop the parent watching it.
    worker.exec(
        dedent(
            """
            import os, socket
            received = []

            async def watch():
                global pair
                pair = socket.socketpair()
                on_data = lambda: received.append(pair[0].recv(100))
                asyncio.get_running_loop().add_reader(pair[0], on_data)

            async def afork_and_unwatch():
                loop = asyncio.get_running_loop()
                pid = os.fork()
                if pid == 0:
                    loop.remove_reader(pair[0])  # as closing an inherited transport does
                    return
                return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

            async def poke():
                pair[1].send(b"x")
                for _ in range(200):
                    if received:
                        break
                    await asyncio.sleep(0.01)
                return received
            """
        )
    )
    worker.run("watch")
    assert worker.run("afork_and_unwatch") == 0
    assert worker.run("poke") == [b"x"]
    assert worker.drain() == []


def test_multiprocessing_with_fork_works(worker: Worker) -> None:
    worker.exec(
        dedent(
            """
            import multiprocessing
            def pool_map():
                with multiprocessing.get_context("fork").Pool(2) as pool:
                    return pool.map(abs, [-1, -2, -3])
            def process_exitcode():
                process = multiprocessing.get_context("fork").Process(target=sum, args=([],))
                process.start()
                process.join()
                return process.exitcode
            """
        )
    )
    assert worker.run("pool_map") == [1, 2, 3]
    assert worker.run("process_exitcode") == 0
    assert worker.drain() == []


# --- fds ---------------------------------------------------------------------------


def test_user_code_cannot_touch_the_protocol_through_fds_3_and_4(worker: Worker) -> None:
    assert os.readlink(f"/proc/{worker.pid}/fd/3") == "/dev/null"
    assert os.readlink(f"/proc/{worker.pid}/fd/4") == "/dev/null"
    protocol = worker.holds_protocol(worker.pid)
    assert len(protocol) == 2 and all(int(fd) >= 10 for fd in protocol)
    for fd in protocol:
        with open(f"/proc/{worker.pid}/fdinfo/{fd}") as info:
            flags = next(line for line in info if line.startswith("flags:"))
        assert int(flags.split()[1], 8) & os.O_CLOEXEC
    worker.exec("import os\nos.close(3)\n")
    worker.exec("os.write(4, b'\\x7f\\xff\\xff\\xff')\n")  # a 2 GiB frame header
    worker.exec("def ok(): return 'still serving'\n")
    assert worker.run("ok") == "still serving"


def test_exec_children_do_not_inherit_the_protocol(worker: Worker) -> None:
    worker.exec(
        dedent(
            """
            import os, subprocess
            def start_sleepers():
                os.system("sleep 30 &")
                return subprocess.Popen(["sleep", "31"], close_fds=False).pid
            """
        )
    )
    worker.run("start_sleepers")
    assert wait_until(lambda: sum(c == "sleep" for _, c in worker.group().values()) == 2)
    for pid, (_, name) in worker.group().items():
        if name == "sleep":
            assert worker.holds_protocol(pid) == []


def test_a_lost_protocol_fd_exits_non_zero(worker: Worker) -> None:
    worker.exec("import os\nfrom erlpy._runtime import current\n")
    worker.exec("def close_in(): os.close(current().fd_in)\n")
    worker.run("close_in")
    worker.call("close_in")  # makes the pipe readable: the read fails with EBADF
    assert worker.proc.wait(TIMEOUT) == 70
    assert "cannot read from Erlang" in worker.stderr()


# --- the supervisor ----------------------------------------------------------------

SLEEPER = "import subprocess\ndef sleeper(): return subprocess.Popen(['sleep', '300']).pid\n"
# Processes that leave the worker's process group: a new session, and a daemon that
# double-forks (its parent exits at once, so it is nobody's child).
ESCAPERS = dedent(
    """
    import os, subprocess
    def session():
        return subprocess.Popen(['sleep', '300'], start_new_session=True).pid
    def daemon():
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            pid = os.fork()
            if pid == 0:
                os.execvp('sleep', ['sleep', '300'])
            os.write(w, str(pid).encode())
            os._exit(0)
        os.close(w)
        pid = int(os.read(r, 32))
        os.close(r)
        os.wait()
        return pid
    """
)


def _escapers(worker: Worker) -> list[int]:
    worker.exec(ESCAPERS)
    pids = [worker.run("session"), worker.run("daemon")]
    for pid in pids:
        assert alive(pid)
        assert os.getpgid(pid) not in (worker.pid, worker.supervisor)  # they left the group
    return pids


def test_the_supervisor_is_the_parent_and_holds_only_the_read_end(worker: Worker) -> None:
    # Each leads a group of its own: user code ending its group (os.killpg(0, SIGKILL))
    # does not end its supervisor.
    assert os.getpgid(worker.supervisor) == worker.supervisor
    assert set(worker.group()) == {worker.pid}
    fds = {
        fd: os.readlink(f"/proc/{worker.supervisor}/fd/{fd}")
        for fd in os.listdir(f"/proc/{worker.supervisor}/fd")
    }
    # Erlang's pipe to Python, never the way back (Erlang must see EOF when Python dies);
    # besides, a pidfd of Python where the kernel has them, and its own wake-up pipe.
    assert fds.pop("0") == f"pipe:[{os.fstat(worker.to_py).st_ino}]"
    protocol = {f"pipe:[{ino}]" for ino in worker.pipe_inodes}
    assert not protocol & set(fds.values())
    assert {v for v in fds.values() if not v.startswith("pipe:")} <= {"anon_inode:[pidfd]"}
    # Python has no child of erlpy's that user code could wait for.
    error = worker.answer(worker.send(P.EVAL, "__import__('os').waitpid(-1, 1)", {}))
    assert error[:3] == [P.ERROR, error[1], "ChildProcessError"]


def test_orphans_of_python_are_the_supervisors_and_reaped(worker: Worker) -> None:
    daemon = _escapers(worker)[1]
    assert proc_stat(daemon)[2] == worker.supervisor  # type: ignore[index]
    os.kill(daemon, signal.SIGKILL)
    # Reaped, not left a zombie for the life of the worker.
    assert wait_until(lambda: proc_stat(daemon) is None)


def test_the_supervisor_ends_everything_when_erlang_closes_the_pipe(worker: Worker) -> None:
    worker.exec(SLEEPER)
    pids = [worker.run("sleeper"), *_escapers(worker)]
    os.close(worker.to_py)
    # Python exits on EOF, unless the supervisor's SIGTERM comes first.
    assert worker.proc.wait(TIMEOUT) in (0, 128 + signal.SIGTERM)
    for pid in pids:
        assert not alive(pid)


def test_the_supervisor_ends_everything_when_python_is_killed(worker: Worker) -> None:
    worker.exec(SLEEPER)
    pids = [worker.run("sleeper"), *_escapers(worker)]
    os.kill(worker.pid, signal.SIGKILL)
    # The port sees Python's status, once what Python started is gone.
    assert worker.proc.wait(TIMEOUT) == 128 + signal.SIGKILL
    for pid in pids:
        assert not alive(pid)
    assert not worker.group()


def test_the_supervisor_ends_everything_when_python_kills_its_own_group(worker: Worker) -> None:
    # os.killpg(0, SIGKILL) from user code ends Python's group, not its supervisor, which
    # then ends what left the group.
    worker.exec(SLEEPER)
    pids = [worker.run("sleeper"), *_escapers(worker)]
    worker.send(P.EVAL, "__import__('os').killpg(0, 9)", {})
    assert worker.proc.wait(TIMEOUT) == 128 + signal.SIGKILL
    for pid in pids:
        assert not alive(pid)
    assert not worker.group()


def test_stop_ends_python_and_the_supervisor_ends_everything(worker: Worker) -> None:
    # How erlpy_python:close/2 stops a worker: STOP, and Python exits at once (status 0).
    worker.exec(SLEEPER)
    pids = [worker.run("sleeper"), *_escapers(worker)]
    worker.send_raw([P.STOP])
    assert worker.proc.wait(TIMEOUT) == 0
    for pid in [worker.pid, *pids]:
        assert not alive(pid)


def test_the_supervisor_ends_everything_at_sigterm_at_once(worker: Worker) -> None:
    # How erlpy_python:kill_group/1 stops a worker: no grace, even for Python stuck in C.
    worker.exec(SLEEPER + "import re\ndef stuck(): re.match('(a+)+$', 'a' * 40 + 'b')\n")
    pids = [worker.run("sleeper"), *_escapers(worker)]
    worker.call("stuck")
    start = time.monotonic()
    os.kill(worker.supervisor, signal.SIGTERM)
    assert worker.proc.wait(TIMEOUT) == 128 + signal.SIGKILL
    assert time.monotonic() - start < 0.9  # not the 1 s grace of a closed pipe
    for pid in [worker.pid, *pids]:
        assert not alive(pid)


def test_python_dies_with_its_supervisor(worker: Worker) -> None:
    os.kill(worker.supervisor, signal.SIGKILL)
    assert wait_until(lambda: not alive(worker.pid))


def test_the_supervisor_ends_python_stuck_in_c_when_erlang_closes_the_pipe(
    worker: Worker,
) -> None:
    worker.exec(
        dedent(
            """
            import re
            def stuck():
                erlang.send(erlang.atom("stuck"), 1)
                return re.match("(a+)+$", "a" * 40 + "b")  # holds the GIL for hours
            """
        )
    )
    worker.call("stuck")
    worker.receive(lambda m: m[0] == P.SEND)
    # The main thread is in the regex soon after the SEND; closing earlier lets the loop
    # thread see EOF first on a busy machine, and exit 0 before the supervisor acts.
    time.sleep(0.2)
    os.close(worker.to_py)
    assert worker.proc.wait(TIMEOUT) == 128 + signal.SIGTERM


# --- the event loop thread ---------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "async def boom(): raise SystemExit\n"
        "async def kill(): asyncio.get_running_loop().create_task(boom())\n",
        "async def boom(): raise KeyboardInterrupt\n"
        "async def kill(): asyncio.get_running_loop().create_task(boom())\n",
        "import sys\nasync def kill(): asyncio.get_running_loop().call_soon(sys.exit, 4)\n",
        "async def kill(): asyncio.get_running_loop().stop()\n",
    ],
    ids=["task-SystemExit", "task-KeyboardInterrupt", "call_soon-sys.exit", "loop.stop"],
)
def test_a_dead_event_loop_kills_the_worker(worker: Worker, code: str) -> None:
    worker.exec(code)
    worker.call("kill")
    assert worker.proc.wait(TIMEOUT) == 71
    assert "erlpy: the event loop" in worker.stderr()


# --- exec --------------------------------------------------------------------------


def test_exec_of_indented_code(worker: Worker) -> None:
    worker.exec("\n    def f():\n        return 1\n")
    assert worker.run("f") == 1
    worker.exec("text = '''\n    kept\n'''\n")  # code that is not indented is left alone
    assert worker.answer(worker.send(P.EVAL, "text", {}))[2] == "\n    kept\n"


# --- cancelling a job that waits for Erlang ----------------------------------------

CALLBACKS = dedent(
    """
    import time
    def waiter(): return erlang.call("slow")
    async def awaiter(): return await erlang.acall("slow")
    def busy(): time.sleep(0.5); return "busy"
    def ok(): return "ok"
    """
)


def test_cancel_of_a_job_waiting_under_a_nested_call(worker: Worker) -> None:
    worker.exec(CALLBACKS)
    waiter = worker.call("waiter")
    callback = worker.receive(lambda m: m[0] == P.CALLBACK)
    assert callback[2:] == ["slow", []]
    busy = worker.call("busy")  # the main thread runs it while `waiter` waits
    time.sleep(0.1)
    worker.send_raw([P.CANCEL, waiter])
    # Answered at once, with `busy` still running, and the callback given up.
    assert worker.receive(lambda m: m[0] == P.CALLBACK_CANCEL, 0.3) == [9, callback[1]]
    assert worker.answer(waiter, 0.3) == [P.FAIL, waiter, "cancelled"]
    assert worker.drain(0.05) == []
    assert worker.answer(busy) == [P.RESULT, busy, "busy"]
    worker.send_raw([P.REPLY, callback[1], True, "too late"])
    assert worker.drain() == []  # `waiter` unwound without a second answer
    assert worker.run("ok") == "ok"


@pytest.mark.parametrize("function", ["waiter", "awaiter"])
def test_cancel_of_a_job_waiting_for_erlang(worker: Worker, function: str) -> None:
    worker.exec(CALLBACKS)
    job = worker.call(function)
    callback = worker.receive(lambda m: m[0] == P.CALLBACK)
    worker.send_raw([P.CANCEL, job])
    assert worker.receive(lambda m: m[0] == P.CALLBACK_CANCEL) == [9, callback[1]]
    assert worker.answer(job) == [P.FAIL, job, "cancelled"]
    worker.send_raw([P.REPLY, callback[1], True, "too late"])
    assert worker.drain() == []
    assert worker.run("ok") == "ok"


# --- streams -------------------------------------------------------------------------

GENERATORS = dedent(
    """
    import os, sys

    def fork_gen():
        yield "before"  # so that the child's item would not be sent at once, but batched
        pid = os.fork()
        if pid == 0:
            yield "child"
            print("child went on", file=sys.stderr)
            return
        yield "parent"
        yield os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    async def afork_gen():
        yield "before"
        pid = os.fork()
        if pid == 0:
            yield "child"
            print("child went on", file=sys.stderr)
            return
        yield "parent"
        yield os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def stubborn_gen():
        try:
            erlang.call("slow")
        except BaseException:
            pass  # swallows erlpy.Interrupted, and goes on
        yield 1
        yield 2
    """
)


def stream_items(worker: Worker, name: str, credit: int) -> tuple[list[Any], list[Any]]:
    """Run a stream of a function defined by exec: its items and its terminal message."""
    job_id = worker.send(P.STREAM_CALL, "__main__", name, [], {}, credit, False)
    end = worker.answer(job_id)
    items = []
    for message in worker.drain():
        assert message[:2] == [P.DATA, job_id], message
        items.extend(message[2])
    return items, end


@pytest.mark.parametrize("name", ["fork_gen", "afork_gen"])
def test_a_forked_generator_child_never_sends(worker: Worker, name: str) -> None:
    worker.exec(GENERATORS)
    items, end = stream_items(worker, name, 10)
    assert (items, end[0]) == (["before", "parent", 0], P.DONE)
    assert "child went on" not in worker.stderr()


@pytest.mark.parametrize("credit", [10, 0], ids=["window", "collect"])
def test_nothing_follows_the_answer_to_a_cancelled_stream(worker: Worker, credit: int) -> None:
    worker.exec(GENERATORS)
    job_id = worker.send(P.STREAM_CALL, "__main__", "stubborn_gen", [], {}, credit, False)
    callback = worker.receive(lambda m: m[0] == P.CALLBACK)
    worker.send_raw([P.CANCEL, job_id])
    assert worker.answer(job_id) == [P.FAIL, job_id, "cancelled"]
    assert worker.drain() == [[P.CALLBACK_CANCEL, callback[1]]]


def test_cancel_of_code_that_prints_never_silences_the_worker(worker: Worker) -> None:
    # print() from sync code writes to Erlang inside the window where a cancel interrupts
    # it; an interrupt landing in the writer lost the frame and left the writer taken, so
    # the worker never sent anything again.
    worker.exec(
        textwrap.dedent(
            """
            def chatty():
                while True:
                    print('x' * 200)

            def ping():
                return 'pong'
            """
        )
    )
    for _ in range(100):
        job_id = worker.call("chatty")
        time.sleep(0.002)
        worker.send_raw([P.CANCEL, job_id])
        assert worker.answer(job_id) == [P.FAIL, job_id, "cancelled"]
        assert worker.run("ping") == "pong"
        worker.drain(0)


def test_a_cancel_never_interrupts_the_clean_up_it_started(worker: Worker, tmp_path: Path) -> None:
    # A cancel resumes a parked generator so that it can be closed, then marks its job and
    # interrupts the job's code if it runs: the main thread could already be in the
    # generator's `finally`, which the interrupt cut short. A second CANCEL while the
    # `finally` runs shows the same window every time.
    marker = tmp_path / "closed"
    worker.exec(
        textwrap.dedent(
            """
            import time

            def endless(marker):
                try:
                    while True:
                        yield 1
                finally:
                    time.sleep(0.3)
                    open(marker, 'w').close()
            """
        )
    )
    job_id = worker.send(P.STREAM_CALL, "__main__", "endless", [str(marker)], {}, 1, False)
    assert worker.receive(lambda m: m[0] == P.DATA and m[1] == job_id)
    worker.send_raw([P.CANCEL, job_id])
    time.sleep(0.1)  # the main thread is in the finally now
    worker.send_raw([P.CANCEL, job_id])
    assert worker.answer(job_id) == [P.FAIL, job_id, "cancelled"]
    assert marker.exists()


def test_an_async_call_and_its_cancel_in_one_read_are_answered_once(worker: Worker) -> None:
    # The call and its cancel are dispatched one after the other: a call that does not
    # wait answers at once (its first step runs as it is dispatched), one that waits is
    # cancelled; either way exactly one answer, and the worker goes on.
    worker.exec(
        "async def quick():\n    return 1\n"
        "async def waits():\n    await asyncio.sleep(0)\n    return 2\n"
    )
    jobs = {job: ("quick" if job % 2 else "waits") for job in range(1000, 1020)}
    frames = b""
    for job, name in jobs.items():
        for message in ([P.CALL, job, "__main__", name, [], {}], [P.CANCEL, job]):
            body = pack(message)
            frames += len(body).to_bytes(4, "big") + body
    os.write(worker.to_py, frames)
    for job, name in jobs.items():
        expected = [P.RESULT, job, 1] if name == "quick" else [P.FAIL, job, "cancelled"]
        assert worker.answer(job) == expected
    assert worker.drain() == []  # nothing else about them, ever
    assert worker.run("quick") == 1


def _other_threads_sleeps(pid: int) -> int:
    """Times the threads of ``pid`` other than its main thread went to sleep."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        if int(tid) == pid:
            continue
        with open(f"/proc/{pid}/task/{tid}/status") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def test_a_sync_call_after_a_sync_call_wakes_no_other_thread(worker: Worker) -> None:
    # The main thread reads the pipe itself once it has answered a sync request, so a
    # run of sync calls never goes through the loop thread (docs/performance.md); an
    # async call does, and the main thread leaves the pipe to the loop thread again.
    worker.exec("def size(x):\n    return len(x)\nasync def aone():\n    return 1\n")
    assert worker.run("size", "warm") == 4
    before = _other_threads_sleeps(worker.pid)
    for i in range(200):
        time.sleep(0.0005)  # the main thread is back to reading: no race with the loop's
        assert worker.run("size", "x" * i) == i
    assert _other_threads_sleeps(worker.pid) - before < 20
    for _ in range(50):
        assert worker.run("aone") == 1
    assert worker.run("size", "abc") == 3


# What else the loop has to do while async calls come back to back, each armed to
# happen 50 ms after arm() and to record how late it ran.
_LOOP_WORK = {
    "timer": "loop.call_later(0.05, record, due)",
    # A socket another thread writes to: another fd of the loop's becomes ready.
    "fd": (
        "r, w = socket.socketpair()\n"
        "loop.add_reader(r, lambda: (loop.remove_reader(r), record(due)))\n"
        "threading.Timer(0.05, w.send, (b'x',)).start()"
    ),
    # Callbacks the loop itself keeps queuing (call_soon), until the time is up.
    "callback": (
        "def again():\n"
        "    if time.monotonic() < due:\n"
        "        loop.call_soon(again)\n"
        "    else:\n"
        "        record(due)\n"
        "loop.call_soon(again)"
    ),
}


@pytest.mark.parametrize("work", sorted(_LOOP_WORK))
def test_a_run_of_async_calls_leaves_the_loop_its_other_work(tmp_path: Path, work: str) -> None:
    # The loop thread reads async calls back to back without a turn of the event loop
    # while nothing else wants it; a timer due, another fd ready or a callback queued
    # meanwhile still gets its turn on time. The worker polls for up to 100 ms
    # (poll_us), so only that work can end a run of inline reads.
    worker = Worker(tmp_path, {"poll_us": 100_000})
    try:
        _async_calls_with_loop_work(worker, _LOOP_WORK[work])
    finally:
        worker.close()


def _async_calls_with_loop_work(worker: Worker, arm: str) -> None:
    worker.exec(
        dedent(
            """
            import socket, threading, time
            fired = []
            def record(due):
                fired.append(time.monotonic() - due)
            async def one():
                return 1
            async def late():
                return fired
            """
        )
    )
    body = "\n".join("    " + line for line in arm.splitlines())
    worker.exec(
        "async def arm():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    due = time.monotonic() + 0.05\n" + body + "\n"
    )
    worker.run("arm")
    pending = [worker.call("one") for _ in range(2)]
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        assert worker.answer(pending.pop(0))[2] == 1
        pending.append(worker.call("one"))
    for job in pending:
        assert worker.answer(job)[2] == 1
    fired = worker.run("late")
    assert len(fired) == 1 and fired[0] < 0.1, fired  # it ran, and about on time


def test_a_malformed_call_read_by_the_idle_main_thread_is_reported(worker: Worker) -> None:
    # After a sync call the main thread reads the pipe; a call whose function name is
    # not a name (here a list: unhashable) must be reported, not end the worker.
    worker.exec("def one():\n    return 1\n")
    assert worker.run("one") == 1
    worker.send_raw([P.CALL, 777, "__main__", ["not", "a", "name"], [], {}])
    assert worker.answer(777)[:3] == [P.ERROR, 777, "TypeError"]
    assert worker.run("one") == 1
    assert worker.proc.poll() is None


def test_a_main_function_rebound_by_user_code_is_called_anew(worker: Worker) -> None:
    # Names of __main__ are cached for speed, but only while __main__ still holds the same
    # object: user code (not only exec) may rebind them.
    worker.exec("def f():\n    return 1\ndef rebind():\n    global f\n    f = lambda: 2\n")
    assert worker.run("f") == 1
    worker.run("rebind")
    assert worker.run("f") == 2


# --- replies held for the requests behind them ---------------------------------------


def test_replies_to_requests_read_together_come_in_few_frames(worker: Worker) -> None:
    # 40 calls in one frame: the main thread holds each reply while others wait behind
    # it, and writes them together (at least every 200 us): not one frame per reply.
    worker.exec("def double(x):\n    return 2 * x\n")
    assert worker.run("double", 1) == 2
    jobs = range(5000, 5040)
    before = worker.frames
    worker.send_frame([[P.CALL, job, "__main__", "double", [job], {}] for job in jobs])
    for job in jobs:
        assert worker.answer(job) == [P.RESULT, job, 2 * job]
    assert worker.frames - before < len(jobs) // 2


@pytest.mark.parametrize("gil", ["released", "held"])
def test_a_held_reply_does_not_wait_for_a_long_request(
    worker: Worker, tmp_path: Path, gil: str
) -> None:
    # quick() is answered while wait() still runs: its reply, held because wait() was
    # queued behind it, goes out when the flush timer fires, whether wait() sleeps or
    # spins in Python code holding the GIL (the loop thread gets it within 1 ms).
    flag = tmp_path / "go"
    worker.exec(
        dedent(
            """
            import os, time
            def quick():
                return 'quick'
            def wait(path, spin):
                end = time.monotonic() + 30
                while not os.path.exists(path) and time.monotonic() < end:
                    if spin:
                        for _ in range(20000):
                            pass
                    else:
                        time.sleep(0.001)
                return 'done'
            """
        )
    )
    worker.send_frame(
        [
            [P.CALL, 6001, "__main__", "quick", [], {}],
            [P.CALL, 6002, "__main__", "wait", [str(flag), gil == "held"], {}],
        ]
    )
    assert worker.answer(6001) == [P.RESULT, 6001, "quick"]
    flag.touch()
    assert worker.answer(6002) == [P.RESULT, 6002, "done"]


# --- signals and runaway recursion ---------------------------------------------------

SIGNALS = dedent(
    """
    import os, signal, threading, time
    def later():
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
        return "returned"
    async def to_itself():
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(0.2)
        return "survived"
    def during():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(2)
    def runaway(n=0):
        return list(map(runaway, [n + 1]))
    def ok():
        return "ok"
    def prints_under_sigint(secs):
        stop = []
        def killer():
            while not stop:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.002)
        t = threading.Thread(target=killer)
        n = 0
        end = time.monotonic() + secs
        started = False
        while True:
            try:
                if not started:
                    started = True
                    t.start()
                if time.monotonic() >= end:
                    stop.append(1)
                    t.join()
                    time.sleep(0.05)
                    return n > 0
                print("x" * 20)
                n += 1
            except KeyboardInterrupt:
                pass  # in this code: the signal the test sends
    """
)


def test_sigint_outside_user_code_leaves_the_worker_serving(worker: Worker) -> None:
    # Arriving while erlpy's own code ran (idle, or an async request), SIGINT raised
    # KeyboardInterrupt there and ended the worker (status 130) with all it held.
    worker.exec(SIGNALS)
    assert worker.run("later") == "returned"
    time.sleep(0.2)  # the signal came while the main thread waited for work
    assert worker.run("to_itself") == "survived"
    assert alive(worker.pid)
    # During sync user code it is a KeyboardInterrupt there, as in plain Python.
    answer = worker.answer(worker.call("during"))
    assert answer[:3] == [P.ERROR, answer[1], "KeyboardInterrupt"]
    assert worker.run("later") == "returned"


def test_runaway_recursion_through_c_is_a_recursion_error(worker: Worker) -> None:
    # The worker's recursion limit was 20000: recursion through C frames overflowed the
    # C stack first, and the worker died of SIGSEGV where plain Python raises.
    worker.exec(SIGNALS)
    answer = worker.answer(worker.call("runaway"), timeout=30)
    assert answer[:3] == [P.ERROR, answer[1], "RecursionError"]
    assert alive(worker.pid)


def test_sigint_in_what_user_code_calls_leaves_the_writer_free(worker: Worker) -> None:
    # A KeyboardInterrupt raised inside print's write to Erlang left the writer taken:
    # nothing was sent any more, and the worker was killed at the caller's timeout.
    worker.exec(SIGNALS)
    answer = worker.answer(worker.call("prints_under_sigint", 0.5), timeout=10)
    # (a signal at the loop's head, outside its try, escapes it, as in plain Python)
    assert answer[2] in (True, "KeyboardInterrupt"), answer
    assert worker.run("ok") == "ok"
    assert alive(worker.pid)


"""A real worker process (``_boot.py``) driven over real pipes the way erlpy_worker drives
one: Erlang -> Python on fd 3, Python -> Erlang on fd 4. For the tests (not collected: no
test_ prefix)."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from erlpy import _protocol as P
from erlpy._codec import new_unpacker, pack

ROOT = Path(__file__).resolve().parents[2]
BOOT = ROOT / "python" / "erlpy" / "_boot.py"
TIMEOUT = 5.0  # Generous: only there to turn a hang into a failure.

# Puts the pipes on fds 3/4 and becomes _boot.py, as erl_child_setup does.
LAUNCH = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
    "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
)


def _high(fd: int) -> int:
    """The same pipe end on an fd >= 10, so the launcher's dup2 onto 3/4 clobbers none."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Worker:
    """A Python worker process and the Erlang side of its pipes."""

    def __init__(self, tmp_path: Path, limits: dict[str, Any] | None = None) -> None:
        to_py_r, self.to_py = map(_high, os.pipe())
        self.from_py, from_py_w = map(_high, os.pipe())
        self.pipe_inodes = {os.fstat(self.to_py).st_ino, os.fstat(self.from_py).st_ino}
        self.stderr_path = tmp_path / "stderr"
        with open(self.stderr_path, "wb") as err:
            args = [str(to_py_r), str(from_py_w), str(BOOT), str(ROOT / "python")]
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, *args],
                pass_fds=(to_py_r, from_py_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        os.close(to_py_r)
        os.close(from_py_w)
        # The port's process is the supervisor (_boot.py); Python runs in its child.
        self.supervisor = self.proc.pid
        self._unpacker = new_unpacker()
        self._buffer = b""
        self.frames = 0  # frames read from Python so far
        self._inbox: list[list[Any]] = []
        self._ids = iter(range(1, 1 << 30))
        ready = self.receive(lambda m: m[0] == P.READY)
        self.pid: int = ready[1]["os_pid"]
        assert proc_stat(self.pid) is not None and proc_stat(self.pid)[2] == self.supervisor  # type: ignore[index]
        # As a pool sends them (erlpy_worker:setup/1); none by default.
        assert self.answer(self.send(P.SETUP, None, limits or {})) == [P.RESULT, 1, None]

    # --- the Erlang side ------------------------------------------------------

    def send(self, op: int, *fields: Any) -> int:
        job_id = next(self._ids)
        self.send_raw([op, job_id, *fields])
        return job_id

    def send_raw(self, message: list[Any]) -> None:
        body = pack(message)
        os.write(self.to_py, len(body).to_bytes(4, "big") + body)

    def send_frame(self, messages: list[list[Any]]) -> None:
        """Several messages in one frame, as the Erlang worker writes what it has queued."""
        body = b"".join(pack(message) for message in messages)
        os.write(self.to_py, len(body).to_bytes(4, "big") + body)

    def send_frames(self, messages: list[list[Any]]) -> None:
        """Each message in a frame of its own, all in one write: Python reads them at once."""
        bodies = [pack(message) for message in messages]
        os.write(self.to_py, b"".join(len(body).to_bytes(4, "big") + body for body in bodies))

    def next_id(self) -> int:
        return next(self._ids)

    def call(self, name: str, *args: Any) -> int:
        return self.send(P.CALL, "__main__", name, list(args), {})

    def run(self, name: str, *args: Any) -> Any:
        """Call a function defined by exec and return its value."""
        answer = self.answer(self.call(name, *args))
        assert answer[0] == P.RESULT, answer
        return answer[2]

    def exec(self, code: str) -> None:
        job_id = self.send(P.EXEC, code)
        assert self.answer(job_id) == [P.RESULT, job_id, None]

    def answer(self, job_id: int, timeout: float = TIMEOUT) -> list[Any]:
        terminal = (P.RESULT, P.ERROR, P.FAIL, P.DONE)
        return self.receive(lambda m: m[0] in terminal and m[1] == job_id, timeout)

    def receive(self, match: Callable[[list[Any]], bool], timeout: float = TIMEOUT) -> list[Any]:
        """The first message that matches, waiting for it; the others stay queued."""
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self._inbox):
                if match(message):
                    return self._inbox.pop(i)
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise TimeoutError(f"no such message; queued: {self._inbox}")

    def drain(self, quiet: float = 0.1) -> list[list[Any]]:
        """Whatever arrives until the pipe has been quiet for ``quiet`` seconds, but logs."""
        while self._read(quiet):
            pass
        messages, self._inbox = self._inbox, []
        return [m for m in messages if m[0] != P.LOG]

    def _read(self, timeout: float) -> bool:
        if not select.select([self.from_py], [], [], timeout)[0]:
            return False
        data = os.read(self.from_py, 1 << 16)
        if not data:
            return False
        self._buffer += data
        while len(self._buffer) >= 4:
            size = int.from_bytes(self._buffer[:4], "big")
            if len(self._buffer) < 4 + size:
                break
            self.frames += 1
            self._unpacker.feed(self._buffer[4 : 4 + size])
            self._inbox.extend(self._unpacker)
            self._buffer = self._buffer[4 + size :]
        return True

    def close(self) -> None:
        """Stop the worker as erlpy_worker does when it kills one: SIGTERM to the
        supervisor, which ends everything (even what left the group), and the groups if it
        does not exit; then close Erlang's end of the pipes."""
        try:
            os.kill(self.supervisor, signal.SIGTERM)
            self.proc.wait(TIMEOUT)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for fd in (self.to_py, self.from_py):
            try:
                os.close(fd)
            except OSError:
                pass
        for group in (self.supervisor, self.pid):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(TIMEOUT)

    # --- looking at processes ---------------------------------------------------

    def group(self) -> dict[int, tuple[int, str]]:
        """The live processes of Python's process group (Python leads it; its supervisor
        is alone in its own): pid -> (parent pid, name)."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := proc_stat(int(entry))) is not None:
                comm, state, ppid, pgid = stat
                if pgid == self.pid and state not in "ZX":
                    found[int(entry)] = (ppid, comm)
        return found

    def holds_protocol(self, pid: int) -> list[str]:
        """The fds of a process that are ends of the protocol pipes."""
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if any(link == f"pipe:[{ino}]" for ino in self.pipe_inodes):
                links.append(fd)
        return links

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def proc_stat(pid: int) -> tuple[str, str, int, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    state, ppid, pgid = rest.split()[:3]
    return head.partition("(")[2], state, int(ppid), int(pgid)


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[1] not in "ZX"


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    """A real worker for one test (conftest.py offers it to every test module)."""
    w = Worker(tmp_path)
    try:
        yield w
    finally:
        w.close()

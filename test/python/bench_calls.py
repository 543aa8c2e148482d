"""Per-call cost of a worker: 20,000 sequential tiny calls over real pipes, best of 5.

Not a test (pytest does not collect it): ``python test/python/bench_calls.py PARENT...``
where each PARENT holds an ``erlpy`` package (e.g. ``python`` and a copy of another
revision's). Workers are measured in alternation, the order reversed every other round,
since only figures from the same run compare (other work runs on the machine).
"""

from __future__ import annotations

import fcntl
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import msgpack

CALLS = 20_000
ROUNDS = 5
# Puts the pipes on fds 3/4 and becomes _boot.py, as erl_child_setup does.
LAUNCH = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
    "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
)
CALL, EXEC, SETUP = 1, 3, 11
TERMINAL = (1, 2, 4, 8)  # RESULT, ERROR, DONE, FAIL


def _high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Worker:
    def __init__(self, parent: str) -> None:
        r, self.to_py = map(_high, os.pipe())
        self.from_py, w = map(_high, os.pipe())
        boot = os.path.join(parent, "erlpy", "_boot.py")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(r), str(w), boot, parent],
            pass_fds=(r, w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        os.close(r)
        os.close(w)
        self.buffer = b""
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.inbox: list[list[Any]] = []
        self.receive()  # READY
        self.request([SETUP, 1, None, {"poll_us": int(os.environ.get("POLL_US", "200"))}])
        self.request([EXEC, 2, "async def aadd(a, b): return a + b\n"])

    def receive(self) -> list[Any]:
        while not self.inbox:
            self.buffer += os.read(self.from_py, 1 << 16)
            while len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) < 4 + size:
                    break
                self.unpacker.feed(self.buffer[4 : 4 + size])
                self.inbox.extend(self.unpacker)
                self.buffer = self.buffer[4 + size :]
        return self.inbox.pop(0)

    def request(self, message: list[Any]) -> list[Any]:
        body = msgpack.packb(message)
        os.write(self.to_py, len(body).to_bytes(4, "big") + body)
        while True:
            answer = self.receive()
            if answer[0] in TERMINAL and answer[1] == message[1]:
                return answer

    def calls(self, kind: str, first_id: int) -> float:
        """Microseconds per call."""
        module, function = ("operator", "add") if kind == "sync" else ("__main__", "aadd")
        start = time.perf_counter()
        for i in range(CALLS):
            answer = self.request([CALL, first_id + i, module, function, [i, 1], {}])
        elapsed = time.perf_counter() - start
        assert answer[0] == 1, answer
        return elapsed / CALLS * 1e6

    def close(self) -> None:
        os.close(self.to_py)
        os.close(self.from_py)
        self.proc.kill()
        self.proc.wait()


def main(parents: list[str]) -> None:
    workers = [Worker(parent) for parent in parents]
    times: dict[tuple[str, str], list[float]] = {}
    next_id = 100
    for round_ in range(ROUNDS):
        for kind in ("sync", "async"):
            order = list(zip(parents, workers, strict=True))
            if round_ % 2:
                order.reverse()
            for parent, worker in order:
                times.setdefault((kind, parent), []).append(worker.calls(kind, next_id))
                next_id += CALLS
    for worker in workers:
        worker.close()
    for kind in ("sync", "async"):
        for parent in parents:
            best = min(times[(kind, parent)])
            print(f"{kind:5} {parent}: best of {ROUNDS} {best:.2f} us/call")
        if len(parents) == 2:
            first, second = (times[(kind, p)] for p in parents)
            ratio = statistics.median(b / a for a, b in zip(first, second, strict=True))
            print(f"{kind:5} second/first, median of rounds: {ratio:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["python"])

"""Floors: what a round trip costs over the pipe alone. A minimal Python loop answers
frames on fds 3/4 (SPEC §9's pipe floor); bench.escript measures it in the same run as
erlpy, so latencies can be read as ratios on a shared, noisy machine.

    python floor.py               the plain floor: blocks in read(2) between requests
    python floor.py --poll-us N   the polling floor: after each answer, polls the pipe for
                                  up to N µs before it blocks again
        [--poll-yield]            and gives up the CPU (sched_yield) between two polls
        [--call]                  and really calls the function each request names,
                                  decoding and encoding with erlpy's codec (what any
                                  bridge must do at the least), instead of answering 4.0

A frame starting with b"E" is echoed back whole, one starting with b"L" gets its length
back (the floors of the 1 MiB round trip and of the 10 MiB `len`); any other frame holds
one or more msgpack call requests ([1, Id, ...], several when a relay coalesced them) and
gets one frame with a [1, Id, 4.0] reply for each. The pipes get the size erlpy's workers
give them.
"""

import argparse
import fcntl
import os
import select
import time
from collections.abc import Callable

import msgpack

PIPE_SIZE = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll-us", type=int, default=0, help="poll this long after each answer")
    parser.add_argument("--poll-yield", action="store_true", help="sched_yield between polls")
    parser.add_argument("--call", action="store_true", help="call the function each request names")
    args = parser.parse_args()
    global answer_calls
    if args.call:
        answer_calls = calling()
    poll_s = args.poll_us / 1e6
    for fd in (3, 4):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
    poller = select.poll()
    poller.register(3, select.POLLIN)
    buf = memoryview(bytearray(16 << 20))
    while True:
        if not read_exactly(buf, 4):
            return
        size = int.from_bytes(buf[:4], "big")
        if not read_exactly(buf, size):
            return
        answer(buf[:size], size)
        if poll_s:
            poll(poller, poll_s, args.poll_yield)


def answer(frame: memoryview, size: int) -> None:
    kind = bytes(frame[:1])
    if kind == b"E":
        write_all([size.to_bytes(4, "big"), frame])
    elif kind == b"L":
        write_all([b"\0\0\0\4", size.to_bytes(4, "big")])
    else:
        reply = answer_calls(frame)
        write_all([len(reply).to_bytes(4, "big"), reply])


def answer_4(frame: memoryview) -> bytes:
    return b"".join(msgpack.packb([1, message[1], 4.0]) for message in requests(frame))


answer_calls = answer_4


def calling() -> Callable[[memoryview], bytes]:
    """The --call floor: each request ([1, Id, Module, Function, Args, Kwargs, ...]) is
    decoded with erlpy's codec, its function looked up (cached) and called, and its result
    encoded with erlpy's codec. No deadline, cancellation, threads or errors: the least a
    bridge does for a call, and so a floor for erlpy's Python side."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from erlpy import _codec

    functions: dict[tuple[str, str], Callable[..., object]] = {}
    pack = _codec.new_packer().pack

    def call(frame: memoryview) -> bytes:
        out = []
        for message in _codec.unpack_frame(frame):
            key = (message[2], message[3])
            fn = functions.get(key)
            if fn is None:
                fn = functions[key] = getattr(importlib.import_module(key[0]), key[1])
            out.append(pack([1, message[1], fn(*message[4], **message[5])]))
        return b"".join(out)

    return call


def requests(frame: memoryview) -> list[list[object]]:
    # One request per frame is the sequential case: unpackb is the cheapest way to it.
    try:
        return [msgpack.unpackb(frame)]
    except msgpack.ExtraData:
        unpacker = msgpack.Unpacker()
        unpacker.feed(frame)
        return list(unpacker)


def poll(poller: "select.poll", poll_s: float, yield_cpu: bool) -> None:
    """Wait for the next request by polling the pipe (zero timeout) for up to poll_s, so a
    request that comes back to back finds this thread awake; past the deadline the caller
    blocks in read(2), so an idle floor costs no CPU. With yield_cpu, a process that
    shares this CPU (the BEAM, on a busy 2-core machine) runs between two polls instead
    of waiting for the poll to end."""
    deadline = time.monotonic() + poll_s
    while time.monotonic() < deadline:
        if poller.poll(0):
            return
        if yield_cpu:
            os.sched_yield()


def read_exactly(buf: memoryview, n: int) -> bool:
    got = 0
    while got < n:
        k = os.readv(3, [buf[got:n]])
        if k == 0:
            return False
        got += k
    return True


def write_all(parts: list[bytes | memoryview]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(4, view) :]


if __name__ == "__main__":
    main()

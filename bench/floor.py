"""Floors: what a round trip costs over the pipe alone. A minimal Python loop answers
frames on fds 3/4 (SPEC §9's pipe floor); bench.escript measures it in the same run as
erlpy, so latencies can be read as ratios on a shared, noisy machine.

A frame starting with b"E" is echoed back whole, one starting with b"L" gets its length
back (the floors of the 1 MiB round trip and of the 10 MiB `len`); any other frame is a
msgpack request answered with msgpack. The pipes get the size erlpy's workers give them.
"""

import fcntl
import os

import msgpack

PIPE_SIZE = 1 << 20


def main() -> None:
    for fd in (3, 4):
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
    buf = memoryview(bytearray(16 << 20))
    while True:
        if not read_exactly(buf, 4):
            return
        size = int.from_bytes(buf[:4], "big")
        if not read_exactly(buf, size):
            return
        frame = buf[:size]
        if frame[:1] == b"E":
            write_all([size.to_bytes(4, "big"), frame])
        elif frame[:1] == b"L":
            write_all([b"\0\0\0\4", size.to_bytes(4, "big")])
        else:
            message = msgpack.unpackb(frame)
            reply = msgpack.packb([1, message[1], 4.0])
            write_all([len(reply).to_bytes(4, "big"), reply])


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

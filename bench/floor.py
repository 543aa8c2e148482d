"""The floor of a sequential round trip: a minimal Python loop answering msgpack frames on
fds 3/4 (what SPEC §9 calls the pipe floor). bench.escript measures it in the same run as
erlpy, so latencies can be read as ratios on a shared, noisy machine."""

import os

import msgpack


def main() -> None:
    buf = b""
    while True:
        data = os.read(3, 65536)
        if not data:
            return
        buf += data
        while len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if len(buf) < 4 + size:
                break
            message = msgpack.unpackb(buf[4 : 4 + size])
            buf = buf[4 + size :]
            reply = msgpack.packb([1, message[1], 4.0])
            os.write(4, len(reply).to_bytes(4, "big") + reply)


if __name__ == "__main__":
    main()

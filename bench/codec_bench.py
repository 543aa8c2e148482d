"""Python side of the codec: pack/unpack per typical value (median of 5 runs)."""

import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from erlpy import Atom
from erlpy._codec import new_packer, unpackb

VALUES = {
    "small int": 42,
    "float": 3.14159,
    "short str": "hello world",
    "1 KiB str": "x" * 1024,
    "atom": Atom("some_atom"),
    "call reply": [1, 12345, 4.0],
    "dict of 10": {str(i): i for i in range(10)},
    "list of 1000 ints": list(range(1000)),
    "nested tuples/lists": [(i, [i, "v", {"k": i}]) for i in range(100)],
}


def main() -> None:
    packer = new_packer()
    print(f"{'value':22} {'pack':>14} {'unpack':>14}")
    for name, value in VALUES.items():
        data = packer.pack(value)
        n = max(1, 200_000 // max(1, len(data) // 8))
        pack = statistics.median(timeit.repeat(lambda v=value: packer.pack(v), number=n, repeat=5))
        unpack = statistics.median(timeit.repeat(lambda d=data: unpackb(d), number=n, repeat=5))
        print(f"{name:22} {pack / n * 1e6:11.3f} us {unpack / n * 1e6:11.3f} us")


if __name__ == "__main__":
    main()

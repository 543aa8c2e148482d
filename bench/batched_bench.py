"""The function of bench/batched_bench.escript: 1 ms of work per call, or per batch.

``infer`` is batched (``erlpy.batched``, its options from the pool's environment:
BATCH_MAX_SIZE, BATCH_MAX_WAIT) and also returns the size of the batch each item was
in; ``infer_one`` is the same work called once per item.
"""

import os
import time

import erlpy


@erlpy.batched(
    max_size=int(os.environ.get("BATCH_MAX_SIZE", "64")),
    max_wait=float(os.environ.get("BATCH_MAX_WAIT", "0.002")),
)
def infer(items: list[int]) -> list[tuple[int, int]]:
    time.sleep(0.001)  # one vectorised step for the whole batch
    return [(x + 1, len(items)) for x in items]


def infer_one(x: int) -> tuple[int, int]:
    time.sleep(0.001)
    return (x + 1, 1)

"""The 'model' of the web demo: an async generator that emits a completion word by word.

Plain Python: nothing here knows about Erlang or HTTP. The server (examples/web/web_demo.erl)
streams `generate` with py:stream_start/4 and forwards every word to the browser.

When the generator ends, its `finally` writes `<stream id>.json` into the status directory
(`{"outcome": "completed" | "cancelled" | "failed", "tokens": N}`): that is how the server's
/status page, and the browser test, see that a Stop really reached Python.
"""

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator

TEXT = (
    "Erlang keeps the connections, Python runs the model, and every token travels "
    "from an async generator to your browser the moment it is produced. Press Stop "
    "and the generator is cancelled: its finally block runs and the text ends here."
)


async def generate(
    stream_id: str,
    status_dir: str,
    text: str = TEXT,
    delay: float = 0.06,
    fail_after: int = -1,
) -> AsyncIterator[str]:
    """Yield `text` word by word, `delay` seconds (give or take 30 %) per word, like an LLM.

    `fail_after` >= 0 raises after that many words: the page shows the error.
    """
    sent = 0
    outcome = "cancelled"  # unless the loop finishes or raises
    try:
        for word in text.split():
            if sent == fail_after:
                raise RuntimeError(f"the model failed after {sent} tokens")
            await asyncio.sleep(delay * random.uniform(0.7, 1.3))
            yield word
            sent += 1
        outcome = "completed"
    except Exception:
        outcome = "failed"
        raise
    finally:
        record(status_dir, stream_id, {"outcome": outcome, "tokens": sent})


def record(status_dir: str, stream_id: str, status: dict[str, object]) -> None:
    """Write the stream's outcome atomically (the reader never sees half a file)."""
    if not status_dir or not stream_id.isalnum():
        return
    path = os.path.join(status_dir, f"{stream_id}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(status, f)
    os.replace(path + ".tmp", path)

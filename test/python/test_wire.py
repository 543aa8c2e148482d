"""Framing on real pipes: what FrameWriter writes, FrameReader reads back, for small
messages, coalesced batches and large multi-part payloads."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from erlpy import _codec
from erlpy._codec import EncodeError, pack_parts
from erlpy._wire import FrameReader, FrameWriter


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def read_frames(fd: int, count: int) -> list[bytes]:
    """Read `count` frames with a FrameReader (copying each, as views are reused)."""
    os.set_blocking(fd, False)
    reader = FrameReader(fd)
    frames: list[bytes] = []
    while len(frames) < count:
        try:
            got = reader.read()
        except BlockingIOError:
            threading.Event().wait(0.001)
            continue
        assert got is not None, "end of file before all frames arrived"
        frames.extend(bytes(frame) for frame in got)  # type: ignore[arg-type]
    return frames


def write_in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_small_messages_and_a_multi_part_one_arrive_whole(pipe: tuple[int, int]) -> None:
    r, w = pipe
    writer = FrameWriter(w)
    big = os.urandom(3 << 20)

    def produce() -> None:
        writer.send(b"one")
        writer.send(b"head:", big, b":tail")
        writer.send(b"two")

    thread = write_in_thread(produce)
    frames = read_frames(r, 3)
    thread.join()
    assert frames == [b"one", b"head:" + big + b":tail", b"two"]


def test_large_frames_of_changing_sizes_read_back_exactly(pipe: tuple[int, int]) -> None:
    # The reader keeps one buffer for large frames: a smaller frame after a larger one
    # and a larger one after that must both come out with exactly their own bytes.
    r, w = pipe
    writer = FrameWriter(w)
    payloads = [os.urandom(n) for n in (3 << 20, (1 << 20) + 7, 5 << 20, 2 << 20)]

    def produce() -> None:
        for payload in payloads:
            writer.send(payload)

    thread = write_in_thread(produce)
    frames = read_frames(r, len(payloads))
    thread.join()
    assert [len(f) for f in frames] == [len(p) for p in payloads]
    assert frames == payloads


@pytest.mark.parametrize(
    "value",
    [b"x" * 10, "y" * 10, b"\x00\xff" * 40000, "text " * 20000, "é" * 70000, b"", 7],
)
def test_pack_parts_is_plain_msgpack(value: Any) -> None:
    message = [1, 12345, value]
    assert b"".join(pack_parts(message)) == msgpack.packb(message, use_bin_type=True)


def test_pack_parts_hands_a_large_payload_over_without_copying_it() -> None:
    payload = b"\x01" * (1 << 20)
    parts = pack_parts([1, 2, payload])
    assert parts[-1] is payload


def test_pack_parts_refuses_a_large_str_with_a_lone_surrogate() -> None:
    with pytest.raises(EncodeError):
        pack_parts([1, 2, "a" * 100000 + "\ud800"])


def test_pack_parts_refuses_what_no_frame_can_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_codec, "MAX_FRAME", 100_000)
    assert len(b"".join(pack_parts([1, 2, b"x" * 99_000]))) < 100_000
    with pytest.raises(EncodeError, match="too large"):
        pack_parts([1, 2, b"x" * 100_000])
    with pytest.raises(EncodeError, match="too large"):
        pack_parts([1, 2, "y" * 100_000])


def test_a_stream_item_too_large_for_a_frame_is_refused(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from erlpy import _stream

    _, w = pipe
    loop = asyncio.new_event_loop()
    stream = _stream.Stream(loop, FrameWriter(w), 1, credit=10, resume=lambda: None)
    monkeypatch.setattr(_stream, "MAX_ITEM", 100_000)
    assert stream.queue(b"x" * 99_000, on_loop=False)  # the first item: flush now
    with pytest.raises(EncodeError, match="too large"):
        stream.queue(b"y" * 100_001, on_loop=False)
    loop.close()

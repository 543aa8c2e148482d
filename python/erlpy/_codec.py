"""msgpack encoding of Erlang terms, the Python half of ``erlpy_codec.erl``.

Extension types (see docs/internals.md):

1. atom: UTF-8 name, decoded to :class:`Atom`
2. tuple: payload is a msgpack array
3. integer beyond 64 bits: sign byte + big-endian magnitude
4. opaque Erlang term (pid, reference, port, fun, unhashable map key): external term
   format, kept as bytes and sent back unchanged
5. binary that Erlang did not classify: ``str`` when valid UTF-8, else ``bytes``
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final

import msgpack

EXT_ATOM: Final = 1
EXT_TUPLE: Final = 2
EXT_BIGINT: Final = 3
EXT_TERM: Final = 4
EXT_BINARY: Final = 5
EXT_HANDLE: Final = 6  # a handle (docs/state.md): the object it names, in a worker

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# Protocol frames may carry large binaries; the limit is the frame size Erlang accepts.
MAX_MESSAGE: Final = 2**31 - 1
# The most one frame can hold ({packet, 4}); a message must fit in one.
MAX_FRAME: Final = 2**32 - 1


def check_size(size: int, limit: int | None = None) -> None:
    """Refuse a message too large for a frame, before it is queued for writing."""
    limit = MAX_FRAME if limit is None else limit
    if size > limit:
        raise EncodeError(f"value too large to send: {size} bytes (a frame holds {limit})")


class EncodeError(TypeError):
    """A Python value has no Erlang representation (and no registered encoder)."""


class Atom(str):
    """An Erlang atom. A ``str`` subclass, so Python code can treat it as text."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


class OpaqueTerm:
    """An Erlang term Python cannot look inside; it goes back to Erlang unchanged."""

    __slots__ = ("_ext",)

    def __init__(self, ext: bytes) -> None:
        self._ext = ext

    @property
    def external_format(self) -> bytes:
        """The term in Erlang's external term format (``term_to_binary``)."""
        return self._ext

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OpaqueTerm) or type(other) is not type(self):
            return False
        return other._ext == self._ext

    def __hash__(self) -> int:
        return hash(self._ext)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{len(self._ext)} bytes>)"


class Pid(OpaqueTerm):
    """An Erlang process identifier; usable with :func:`erlpy.erlang.send`."""

    __slots__ = ()


class Reference(OpaqueTerm):
    """An Erlang reference."""

    __slots__ = ()


class Port(OpaqueTerm):
    """An Erlang port."""

    __slots__ = ()


class Fun(OpaqueTerm):
    """An Erlang fun."""

    __slots__ = ()


# Tag bytes of the external term format, after the version byte 131.
_OPAQUE_KINDS: Final[dict[int, type[OpaqueTerm]]] = {
    103: Pid, 88: Pid,
    101: Reference, 114: Reference, 90: Reference,
    102: Port, 89: Port, 120: Port,
    117: Fun, 112: Fun, 113: Fun,
}  # fmt: skip

_encoders: dict[type, Callable[[Any], Any]] = {}
_atoms: dict[bytes, Atom] = {}

# Types the packer writes itself (strict_types): anything else goes through _default.
_NATIVE: Final = frozenset({type(None), bool, float, str, bytes, list, dict, msgpack.ExtType})
# Tuples are packed by a nested packer, so msgpack's own nesting limit does not see them;
# this limit keeps deep tuples an EncodeError instead of a C stack overflow.
MAX_TUPLE_DEPTH: Final = 512
# unpackb() keeps its parser stack (~32 KiB) on the C stack, once per nested tuple: deeper
# than this, tuples are unpacked by an Unpacker, whose parser stack is on the heap.
_C_STACK_TUPLES: Final = 8
_depth = threading.local()


def register_encoder(cls: type, fn: Callable[[Any], Any]) -> None:
    """Teach erlpy to send instances of ``cls`` (and subclasses) to Erlang.

    ``fn`` turns an instance into a value erlpy can already send (a dict, a tuple, ...).
    """
    _encoders[cls] = fn


# Set by erlpy._handles, which only a worker's runtime loads: handles exist in workers.
handle_decoder: Callable[[bytes], Any] | None = None


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_ATOM:
        atom = _atoms.get(data)
        if atom is None:
            atom = _atoms.setdefault(data, Atom(data.decode()))
        return atom
    if code == EXT_TUPLE:
        return tuple(_unpack_nested(data))
    if code == EXT_BIGINT:
        magnitude = int.from_bytes(data[1:], "big")
        return -magnitude if data[0] else magnitude
    if code == EXT_TERM:
        kind = _OPAQUE_KINDS.get(data[1], OpaqueTerm) if len(data) > 1 else OpaqueTerm
        return kind(data)
    if code == EXT_BINARY:
        try:
            return data.decode()
        except UnicodeDecodeError:
            return data
    if code == EXT_HANDLE and handle_decoder is not None:
        return handle_decoder(data)
    raise ValueError(f"unknown msgpack extension type {code}")


def _unpack_nested(data: bytes) -> Any:
    depth = getattr(_depth, "unpack", 0)
    _depth.unpack = depth + 1
    try:
        if depth < _C_STACK_TUPLES:
            return unpackb(data)
        unpacker = msgpack.Unpacker(
            None,
            raw=False,
            strict_map_key=False,
            ext_hook=_ext_hook,
            max_buffer_size=max(len(data), 1),
        )
        unpacker.feed(data)
        value = unpacker.unpack()
        if unpacker.tell() != len(data):
            raise ValueError("extra data after the tuple's array")
        return value
    finally:
        _depth.unpack = depth


def _type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _default(obj: Any) -> Any:
    """Called by the packer for everything msgpack does not handle natively (strict types)."""
    cls = type(obj)
    if cls is Atom:
        return msgpack.ExtType(EXT_ATOM, obj.encode())
    if cls is tuple:
        return _pack_tuple(obj)
    if isinstance(obj, OpaqueTerm):
        return msgpack.ExtType(EXT_TERM, obj.external_format)
    if isinstance(obj, int):
        if _INT_MIN <= obj <= _INT_MAX:
            return int(obj)  # an int subclass such as IntEnum
        data = abs(obj).to_bytes((abs(obj).bit_length() + 7) // 8, "big")
        return msgpack.ExtType(EXT_BIGINT, (b"\x01" if obj < 0 else b"\x00") + data)
    for base in cls.__mro__:
        encoder = _encoders.get(base)
        if encoder is not None:
            # The packer calls default once per value: convert what the encoder returned
            # (a tuple, an Atom, a set, a big int, ...) here.
            value = encoder(obj)
            return value if type(value) in _NATIVE else _default(value)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, tuple):
        return _pack_tuple(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if cls.__module__ == "numpy" and hasattr(obj, "tolist"):
        # numpy's scalars (int64, bool_, ...) and arrays (nested lists): their Python value
        # (without importing numpy: a process that has none never sees its types)
        value = obj.tolist()
        return value if type(value) in _NATIVE else _default(value)
    raise EncodeError(
        f"cannot send a value of type {_type_name(obj)} to Erlang "
        f"(register a converter with erlpy.register_encoder)"
    )


def _pack_tuple(obj: tuple[Any, ...]) -> msgpack.ExtType:
    depth = getattr(_depth, "n", 0)
    if depth >= MAX_TUPLE_DEPTH:
        raise EncodeError(
            f"cannot send value to Erlang: tuples nested deeper than {MAX_TUPLE_DEPTH}"
        )
    # One packer per thread and nesting level: a packer cannot be re-entered, and making a
    # new one per tuple cost more than packing the tuple.
    packers: list[msgpack.Packer] = _depth.__dict__.setdefault("packers", [])
    if depth == len(packers):
        packers.append(new_packer())
    _depth.n = depth + 1
    try:
        return msgpack.ExtType(EXT_TUPLE, packers[depth].pack(list(obj)))
    except ValueError as exc:  # msgpack's nesting limit, inside the tuple
        raise EncodeError(f"cannot send value to Erlang: {exc}") from None
    finally:
        _depth.n = depth


def new_packer() -> msgpack.Packer:
    """A packer with erlpy's mapping. Packers are not thread-safe: one per thread."""
    return msgpack.Packer(
        default=_default, strict_types=True, use_bin_type=True, unicode_errors="surrogateescape"
    )


_local = threading.local()


def thread_packer() -> msgpack.Packer:
    """This thread's packer (packers are not thread-safe)."""
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = new_packer()
    return packer


# A packer keeps the buffer of its largest message: after one this big, start afresh.
_BIG_MESSAGE: Final = 1 << 20


def pack(message: Any) -> bytes:
    """Encode one message with this thread's packer."""
    try:
        data: bytes = thread_packer().pack(message)
    except ValueError as exc:  # msgpack's nesting limit
        raise EncodeError(f"cannot send value to Erlang: {exc}") from None
    if len(data) > _BIG_MESSAGE:
        _local.packer = new_packer()
        check_size(len(data))
    return data


# A bytes or str result at least this long skips the packer (see pack_parts).
_BIG_RESULT: Final = 1 << 16


def pack_parts(message: list[Any]) -> list[bytes]:
    """Encode a message (a short list) whose last element may be a large ``bytes`` or
    ``str``: that one becomes a part of its own, handed to the writer as it is instead of
    being copied into the packer's buffer and out again."""
    last = message[-1]
    if type(last) is bytes and len(last) >= _BIG_RESULT:
        head, payload = b"\xc6", last
    elif type(last) is str and len(last) >= _BIG_RESULT:
        try:
            payload = last.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return [pack(message)]  # which says what cannot travel
        head = b"\xdb"
    else:
        return [pack(message)]
    packer = thread_packer()
    prefix = b"".join([bytes([0x90 | len(message)]), *map(packer.pack, message[:-1]), head])
    check_size(len(prefix) + 4 + len(payload))  # also keeps the length within 4 bytes
    return [prefix + len(payload).to_bytes(4, "big"), payload]


def packb(obj: Any) -> bytes:
    """Encode one value (creates a packer; use :func:`new_packer` on hot paths)."""
    try:
        return new_packer().pack(obj)  # type: ignore[no-any-return]
    except ValueError as exc:
        # msgpack reports too deep nesting as a ValueError; keep one error type for users
        raise EncodeError(f"cannot send value to Erlang: {exc}") from None


def new_unpacker() -> msgpack.Unpacker:
    """A streaming unpacker with erlpy's mapping."""
    return msgpack.Unpacker(
        None,
        raw=False,
        strict_map_key=False,
        ext_hook=_ext_hook,
        max_buffer_size=MAX_MESSAGE,
    )


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode one complete value."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


def unpack_frame(frame: bytes | bytearray | memoryview) -> list[Any]:
    """Decode every message of a frame, all or none.

    A frame holds one message as a rule: decoding it in one call costs a fifth of making
    an Unpacker, which is kept for frames that hold a batch (``unpack_all`` would copy the
    rest of the frame after each of its messages).

    Raises:
        ValueError: the frame ends inside a message (or what decoding garbage raises).
    """
    if not frame:
        return []
    try:
        return [unpackb(frame)]
    except msgpack.ExtraData:
        pass
    unpacker = new_unpacker()
    unpacker.feed(frame)
    messages = list(unpacker)
    try:
        # Refused while a message is incomplete (tell() would count its bytes as read).
        unpacker.read_bytes(0)
    except ValueError:
        raise ValueError(f"frame ends inside a message ({len(frame)} bytes)") from None
    return messages


def message_bounds(frame: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
    """Where each message of a frame starts and ends, found without decoding any value (no
    extension type is made, no map built). Ends early at a message that is cut short or
    is not msgpack at all."""
    splitter = msgpack.Unpacker(None, max_buffer_size=max(len(frame), 1))
    splitter.feed(frame)
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < len(frame):
        try:
            splitter.skip()
        except Exception:
            break
        end = splitter.tell()
        bounds.append((start, end))
        start = end
    return bounds


def unpack_all(data: bytes | bytearray | memoryview) -> list[Any]:
    """Decode every value of a buffer without copying it into an Unpacker first (for large
    frames, which hold one message as a rule)."""
    values = []
    while True:
        try:
            values.append(unpackb(data))
            return values
        except msgpack.ExtraData as extra:
            values.append(extra.unpacked)
            data = extra.extra

"""Tests of erlpy._codec, the Python half of the msgpack mapping (erlpy_codec.erl is the other).

Round trips are checked with :func:`same`, which is stricter than ``==``: a tuple must stay a
tuple, an Atom an Atom, a bool a bool, and NaN a NaN.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from enum import IntEnum
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import erlpy
from erlpy import _codec
from erlpy._codec import packb, unpackb

# Deterministic: the same examples on every run, and nothing written to .hypothesis/.
DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def _no_leaking_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """register_encoder is process-global: each test gets a fresh registry."""
    monkeypatch.setattr(_codec, "_encoders", {})


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            matches = [k for k in b if same(k, key)]
            if len(matches) != 1 or not same(value, b[matches[0]]):
                return False
        return True
    return bool(a == b)


def round_trip(value: Any) -> Any:
    return unpackb(packb(value))


# --------------------------------------------------------------------------- strategies

# Opaque terms carry Erlang's external term format; the tag after 131 picks the class.
OPAQUE_TAGS: dict[type[erlpy.OpaqueTerm], list[int]] = {
    erlpy.Pid: [103, 88],
    erlpy.Reference: [101, 114, 90],
    erlpy.Port: [102, 89, 120],
    erlpy.Fun: [117, 112, 113],
    erlpy.OpaqueTerm: [104, 107, 108, 116],  # tuple, string, list, map keys from Erlang
}


@st.composite
def opaque_terms(draw: st.DrawFn) -> erlpy.OpaqueTerm:
    cls = draw(st.sampled_from(list(OPAQUE_TAGS)))
    tag = draw(st.sampled_from(OPAQUE_TAGS[cls]))
    return cls(bytes([131, tag]) + draw(st.binary(max_size=40)))


atoms = st.text(max_size=20).map(erlpy.Atom)
integers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=-(2**3000), max_value=2**3000),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, -(2**64)]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(
    integers,
    floats,
    st.text(),
    st.binary(),
    st.binary(min_size=500, max_size=1200),
    st.booleans(),
    st.none(),
    atoms,
    opaque_terms(),
)
# Dict keys: hashable, and no NaN (a NaN key is never equal to itself).
hashable = st.recursive(
    st.one_of(
        integers,
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
        st.booleans(),
        st.none(),
        atoms,
        opaque_terms(),
    ),
    lambda children: st.lists(children, max_size=4).map(tuple),
    max_leaves=8,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(hashable, children, max_size=6),
    ),
    max_leaves=30,
)


# --------------------------------------------------------------------------- round trips


@settings(DETERMINISTIC, max_examples=1000)
@given(values)
def test_round_trip_keeps_values_and_types(value: Any) -> None:
    assert same(round_trip(value), value)


@settings(DETERMINISTIC, max_examples=300)
@given(st.lists(values, max_size=5))
def test_a_streaming_unpacker_reads_concatenated_values(items: list[Any]) -> None:
    unpacker = _codec.new_unpacker()
    packer = _codec.new_packer()
    unpacker.feed(b"".join(packer.pack(item) for item in items))
    assert same(list(unpacker), items)


@settings(DETERMINISTIC, max_examples=300)
@given(st.lists(values, max_size=5))
def test_a_frame_decodes_whole_or_not_at_all(items: list[Any]) -> None:
    packer = _codec.new_packer()
    frame = b"".join(packer.pack(item) for item in items)
    assert same(_codec.unpack_frame(frame), items)
    assert same(_codec.unpack_frame(bytearray(frame)), items)
    if frame:
        with pytest.raises(ValueError):
            _codec.unpack_frame(frame + b"\x92\x01")  # ends inside a message


@pytest.mark.parametrize("frame", [b"\x92\x01", b"\xdb\x00", b"\x00\xdb", b"\xc0\x00\x96"])
def test_a_frame_that_ends_inside_a_message_is_refused(frame: bytes) -> None:
    with pytest.raises(ValueError):
        _codec.unpack_frame(frame)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        127,
        128,
        -32,
        -33,
        2**63 - 1,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**100,
        -(10**100),
        1.5,
        -0.0,
        math.inf,
        -math.inf,
        "",
        "héllo",
        b"",
        b"\xff",
        True,
        False,
        None,
        [],
        (),
        {},
        [()],
        ((),),
        ([],),
        {"a": (1, [2])},
        {(1, "a"): [1]},
        erlpy.Atom("ok"),
        erlpy.Atom(""),
        {erlpy.Atom("k"): erlpy.Atom("v")},
    ],
    ids=repr,
)
def test_round_trip_examples(value: Any) -> None:
    assert same(round_trip(value), value)


def test_nan_packs_as_a_float() -> None:
    data = packb(float("nan"))
    assert data[0] == 0xCB  # float 64, which Erlang decodes to the atom nan
    assert math.isnan(unpackb(data))


def test_tuples_stay_tuples_and_lists_stay_lists() -> None:
    value = (1, [2, (3, [4])], ())
    result = round_trip(value)
    assert type(result) is tuple
    assert type(result[1]) is list
    assert type(result[1][1]) is tuple
    assert type(result[1][1][1]) is list
    assert same(result, value)


def test_bigints_use_ext_3_with_sign_byte() -> None:
    assert packb(2**64) == b"\xc7\x0a\x03\x00\x01" + bytes(8)
    assert packb(-(2**63) - 1) == b"\xc7\x09\x03\x01\x80" + bytes(6) + b"\x01"
    assert packb(2**64 - 1) == b"\xcf" + b"\xff" * 8  # still a plain uint 64
    assert unpackb(b"\xd5\x03\x01\x07") == -7


def test_int_subclasses_pack_as_ints() -> None:
    class Color(IntEnum):
        RED = 1

    assert same(round_trip(Color.RED), 1)
    assert same(round_trip([Color.RED, True]), [1, True])


def test_atoms_are_str_and_ext_1() -> None:
    atom = erlpy.Atom("hello")
    assert isinstance(atom, str)
    assert atom == "hello"
    assert repr(atom) == "Atom('hello')"
    assert packb(atom) == b"\xc7\x05\x01hello"
    assert type(unpackb(b"\xc7\x05\x01hello")) is erlpy.Atom
    # a plain str with the same text is a str, not an atom
    assert type(round_trip("hello")) is str


def test_opaque_terms_compare_by_class_and_bytes() -> None:
    pid = erlpy.Pid(b"\x83Xabc")
    assert pid == erlpy.Pid(b"\x83Xabc")
    assert hash(pid) == hash(erlpy.Pid(b"\x83Xabc"))
    assert pid != erlpy.Reference(b"\x83Xabc")
    assert pid.external_format == b"\x83Xabc"
    assert packb(pid) == b"\xc7\x05\x04\x83Xabc"
    assert "Pid" in repr(pid)
    for cls, tags in OPAQUE_TAGS.items():
        for tag in tags:
            term = cls(bytes([131, tag, 1, 2]))
            assert same(round_trip(term), term)
    assert type(unpackb(b"\xd4\x04\x83")) is erlpy.OpaqueTerm  # too short to classify


def test_sets_become_lists() -> None:
    assert sorted(round_trip({3, 1, 2})) == [1, 2, 3]
    assert type(round_trip(frozenset({1}))) is list
    assert same(round_trip({"k": {5}}), {"k": [5]})


def test_bytearray_and_memoryview_become_bytes() -> None:
    assert same(round_trip(bytearray(b"ab")), b"ab")
    assert same(round_trip(memoryview(b"cd")), b"cd")


def test_str_and_dict_subclasses_become_plain() -> None:
    class Name(str):
        pass

    class Record(dict[str, int]):
        pass

    assert same(round_trip(Name("x")), "x")
    assert same(round_trip(Record(a=1)), {"a": 1})


# --------------------------------------------------------------------------- ext 5


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", ""),
        (b"abc", "abc"),
        ("héllo wörld".encode(), "héllo wörld"),
        (b"a" * 70000, "a" * 70000),
        (b"\xff", b"\xff"),
        (b"\xed\xa0\x80", b"\xed\xa0\x80"),  # an encoded surrogate is not UTF-8
        (b"\xc0\x80", b"\xc0\x80"),  # overlong
        (b"a" * 600 + b"\xe6", b"a" * 600 + b"\xe6"),  # truncated at the end
    ],
    ids=["empty", "ascii", "accents", "long", "ff", "surrogate", "overlong", "truncated"],
)
def test_ext_5_is_str_when_valid_utf8_else_bytes(payload: bytes, expected: Any) -> None:
    assert same(unpackb(msgpack.packb(msgpack.ExtType(5, payload))), expected)


@settings(DETERMINISTIC, max_examples=500)
@given(st.binary(max_size=2000))
def test_ext_5_agrees_with_python_utf8(payload: bytes) -> None:
    result = unpackb(msgpack.packb(msgpack.ExtType(5, payload)))
    try:
        assert same(result, payload.decode("utf-8"))
    except UnicodeDecodeError:
        assert same(result, payload)


# --------------------------------------------------------------------------- errors


class Opaque:
    pass


def test_unknown_type_raises_encode_error_naming_it() -> None:
    with pytest.raises(erlpy.EncodeError) as info:
        packb(Opaque())
    message = str(info.value)
    assert f"{Opaque.__module__}.Opaque" in message
    assert "register_encoder" in message
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    "value",
    [
        [1, Opaque()],
        {"k": (Opaque(),)},
        {Opaque(): 1},
        ((((Opaque(),),),),),
    ],
    ids=["in list", "in tuple in dict", "as key", "deep in tuples"],
)
def test_unknown_type_nested_raises_encode_error(value: Any) -> None:
    with pytest.raises(erlpy.EncodeError, match="Opaque"):
        packb(value)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (object(), "object"),
        (1j, "complex"),
        (iter([]), "list_iterator"),
        (print, "builtin_function_or_method"),
    ],
    ids=["object", "complex", "iterator", "builtin"],
)
def test_builtin_types_are_named_without_module(value: Any, name: str) -> None:
    with pytest.raises(erlpy.EncodeError, match=f"type {name} "):
        packb(value)


def test_generators_are_not_values() -> None:
    with pytest.raises(erlpy.EncodeError, match="generator"):
        packb(x for x in [1])


def test_lone_surrogate_raises_encode_error() -> None:
    with pytest.raises(erlpy.EncodeError):
        packb("\ud800")


def test_deep_list_raises_encode_error() -> None:
    value: Any = 0
    for _ in range(100_000):
        value = [value]
    with pytest.raises(erlpy.EncodeError, match="recursion limit"):
        packb(value)


def test_deep_dict_raises_encode_error() -> None:
    value: Any = 0
    for _ in range(100_000):
        value = {"k": value}
    with pytest.raises(erlpy.EncodeError):
        packb(value)


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter: a C stack overflow must fail one test, not pytest."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# The worker raises the recursion limit to erlpy._process.RECURSION_LIMIT; these run under
# the same limit, in a child interpreter.
def test_deep_tuple_raises_encode_error_instead_of_crashing() -> None:
    result = run_isolated(
        """
        import sys
        from erlpy._process import RECURSION_LIMIT
        sys.setrecursionlimit(RECURSION_LIMIT)
        import erlpy
        from erlpy._codec import packb
        value = 0
        for _ in range(100_000):
            value = (value,)
        try:
            packb(value)
        except erlpy.EncodeError as exc:
            print("EncodeError", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("EncodeError")


def test_tuples_nested_500_deep_round_trip_without_crashing() -> None:
    # Erlang sends up to 500 nested containers (erlpy_codec's limit), any of them tuples.
    result = run_isolated(
        """
        import sys
        from erlpy._process import RECURSION_LIMIT
        sys.setrecursionlimit(RECURSION_LIMIT)
        from erlpy._codec import packb, unpackb
        for depth in (9, 200, 500, 512):
            value = 0
            for _ in range(depth):
                value = (value,)
            assert unpackb(packb(value)) == value, depth
            mixed = 0
            for i in range(depth):
                mixed = (mixed,) if i % 2 else [mixed]
            assert unpackb(packb(mixed)) == mixed, depth
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_nested_tuple_with_extra_bytes_is_refused() -> None:
    bad = msgpack.packb(msgpack.ExtType(2, msgpack.packb([1]) + b"\x00"))
    with pytest.raises(ValueError):
        unpackb(bad)
    for _ in range(20):  # deeper than the tuples unpackb handles on the C stack
        bad = msgpack.packb(msgpack.ExtType(2, b"\x91" + bad))
    with pytest.raises(ValueError):
        unpackb(bad)


# --------------------------------------------------------------------------- register_encoder


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y


class Point3(Point):
    def __init__(self, x: int, y: int, z: int) -> None:
        super().__init__(x, y)
        self.z = z


def test_register_encoder_for_a_class_and_its_subclasses() -> None:
    erlpy.register_encoder(Point, lambda p: {"x": p.x, "y": p.y})
    assert same(round_trip(Point(1, 2)), {"x": 1, "y": 2})
    assert same(round_trip([Point3(1, 2, 3)]), [{"x": 1, "y": 2}])
    assert same(round_trip({"p": (Point(0, 0),)}), {"p": ({"x": 0, "y": 0},)})


def test_most_specific_encoder_wins() -> None:
    erlpy.register_encoder(Point, lambda p: "point")
    erlpy.register_encoder(Point3, lambda p: "point3")
    assert same(round_trip([Point(1, 2), Point3(1, 2, 3)]), ["point", "point3"])


@pytest.mark.parametrize(
    ("converted", "expected"),
    [
        ((1, 2), (1, 2)),
        (erlpy.Atom("point"), erlpy.Atom("point")),
        (2**70, 2**70),
        ({7}, [7]),
        (frozenset(), []),
        (b"raw", b"raw"),
        (None, None),
        (1.5, 1.5),
        ([(1,)], [(1,)]),
        (erlpy.Pid(b"\x83Xp"), erlpy.Pid(b"\x83Xp")),
    ],
    ids=repr,
)
def test_encoder_may_return_any_sendable_value(converted: Any, expected: Any) -> None:
    erlpy.register_encoder(Point, lambda p: converted)
    assert same(round_trip(Point(0, 0)), expected)


def test_encoder_returning_another_registered_type() -> None:
    erlpy.register_encoder(Point, lambda p: (erlpy.Atom("point"), p.x, p.y))
    erlpy.register_encoder(Point3, lambda p: [Point(p.x, p.y), p.z])
    assert same(round_trip(Point3(1, 2, 3)), [(erlpy.Atom("point"), 1, 2), 3])


def test_encoder_returning_an_unsendable_value_raises_encode_error() -> None:
    erlpy.register_encoder(Point, lambda p: Opaque())
    with pytest.raises(erlpy.EncodeError, match="Opaque"):
        packb(Point(0, 0))


def test_failing_encoder_error_reaches_the_caller() -> None:
    def broken(_: Point) -> Any:
        raise RuntimeError("no way")

    erlpy.register_encoder(Point, broken)
    with pytest.raises(RuntimeError, match="no way"):
        packb(Point(0, 0))


# --------------------------------------------------------------------------- hostile input


def unpack_outcome(data: bytes) -> None:
    """unpackb returns a value or raises an ordinary exception; it never hangs or crashes."""
    try:
        unpackb(data)
    except Exception:  # any exception is an acceptable refusal
        pass


@settings(DETERMINISTIC, max_examples=3000)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_unpackb(data: bytes) -> None:
    unpack_outcome(data)


@settings(DETERMINISTIC, max_examples=2000)
@given(st.integers(min_value=-128, max_value=127), st.binary(max_size=60))
def test_random_ext_payloads_never_crash_unpackb(code: int, payload: bytes) -> None:
    # ext 8 header by hand: msgpack.ExtType refuses the reserved negative codes
    unpack_outcome(bytes([0xC7, len(payload), code & 0xFF]) + payload)


@settings(DETERMINISTIC, max_examples=1000)
@given(values, st.data())
def test_truncated_or_corrupted_encodings_never_crash_unpackb(
    value: Any, data: st.DataObject
) -> None:
    encoded = packb(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    unpack_outcome(encoded[:cut])
    if encoded:
        at = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        byte = data.draw(st.integers(min_value=0, max_value=255))
        unpack_outcome(encoded[:at] + bytes([byte]) + encoded[at + 1 :])


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\xdf\xff\xff\xff\xff",  # map32 likewise
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        b"\xc9\xff\xff\xff\xff\x05",  # ext32 likewise
        b"\xc1",  # never used
        b"\xd4\x03",  # truncated ext
        b"\xc7\x00\x03",  # bigint without sign byte
        b"\xc7\x00\x01",  # empty atom name is fine ...
        b"\xd4\x01\xff",  # ... but not an atom name that is not UTF-8
        b"\xd4\x02\x01",  # tuple payload that is not an array
        b"\xd4\x09\x00",  # unknown ext type
        b"\x91" * 5000,  # nesting deeper than the unpacker's stack
    ],
    ids=repr,
)
def test_hostile_inputs_raise_or_decode(data: bytes) -> None:
    unpack_outcome(data)


def test_unknown_ext_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown msgpack extension type 9"):
        unpackb(b"\xd4\x09\x00")


def iter_all_prefixes(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[:i]


def test_every_prefix_of_a_valid_encoding_is_refused() -> None:
    value = {"a": [1, 2.5, (erlpy.Atom("x"), b"\xff" * 600, 2**80)], "b": erlpy.Pid(b"\x83Xq")}
    encoded = packb(value)
    for prefix in iter_all_prefixes(encoded):
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            unpackb(prefix)


class _NumpyLike:
    """Stands for a numpy scalar or array: numpy is not a dependency of erlpy's tests."""

    __module__ = "numpy"

    def __init__(self, value: Any) -> None:
        self.value = value

    def tolist(self) -> Any:
        return self.value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, 7),
        (True, True),
        ([[1, 2], [3, 4]], [[1, 2], [3, 4]]),
        (1 << 70, 1 << 70),
        ((1, "a"), (1, "a")),
    ],
)
def test_numpy_values_travel_as_their_python_value(value: Any, expected: Any) -> None:
    # np.int64, np.bool_ and arrays are none of Python's types (np.float64 is a float)
    assert unpackb(packb(_NumpyLike(value))) == expected
    assert unpackb(packb({"scores": [_NumpyLike(value)]})) == {"scores": [expected]}


def test_real_numpy_values_travel() -> None:
    np = pytest.importorskip("numpy")
    result = {"argmax": np.argmax([1, 5, 3]), "ok": np.bool_(True), "a": np.arange(3)}
    assert unpackb(packb(result)) == {"argmax": 1, "ok": True, "a": [0, 1, 2]}

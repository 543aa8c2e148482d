"""erlpy: the Python side of the erlpy bridge between Erlang/Elixir and Python.

User code never has to import erlpy unless it calls back into Erlang
(:mod:`erlpy.erlang`), composes async streams (:mod:`erlpy.streams`), or serves many
callers: :func:`batched`, :func:`time_left` and :func:`deadline` (docs/serving.md).
"""

from ._batched import batched as batched
from ._codec import Atom as Atom
from ._codec import EncodeError as EncodeError
from ._codec import Fun as Fun
from ._codec import OpaqueTerm as OpaqueTerm
from ._codec import Pid as Pid
from ._codec import Port as Port
from ._codec import Reference as Reference
from ._codec import register_encoder as register_encoder
from ._deadline import deadline as deadline
from ._deadline import time_left as time_left
from ._errors import Interrupted as Interrupted

# Public classes show (and report errors) under their public name, erlpy.X.
for _cls in (Atom, EncodeError, Fun, Interrupted, OpaqueTerm, Pid, Port, Reference):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "Atom",
    "EncodeError",
    "Fun",
    "Interrupted",
    "OpaqueTerm",
    "Pid",
    "Port",
    "Reference",
    "batched",
    "deadline",
    "register_encoder",
    "time_left",
]

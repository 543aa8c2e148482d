"""Message kinds of the wire protocol (docs/internals.md). Each message is a msgpack array
whose first element is one of these numbers; a frame holds one or more messages.

Every request (CALL to STREAM_EVAL_IN, not SETUP) may end with one more field, Timeout:
the milliseconds its caller has left, or nil for none (``erlpy.time_left()``)."""

from typing import Final

# Erlang -> Python
CALL: Final = 1  # [CALL, Id, Module, Function, Args, Kwargs]
EVAL: Final = 2  # [EVAL, Id, Code, Locals]
EXEC: Final = 3  # [EXEC, Id, Code]
STREAM_CALL: Final = 4  # [STREAM_CALL, Id, Module, Function, Args, Kwargs, Credit, Input]
STREAM_EVAL: Final = 5  # [STREAM_EVAL, Id, Code, Locals, Credit]
CANCEL: Final = 6  # [CANCEL, Id]
CREDIT: Final = 7  # [CREDIT, Id, N]
INPUT: Final = 8  # [INPUT, Id, Values]
INPUT_CLOSE: Final = 9  # [INPUT_CLOSE, Id]
REPLY: Final = 10  # [REPLY, CallbackId, Ok, ValueOrReason]
SETUP: Final = 11  # [SETUP, Id, WorkerPid, Limits]: first message; answered like a call
RELEASE: Final = 12  # [RELEASE, Ids]: handles Python may drop
CALL_REF: Final = 13  # [CALL_REF, Id, Module, Function, Args, Kwargs]: the result is kept
EVAL_REF: Final = 14  # [EVAL_REF, Id, Code, Locals]: the result is kept
EVAL_IN: Final = 15  # [EVAL_IN, Id, Code, Locals, Session, Ref]: in a session's namespace
EXEC_IN: Final = 16  # [EXEC_IN, Id, Code, Session]
STREAM_EVAL_IN: Final = 17  # [STREAM_EVAL_IN, Id, Code, Locals, Credit, Session]
STOP: Final = 18  # [STOP]: the worker is stopping; exit now (the supervisor ends the rest)

# Python -> Erlang
READY: Final = 0  # [READY, Info]
RESULT: Final = 1  # [RESULT, Id, Value]
ERROR: Final = 2  # [ERROR, Id, Type, Message, Traceback]: a Python exception
DATA: Final = 3  # [DATA, Id, Items]; Items packed in a bin for a stream collected whole
DONE: Final = 4  # [DONE, Id]
LOG: Final = 5  # [LOG, Level, Text]
CALLBACK: Final = 6  # [CALLBACK, CallbackId, Name, Args]
SEND: Final = 7  # [SEND, Pid, Term]
FAIL: Final = 8  # [FAIL, Id, Reason]: an erlpy error given as an Erlang term
CALLBACK_CANCEL: Final = 9  # [CALLBACK_CANCEL, CallbackId]
BATCHED: Final = 10  # [BATCHED, Module, Function, MaxSize]: an erlpy.batched function
FATAL: Final = 99  # [FATAL, Detail]: the worker cannot run

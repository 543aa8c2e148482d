%% Message kinds of the wire protocol; python/erlpy/_protocol.py has the same numbers.

%% Erlang -> Python. Every request (CALL to STREAM_EVAL_IN, not SETUP) may end with one
%% more field: the milliseconds its caller has left, or nil for none.
-define(OP_CALL, 1).
-define(OP_EVAL, 2).
-define(OP_EXEC, 3).
-define(OP_STREAM_CALL, 4).
-define(OP_STREAM_EVAL, 5).
-define(OP_CANCEL, 6).
-define(OP_CREDIT, 7).
-define(OP_INPUT, 8).
-define(OP_INPUT_CLOSE, 9).
-define(OP_REPLY, 10).
-define(OP_SETUP, 11).
-define(OP_RELEASE, 12).
-define(OP_CALL_REF, 13).
-define(OP_EVAL_REF, 14).
-define(OP_EVAL_IN, 15).
-define(OP_EXEC_IN, 16).
-define(OP_STREAM_EVAL_IN, 17).
-define(OP_STOP, 18).

%% Python -> Erlang
-define(OP_READY, 0).
-define(OP_RESULT, 1).
-define(OP_ERROR, 2).
-define(OP_DATA, 3).
-define(OP_DONE, 4).
-define(OP_LOG, 5).
-define(OP_CALLBACK, 6).
-define(OP_SEND, 7).
-define(OP_FAIL, 8).
-define(OP_CALLBACK_CANCEL, 9).
-define(OP_BATCHED, 10).
-define(OP_FATAL, 99).

%% The largest frame {packet, 4} can carry.
-define(MAX_FRAME, 16#ffffffff).

%% Items Python may run ahead of the worker on the streams without a window of one owner,
%% all together (erlpy_owner shares it out), and at least on each of them.
-define(STREAM_CREDIT, 8192).
-define(MIN_CREDIT, 32).
%% The credit such a stream starts with, before the worker has given it its share.
-define(START_CREDIT, 32).
%% A local owner with more messages than this in its mailbox gets no more items until it
%% catches up (streams without a window; with a window the owner sets the pace itself).
-define(OWNER_BACKLOG, 8000).
%% The credit of a stream that the caller collects whole (py:stream, py:stream_eval).
-define(COLLECT_CREDIT, 0).

%% A handle (docs/state.md): an object kept in the Python of worker `Worker' (number
%% `Index' of pool `Pool') under the id of the request that made it. Ids are unique in
%% the node, so a restarted Python never holds the id of an object of the one before.
-define(HANDLE(Pool, Worker, Index, Id), {'$erlpy_ref', Pool, Worker, Index, Id}).
%% Process dictionary key: the worker of the handles met while encoding a request.
-define(HANDLE_KEY, '$erlpy_handle_worker').
%% A session: the handle of its namespace.
-define(SESSION(Handle), {'$erlpy_session', Handle}).

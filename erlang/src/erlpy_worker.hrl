%% The state of an erlpy_worker, shared by erlpy_worker (the state machine) and
%% erlpy_worker_io (what it does: requests, effects, Python's messages, output).

-record(data, {
    pool :: atom(),
    index :: pos_integer(),
    meta :: erlpy_pool:meta(),
    none_atom :: atom(),
    new_atom :: erlpy_codec:new_atom_fun(),
    port :: port() | undefined,
    %% The port's process: Python's supervisor (_boot.py), alone in its process group.
    os_pid :: non_neg_integer() | undefined,
    %% Python's own process, the supervisor's child, as its READY said (py:info's os_pid).
    python_pid :: non_neg_integer() | undefined,
    %% In the environment of everything this Python starts (erlpy_python:mark/0).
    mark = <<>> :: binary(),
    python = <<>> :: binary(),
    start_error :: term(),
    table = erlpy_inflight:new() :: erlpy_inflight:table(),
    %% Flow control of the streams each local owner has here (erlpy_owner).
    owners = #{} :: #{pid() => erlpy_owner:owner()},
    %% Processes running callbacks from Python into Erlang, by callback id.
    callbacks = #{} :: #{integer() => pid()},
    %% Calls made with `return => ref' in flight, by request id: the owner of the handle.
    ref_calls = #{} :: #{integer() => pid()},
    %% Handles this Python holds: owner monitor by handle id, and the other way round.
    handles = #{} :: #{integer() => reference()},
    handle_monitors = #{} :: #{reference() => integer()},
    %% How many entries of the pool's exec log this Python has run (or has queued).
    execs = 0 :: non_neg_integer(),
    %% Messages for Python, newest first: written as one frame once the mailbox is drained.
    out = [] :: [iodata()],
    out_size = 0 :: non_neg_integer(),
    %% gen_statem timeouts asked for while handling the current event, newest first.
    actions = [] :: [gen_statem:action()],
    restarts = 0 :: non_neg_integer(),
    retry = 1000 :: pos_integer(),
    %% Requests finished by this Python process, for the pool's max_requests.
    served = 0 :: non_neg_integer(),
    recycled = 0 :: non_neg_integer(),
    %% The pool steers callers away from this worker (erlpy_pool:draining/3), which must
    %% be undone exactly once.
    steered = false :: boolean(),
    %% Deaths of Python while starting since the worker was last ready (undefined: it
    %% never was): a few are crashes to restart from, more mean Python cannot start.
    start_crashes :: undefined | non_neg_integer()
}).

%% @private
%% @doc The caller's side of a request to a worker: what runs in the process that calls
%% `py' (send the request, wait for its reply, cancel or abandon it at a timeout).
%%
%% Callers talk to the worker with plain messages and a monitor alias, so a late reply can
%% never reach a caller that gave up: at a timeout the caller removes the monitor, which
%% deactivates the alias, and then tells the worker to cancel. erlpy_worker re-exports
%% these functions; the messages are the worker's interface (erlpy_worker, erlpy_inflight).
-module(erlpy_caller).

-export([await_ready/2, info/1, call/4, call_ref/5, exec/3, collect/5, stream_start/4, stream_command/2,
         exec_sync/1]).

-type id() :: pos_integer().

%% @doc Wait until the worker's Python is up (or failed to start).
-spec await_ready(pid(), timeout()) -> ok | {error, term()}.
await_ready(Worker, Timeout) ->
    try
        gen_statem:call(Worker, await_ready, Timeout)
    catch
        exit:{timeout, _} -> {error, {python_start_failed, start_timeout}};
        exit:{Reason, _} -> {error, {python_start_failed, Reason}}
    end.

-spec info(pid()) -> map().
info(Worker) ->
    gen_statem:call(Worker, info).

%% @doc Run one request (call, eval or exec) and wait for its reply.
-spec call(pid(), id(), iodata(), timeout()) -> {ok, term()} | {error, term()}.
call(Worker, Id, Request, Timeout) ->
    request(Worker, {'$erlpy_call', Id, {self(), Request}}, Id, Timeout).

%% @doc Run a stream and collect everything it yields. The worker forwards the packed
%% chunks Python sends; `Decode(Chunk, Acc)' adds a chunk's items to `Acc' in reverse
%% order, here in the caller, while Python makes the next chunk.
%% @doc A call whose result stays in Python as a handle owned by `Owner'.
-spec call_ref(pid(), id(), iodata(), pid(), timeout()) -> {ok, term()} | {error, term()}.
call_ref(Worker, Id, Request, Owner, Timeout) ->
    request(Worker, {'$erlpy_call', Id, {self(), Request, {ref, Owner}}}, Id, Timeout).

-spec collect(pid(), id(), iodata(), timeout(), Decode) -> {ok, [term()]} | {error, term()} when
    Decode :: fun((binary(), [term()]) -> [term()]).
collect(Worker, Id, Request, Timeout, Decode) ->
    %% Many messages come through this alias, so it stays active until unaliased.
    Alias = erlang:monitor(process, Worker, [{alias, explicit_unalias}]),
    Worker ! {'$erlpy_collect', Alias, Id, {self(), Request}},
    Result = collect_loop(Worker, Alias, Id, deadline(Timeout), Decode, []),
    unalias(Alias),
    erlang:demonitor(Alias, [flush]),
    flush_alias(Alias),
    Result.

%% The deadline holds however fast chunks arrive: it is checked before each one.
-spec collect_loop(pid(), reference(), id(), integer() | infinity, Decode, [term()]) ->
    {ok, [term()]} | {error, term()} when Decode :: fun((binary(), [term()]) -> [term()]).
collect_loop(Worker, Alias, Id, Deadline, Decode, Acc) ->
    receive
        {Alias, {chunk, Chunk}} ->
            case remaining(Deadline) of
                0 ->
                    collect_timeout(Worker, Id);
                _ ->
                    try Decode(Chunk, Acc) of
                        Acc1 -> collect_loop(Worker, Alias, Id, Deadline, Decode, Acc1)
                    catch
                        throw:{badarg, Reason} ->
                            Worker ! {'$erlpy_cancel', Id},
                            {error, {badarg, Reason}}
                    end
            end;
        {Alias, done} ->
            {ok, lists:reverse(Acc)};
        {Alias, {error, _} = Error} ->
            Error;
        {'DOWN', Alias, process, _, Reason} ->
            {error, {worker_exited, Reason}}
    after remaining(Deadline) ->
        collect_timeout(Worker, Id)
    end.

-spec collect_timeout(pid(), id()) -> {error, timeout}.
collect_timeout(Worker, Id) ->
    Worker ! {'$erlpy_cancel', Id},
    {error, timeout}.

%% Messages that came through the alias before it was deactivated (a request given up).
-spec flush_alias(reference()) -> ok.
flush_alias(Alias) ->
    receive
        {Alias, _} -> flush_alias(Alias)
    after 0 -> ok
    end.

%% @doc Start a stream whose events go to `Owner'; returns its reference at once.
%%
%% A caller that times out asks the worker what became of its request, and waits for the
%% answer (the worker answers at once): a stream that had started is its caller's after
%% all ({ok, Ref}), one still waiting for Python is dropped ({error, timeout}). Either
%% way no message ever arrives for a reference the caller did not get.
-spec stream_start(pid(), id(), map(), timeout()) -> {ok, reference()} | {error, term()}.
stream_start(Worker, Id, #{owner := _, request := _} = Stream, Timeout) ->
    Alias = send_request(Worker, {'$erlpy_stream', Id, Stream}),
    wait_reply(Worker, Alias, Id, Timeout, abandon).

%% @doc Send a command to a stream's worker through the stream reference.
-spec stream_command(reference(), cancel | close | {ack, pos_integer()} | {send, term()}) -> ok.
stream_command(Ref, Command) ->
    Ref ! {'$erlpy_stream_cmd', Ref, Command},
    ok.

%% @doc Run the pool's `exec' code, the `Index'th entry of its exec log, on several
%% workers at once. A worker that runs it remembers so, and runs no entry twice.
-spec exec([pid()], {id(), iodata(), pos_integer()}, timeout()) ->
    [{ok, term()} | {error, term()}].
exec(Workers, {Id, Request, Index}, Timeout) ->
    Sent = [{W, send_request(W, {'$erlpy_exec', Id, {self(), Request, Index}})} || W <- Workers],
    Deadline = deadline(Timeout),
    [wait_reply(W, Alias, Id, remaining(Deadline)) || {W, Alias} <- Sent].

%% @doc The pool's exec log grew: a worker whose Python started after it ran an entry, and
%% so replayed a log without it, runs what it misses.
-spec exec_sync(pid()) -> ok.
exec_sync(Worker) ->
    Worker ! '$erlpy_exec_sync',
    ok.

-spec deadline(timeout()) -> integer() | infinity.
deadline(infinity) -> infinity;
deadline(Timeout) -> erlang:monotonic_time(millisecond) + Timeout.

-spec remaining(integer() | infinity) -> timeout().
remaining(infinity) -> infinity;
remaining(Deadline) -> max(0, Deadline - erlang:monotonic_time(millisecond)).

-spec request(pid(), tuple(), id(), timeout()) -> {ok, term()} | {error, term()}.
request(Worker, Message, Id, Timeout) ->
    wait_reply(Worker, send_request(Worker, Message), Id, Timeout).

%% The reply comes through a monitor alias: after a timeout the alias is gone, so a late
%% reply is dropped by the runtime instead of landing in the caller's mailbox.
-spec send_request(pid(), tuple()) -> reference().
send_request(Worker, Message) ->
    Alias = erlang:monitor(process, Worker, [{alias, reply_demonitor}]),
    Worker ! erlang:insert_element(2, Message, Alias),
    Alias.

-spec wait_reply(pid(), reference(), id(), timeout()) -> {ok, term()} | {error, term()}.
wait_reply(Worker, Alias, Id, Timeout) ->
    wait_reply(Worker, Alias, Id, Timeout, cancel).

%% At a timeout a call is cancelled; a stream start is abandoned (see stream_start/4).
-spec wait_reply(pid(), reference(), id(), timeout(), cancel | abandon) ->
    {ok, term()} | {error, term()}.
wait_reply(Worker, Alias, Id, Timeout, OnTimeout) ->
    receive
        {Alias, Reply} ->
            Reply;
        {'DOWN', Alias, process, _, Reason} ->
            {error, {worker_exited, Reason}}
    after Timeout ->
        timed_out(Worker, Alias, Id, OnTimeout)
    end.

-spec timed_out(pid(), reference(), id(), cancel | abandon) -> {ok, term()} | {error, term()}.
timed_out(Worker, Alias, Id, cancel) ->
    erlang:demonitor(Alias, [flush]),
    receive
        {Alias, Reply} -> Reply
    after 0 ->
        %% No answer came, and none can now (the alias is gone): the worker stops the
        %% request, or lets go of what it made for it (a handle, for return => ref).
        Worker ! {'$erlpy_cancel', Id},
        {error, timeout}
    end;
timed_out(Worker, Alias, Id, abandon) ->
    %% The worker answers at once, whatever its state.
    Worker ! {'$erlpy_abandon', Id},
    wait_reply(Worker, Alias, Id, infinity, abandon).

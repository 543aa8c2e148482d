%% @private
%% @doc One Python worker: a gen_statem that owns exactly one port and the requests in
%% flight on it.
%%
%% States: `starting' (Python is booting, or replaying the pool's `init' and `exec'
%% code; requests wait), `ready', and `failed' (Python could not start; requests get the
%% start error and a retry is scheduled). When Python dies, every request in flight gets
%% exactly one answer, the port is reopened and the worker goes back to `starting': a
%% Python crash is an expected event, not an Erlang failure, so it does not count against
%% the supervisor's restart intensity.
%%
%% Callers talk to the worker with plain messages and a monitor alias (see request/4), so
%% a late reply can never reach a caller that gave up. Streams are addressed through an
%% alias of this process, which is the stream reference the owner sees.
-module(erlpy_worker).
-behaviour(gen_statem).

-export([start_link/3, await_ready/2, info/1]).
-export([call/4, exec/3, collect/5, stream_start/4, stream_command/2, exec_sync/1]).
-export([init/1, callback_mode/0, handle_event/4, terminate/3]).

-include("erlpy_protocol.hrl").
-include_lib("kernel/include/logger.hrl").

-type state() :: starting | ready | failed.
-type id() :: pos_integer().
-type request() :: {'$erlpy_call' | '$erlpy_collect' | '$erlpy_stream' | '$erlpy_exec',
                    reference(), id(), term()}.
-define(IS_REQUEST(Tag), (Tag =:= '$erlpy_call' orelse Tag =:= '$erlpy_collect' orelse
                          Tag =:= '$erlpy_stream' orelse Tag =:= '$erlpy_exec')).

-record(call, {
    alias :: reference() | {internal, setup | init | exec},
    %% The caller: a caller that dies (killed, not timed out) cancels its request.
    monitor :: reference() | undefined,
    cancelled = false :: boolean(),
    %% For the pool's `exec': the place of its code in the pool's exec log.
    exec :: pos_integer() | undefined
}).

-record(entry, {
    stream :: erlpy_stream:stream(),
    monitor :: reference() | undefined,
    idle :: timeout(),
    idle_timer :: reference() | undefined,
    %% Why the stream is being stopped, once we asked Python to stop it.
    stopping = false :: false | cancelled | timeout | owner_down | {badarg, term()},
    %% Started with `input => true' (stream_send and stream_close allowed).
    input = false :: boolean(),
    %% Paced by its owner's backlog (a local owner, no window): see erlpy_owner.
    gated = false :: boolean()
}).

-record(data, {
    pool :: atom(),
    index :: pos_integer(),
    meta :: erlpy_pool:meta(),
    new_atom :: erlpy_codec:new_atom_fun(),
    port :: port() | undefined,
    os_pid :: non_neg_integer() | undefined,
    python = <<>> :: binary(),
    booted = false :: boolean(),
    pending_init = 0 :: non_neg_integer(),
    start_error :: term(),
    calls = #{} :: #{id() => #call{}},
    streams = #{} :: #{id() => #entry{}},
    aliases = #{} :: #{reference() => id()},
    monitors = #{} :: #{reference() => id()},
    grace = #{} :: #{id() => reference()},
    owners = #{} :: #{pid() => erlpy_owner:owner()},
    %% Requests that came while Python was starting, oldest first: they go to Python once
    %% it is ready, and a caller that gives up first takes its request back.
    waiting = queue:new() :: queue:queue(request()),
    %% Processes running callbacks from Python into Erlang, by callback id.
    callbacks = #{} :: #{integer() => pid()},
    %% How many entries of the pool's exec log this Python has run (or has queued).
    execs = 0 :: non_neg_integer(),
    out = [] :: [iodata()],
    out_size = 0 :: non_neg_integer(),
    kill_reason :: term(),
    restarts = 0 :: non_neg_integer(),
    retry = 1000 :: pos_integer(),
    %% Requests finished by this Python process, for the pool's max_requests.
    served = 0 :: non_neg_integer(),
    recycled = 0 :: non_neg_integer(),
    draining = false :: boolean(),
    %% Deaths of Python while starting since the worker was last ready (undefined: it
    %% never was): a few are crashes to restart from, more mean Python cannot start.
    start_crashes :: undefined | non_neg_integer()
}).

-define(MAX_RETRY, 30000).

%%====================================================================
%% API (used by py and erlpy_pool)
%%====================================================================

-spec start_link(atom(), pos_integer(), erlpy_pool:meta()) -> gen_statem:start_ret().
start_link(Pool, Index, Meta) ->
    gen_statem:start_link(?MODULE, {Pool, Index, Meta}, []).

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
    Worker ! {'$erlpy_cancel', Id},
    receive
        {Alias, Reply} -> Reply
    after 0 -> {error, timeout}
    end;
timed_out(Worker, Alias, Id, abandon) ->
    %% The worker answers at once, whatever its state.
    Worker ! {'$erlpy_abandon', Id},
    wait_reply(Worker, Alias, Id, infinity, abandon).

%%====================================================================
%% gen_statem
%%====================================================================

-spec callback_mode() -> gen_statem:callback_mode_result().
callback_mode() -> handle_event_function.

-spec init({atom(), pos_integer(), erlpy_pool:meta()}) -> gen_statem:init_result(state()).
init({Pool, Index, Meta}) ->
    process_flag(trap_exit, true),
    erlpy_pool:register_worker(Meta, Index, self()),
    D = #data{pool = Pool, index = Index, meta = Meta, new_atom = erlpy_pool:new_atom_fun(Meta)},
    {State, D1} = boot(D),
    {ok, State, D1}.

-spec handle_event(gen_statem:event_type(), term(), state(), #data{}) ->
    gen_statem:event_handler_result(state()).
%% --- port traffic, in every state
handle_event(info, {Port, {data, Frame}}, State, #data{port = Port} = D) ->
    after_frame(State, handle_frame(Frame, D));
handle_event(info, {Port, {exit_status, Status}}, State, #data{port = Port} = D) ->
    python_exited(State, {exit_status, Status}, D);
handle_event(info, {'EXIT', Port, Reason}, State, #data{port = Port} = D) ->
    python_exited(State, {port_closed, Reason}, D);
handle_event(info, {'EXIT', _, _}, _, _) ->
    keep_state_and_data;
handle_event(info, {OldPort, _}, _, _) when is_port(OldPort) ->
    keep_state_and_data;
handle_event(info, '$erlpy_flush', _, D) ->
    {keep_state, flush(D)};
%% --- queries
handle_event({call, _From}, await_ready, starting, _) ->
    {keep_state_and_data, postpone};
handle_event({call, From}, await_ready, ready, _) ->
    {keep_state_and_data, {reply, From, ok}};
handle_event({call, From}, await_ready, failed, D) ->
    {keep_state_and_data, {reply, From, {error, {python_start_failed, D#data.start_error}}}};
handle_event({call, From}, info, State, D) ->
    {keep_state_and_data, {reply, From, worker_info(State, D)}};
%% --- requests wait while Python starts, and fail while it cannot start
handle_event(info, {Tag, _, _, _} = Request, starting, D) when ?IS_REQUEST(Tag) ->
    {keep_state, D#data{waiting = queue:in(Request, D#data.waiting)}};
handle_event(info, {Tag, _, _, _} = Request, failed, D) when ?IS_REQUEST(Tag) ->
    {keep_state, refuse(Request, D)};
handle_event(info, {Tag, _, _, _} = Request, ready, D) when ?IS_REQUEST(Tag) ->
    {keep_state, accept(Request, D)};
handle_event(info, {'$erlpy_abandon', Id}, _, D) ->
    %% A stream_start that timed out: drop it if it still waits; if it started, its
    %% caller has the answer already.
    {keep_state, take_waiting(Id, {error, timeout}, D)};
handle_event(info, '$erlpy_exec_sync', State, D) when State =/= failed ->
    {keep_state, exec_missing(D)};
%% --- cancellation, stream commands, owners, timers
handle_event(info, {'$erlpy_cancel', Id}, _, D) ->
    {keep_state, cancel(Id, timeout, take_waiting(Id, none, D))};
handle_event(info, {'$erlpy_callback_done', CallbackId, Reply}, _, D) ->
    case maps:take(CallbackId, D#data.callbacks) of
        {_, Callbacks} -> {keep_state, enqueue(Reply, D#data{callbacks = Callbacks})};
        error -> keep_state_and_data
    end;
handle_event(info, {'$erlpy_stream_cmd', Ref, Command}, _, D) ->
    case D#data.aliases of
        #{Ref := Id} -> {keep_state, stream_command(Id, Command, D)};
        #{} -> keep_state_and_data
    end;
handle_event(info, {'DOWN', Mon, process, _, _}, _, D) ->
    case maps:take(Mon, D#data.monitors) of
        {Id, Monitors} -> {keep_state, cancel(Id, owner_down, D#data{monitors = Monitors})};
        error -> keep_state_and_data
    end;
handle_event(info, {timeout, TRef, {idle, Id}}, _, D) ->
    case D#data.streams of
        #{Id := #entry{idle_timer = TRef}} -> {keep_state, cancel(Id, timeout, D)};
        #{} -> keep_state_and_data
    end;
handle_event(info, {timeout, TRef, {grace, Id}}, _, D) ->
    case D#data.grace of
        #{Id := TRef} ->
            %% Python did not stop the request in time: it is stuck in C code.
            Grace = maps:get(cancel_grace, D#data.meta),
            {keep_state, kill_python({cancel_timeout, Grace}, D)};
        #{} ->
            keep_state_and_data
    end;
handle_event(info, {timeout, TRef, {owner, Owner}}, _, D) ->
    case D#data.owners of
        #{Owner := O} ->
            case erlpy_owner:timer(O) of
                TRef -> {keep_state, recheck_owner(Owner, erlpy_owner:set_timer(undefined, O), D)};
                _ -> keep_state_and_data
            end;
        #{} ->
            keep_state_and_data
    end;
handle_event(info, retry, failed, D) ->
    {State, D1} = boot(D),
    {next_state, State, D1};
handle_event(info, retry, _, _) ->
    keep_state_and_data;
handle_event(EventType, Event, _, _) ->
    ?LOG_WARNING(#{what => unexpected_event, type => EventType, event => Event}),
    keep_state_and_data.

-spec terminate(term(), state(), #data{}) -> ok.
terminate(Reason, _, D) ->
    Detail =
        case Reason of
            normal -> shutdown;
            shutdown -> shutdown;
            {shutdown, R} -> R;
            R -> R
        end,
    _ = fail_all({worker_exited, Detail}, D),
    stop_python(D),
    ok.

%%====================================================================
%% Python process
%%====================================================================

-spec boot(#data{}) -> {state(), #data{}}.
boot(#data{meta = Meta} = D) ->
    case erlpy_python:open(Meta) of
        {ok, Port, OsPid} ->
            D1 = D#data{port = Port, os_pid = OsPid, booted = false, kill_reason = undefined,
                        start_error = undefined},
            {starting, setup(D1)};
        {error, Reason} ->
            start_failed(Reason, D)
    end.

%% Tell Python who we are, then run the pool's init code and replay its exec log; requests
%% wait in `starting' until all of it has run.
-spec setup(#data{}) -> #data{}.
setup(#data{meta = Meta} = D) ->
    Limits = maps:with([max_memory], Meta),
    Init = [{init, Code} || Code <- maps:get(init, Meta)],
    Log = erlpy_pool:exec_log(Meta),
    Execs = [{exec, Code} || Code <- Log],
    lists:foldl(
        fun({Kind, Message}, Acc) -> internal(Kind, Message, Acc) end,
        D#data{pending_init = 0, served = 0, execs = length(Log)},
        [{setup, fun(Id) -> [?OP_SETUP, Id, self(), Limits] end} |
         [{Kind, fun(Id) -> [?OP_EXEC, Id, Code] end} || {Kind, Code} <- Init ++ Execs]]
    ).

%% A request of the worker's own; in `starting', ready waits for all of them.
-spec internal(setup | init | exec, fun((id()) -> list()), #data{}) -> #data{}.
internal(Kind, Message, D) ->
    Id = erlang:unique_integer([positive]),
    Calls = (D#data.calls)#{Id => #call{alias = {internal, Kind}}},
    enqueue(encode(Message(Id), D), D#data{calls = Calls, pending_init = D#data.pending_init + 1}).

%% Run the entries of the pool's exec log that this Python has not run.
-spec exec_missing(#data{}) -> #data{}.
exec_missing(#data{execs = Done, meta = Meta} = D) ->
    Log = erlpy_pool:exec_log(Meta),
    case length(Log) of
        N when N > Done ->
            lists:foldl(
                fun(Code, Acc) -> internal(exec, fun(Id) -> [?OP_EXEC, Id, Code] end, Acc) end,
                D#data{execs = N},
                lists:nthtail(Done, Log)
            );
        _ ->
            D
    end.

-spec after_frame(state(), #data{}) -> gen_statem:event_handler_result(state()).
after_frame(starting, #data{start_error = Error} = D) when Error =/= undefined ->
    D1 = fail_all({python_start_failed, Error}, kill_python(start_failed, D)),
    {State, D2} = start_failed(Error, D1),
    {next_state, State, D2};
after_frame(starting, #data{booted = true, pending_init = 0, waiting = Waiting} = D) ->
    D#data.draining andalso erlpy_pool:draining(D#data.meta, D#data.index, false),
    D1 = D#data{retry = 1000, draining = false, start_crashes = 0, waiting = queue:new()},
    {next_state, ready, lists:foldl(fun accept/2, D1, queue:to_list(Waiting))};
after_frame(ready, #data{meta = #{max_requests := Max}, served = Served} = D) when
    is_integer(Max), Served >= Max
->
    recycle(D);
after_frame(_, D) ->
    {keep_state, D}.

-spec python_exited(state(), term(), #data{}) -> gen_statem:event_handler_result(state()).
python_exited(State, Detail0, D0) ->
    Detail =
        case D0#data.kill_reason of
            undefined -> Detail0;
            Killed -> Killed
        end,
    %% Python is dead, but what it started may live on (and hold the pipes).
    kill_leftovers(D0#data.os_pid),
    D = D0#data{port = undefined},
    case State of
        starting when D#data.start_crashes =:= undefined; D#data.start_crashes >= 3 ->
            Error =
                case D#data.start_error of
                    undefined -> Detail;
                    StartError -> StartError
                end,
            {failed, D1} = start_failed(Error, fail_all({python_start_failed, Error}, D)),
            {next_state, failed, D1};
        _ ->
            ?LOG_WARNING(#{what => python_exited, pool => D#data.pool, worker => D#data.index,
                           os_pid => D#data.os_pid, detail => Detail}),
            D1 = fail_all({worker_exited, Detail}, D),
            Crashes =
                case State of
                    starting -> D1#data.start_crashes + 1;
                    _ -> 0
                end,
            {NewState, D2} = boot(D1#data{restarts = D1#data.restarts + 1, start_crashes = Crashes}),
            {next_state, NewState, D2}
    end.

-spec start_failed(term(), #data{}) -> {failed, #data{}}.
start_failed(Reason, #data{retry = Retry, waiting = Waiting} = D0) ->
    %% Not while the pool starts: its start fails with this reason, which its caller gets.
    D0#data.start_crashes =:= undefined orelse
        ?LOG_ERROR(#{what => python_start_failed, pool => D0#data.pool, worker => D0#data.index,
                     reason => Reason}),
    D = lists:foldl(fun refuse/2, D0#data{start_error = Reason, waiting = queue:new()},
                    queue:to_list(Waiting)),
    erlang:send_after(Retry, self(), retry),
    %% Steer callers to the other workers until Python starts again.
    D#data.draining orelse erlpy_pool:draining(D#data.meta, D#data.index, true),
    {failed, D#data{start_error = Reason, port = undefined, retry = min(Retry * 2, ?MAX_RETRY),
                    draining = true}}.

%% Replace a Python process that has served max_requests requests, once it is idle; until
%% then callers are steered to the other workers.
-spec recycle(#data{}) -> gen_statem:event_handler_result(state()).
recycle(#data{calls = Calls, streams = Streams} = D) when map_size(Calls) + map_size(Streams) > 0 ->
    case D#data.draining of
        true -> {keep_state, D};
        false -> erlpy_pool:draining(D#data.meta, D#data.index, true),
                 {keep_state, D#data{draining = true}}
    end;
recycle(D) ->
    D#data.draining andalso erlpy_pool:draining(D#data.meta, D#data.index, false),
    stop_python(D),
    {State, D1} = boot(D#data{port = undefined, draining = false, recycled = D#data.recycled + 1}),
    {next_state, State, D1}.

-spec kill_python(term(), #data{}) -> #data{}.
kill_python(_, #data{port = undefined} = D) ->
    D;
kill_python(Reason, #data{os_pid = OsPid} = D) ->
    kill_group(OsPid),
    D#data{kill_reason = Reason}.

-spec stop_python(#data{}) -> ok.
stop_python(#data{port = undefined}) ->
    ok;
stop_python(#data{port = Port, os_pid = OsPid}) ->
    %% Python exits on EOF, but user code may block its event loop: make sure.
    catch port_close(Port),
    kill_group(OsPid).

%% Python and everything it started: it leads its own process group (the port program
%% starts in a new session), and its children stay in it unless they leave on purpose.
%% Python's watchdog does the same when the port closes without us (docs/reliability.md).
-spec kill_group(non_neg_integer() | undefined) -> ok.
kill_group(undefined) ->
    ok;
kill_group(OsPid) ->
    Pid = integer_to_list(OsPid),
    _ = os:cmd("kill -9 -" ++ Pid ++ " 2>/dev/null || kill -9 " ++ Pid ++ " 2>/dev/null"),
    ok.

%% After Python's exit: only the group, as its pid may already belong to another process.
-spec kill_leftovers(non_neg_integer() | undefined) -> ok.
kill_leftovers(undefined) ->
    ok;
kill_leftovers(OsPid) ->
    _ = os:cmd("kill -9 -" ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok.

%% Every request in flight gets exactly one answer.
-spec fail_all(term(), #data{}) -> #data{}.
fail_all(Error, #data{calls = Calls, streams = Streams} = D) ->
    maps:foreach(
        fun
            (_, #call{alias = {internal, _}}) ->
                ok;
            (_, #call{alias = Alias, monitor = Mon, cancelled = Cancelled}) ->
                Cancelled orelse (Alias ! {Alias, {error, Error}}),
                erlang:demonitor(Mon, [flush]),
                erlpy_pool:done(D#data.meta, D#data.index)
        end,
        Calls
    ),
    Monitors = maps:without([Mon || #call{monitor = Mon} <- maps:values(Calls), Mon =/= undefined],
                            D#data.monitors),
    D1 = maps:fold(
        fun(Id, Entry, Acc) ->
            Final =
                case Entry#entry.stopping of
                    false -> {error, Error};
                    Reason -> {error, Reason}
                end,
            end_stream(Id, Entry, Final, Acc)
        end,
        D#data{monitors = Monitors},
        Streams
    ),
    maps:foreach(fun(_, TRef) -> erlang:cancel_timer(TRef) end, D1#data.grace),
    %% Python is gone: nobody waits for its callbacks into Erlang.
    maps:foreach(fun(_, Pid) -> exit(Pid, kill) end, D1#data.callbacks),
    D1#data{calls = #{}, grace = #{}, out = [], out_size = 0, pending_init = 0, callbacks = #{}}.

%%====================================================================
%% Requests
%%====================================================================

%% A request goes to Python.
-spec accept(request(), #data{}) -> #data{}.
accept({'$erlpy_call', Alias, Id, {Caller, Request}}, D) ->
    add_call(Id, #call{alias = Alias}, Caller, Request, D);
accept({'$erlpy_exec', Alias, Id, {Caller, Request, Index}}, D) ->
    add_call(Id, #call{alias = Alias, exec = Index}, Caller, Request, D);
accept({'$erlpy_collect', Alias, Id, {Caller, Request}}, D) ->
    Collect = erlpy_stream:new(Alias, {collect, Alias}, infinity, ?COLLECT_CREDIT),
    %% A caller that dies (killed, not timed out) takes its stream with it, like an owner.
    Mon = erlang:monitor(process, Caller),
    Entry = #entry{stream = Collect, idle = infinity, monitor = Mon},
    enqueue(Request, D#data{streams = (D#data.streams)#{Id => Entry},
                            monitors = (D#data.monitors)#{Mon => Id}});
accept({'$erlpy_stream', Alias, Id, Stream}, D) ->
    start_stream(Alias, Id, Stream, D).

-spec add_call(id(), #call{}, pid(), iodata(), #data{}) -> #data{}.
add_call(Id, Call, Caller, Request, D) ->
    Mon = erlang:monitor(process, Caller),
    Calls = (D#data.calls)#{Id => Call#call{monitor = Mon}},
    enqueue(Request, D#data{calls = Calls, monitors = (D#data.monitors)#{Mon => Id}}).

%% Python cannot start: the request gets the reason.
-spec refuse(request(), #data{}) -> #data{}.
refuse({_, Alias, _, _}, D) ->
    Alias ! {Alias, {error, {python_start_failed, D#data.start_error}}},
    erlpy_pool:done(D#data.meta, D#data.index),
    D.

%% Take back a request that still waits for Python, and answer it with `Reply' (`none':
%% its caller gave up and hears nothing more).
-spec take_waiting(id(), none | {error, timeout}, #data{}) -> #data{}.
take_waiting(Id, Reply, #data{waiting = Waiting} = D) ->
    case queue:is_empty(Waiting) of
        true ->
            D;
        false ->
            case lists:partition(fun({_, _, I, _}) -> I =:= Id end, queue:to_list(Waiting)) of
                {[{_, Alias, _, _}], Rest} ->
                    Reply =:= none orelse (Alias ! {Alias, Reply}),
                    erlpy_pool:done(D#data.meta, D#data.index),
                    D#data{waiting = queue:from_list(Rest)};
                {[], _} ->
                    D
            end
    end.

%%====================================================================
%% Output: messages are queued and written as one frame once the mailbox is drained
%%====================================================================

-spec enqueue(iodata(), #data{}) -> #data{}.
enqueue(Message, #data{out = []} = D) ->
    self() ! '$erlpy_flush',
    D#data{out = [Message], out_size = iolist_size(Message)};
enqueue(Message, #data{out = Out, out_size = Size} = D) ->
    case Size + iolist_size(Message) of
        %% A frame holds under 4 GiB ({packet, 4}): write what is queued first.
        Total when Total > ?MAX_FRAME -> enqueue(Message, flush(D));
        Total -> D#data{out = [Message | Out], out_size = Total}
    end.

-spec flush(#data{}) -> #data{}.
flush(#data{out = []} = D) ->
    D;
flush(#data{port = undefined} = D) ->
    D#data{out = [], out_size = 0};
flush(#data{port = Port, out = Out} = D) ->
    try
        erlang:port_command(Port, lists:reverse(Out))
    catch
        %% Python just died and closed the port; its exit message is on the way.
        error:badarg -> ok
    end,
    D#data{out = [], out_size = 0}.

-spec encode(list(), #data{}) -> iodata().
encode(Message, #data{meta = #{none_atom := NoneAtom}}) ->
    erlpy_codec:message(Message, NoneAtom).

%%====================================================================
%% Input: frames from Python
%%====================================================================

-spec handle_frame(binary(), #data{}) -> #data{}.
handle_frame(<<>>, D) ->
    D;
handle_frame(Frame, D) ->
    case decode_message(Frame, D) of
        {Message, Rest} ->
            handle_frame(Rest, handle_message(Message, D));
        malformed ->
            %% The protocol is lost: this Python cannot be trusted with the next frame.
            ?LOG_ERROR(#{what => malformed_frame, pool => D#data.pool, worker => D#data.index}),
            kill_python(malformed_frame, D)
    end.

%% Messages are small arrays [Op, Id, ...]. A field that cannot be decoded (an atom over
%% the pool's budget, say) fails that one message, not the frame.
-spec decode_message(binary(), #data{}) -> {term(), binary()} | malformed.
decode_message(<<2#1001:4, N:4, Rest/binary>>, D) when N > 0 ->
    decode_fields(N, Rest, D, []);
decode_message(_, _) ->
    malformed.

-spec decode_fields(non_neg_integer(), binary(), #data{}, list()) -> {term(), binary()} | malformed.
decode_fields(0, Rest, _, Acc) ->
    {lists:reverse(Acc), Rest};
decode_fields(N, Bin, #data{meta = #{none_atom := NoneAtom}, new_atom = NewAtom} = D, Acc) ->
    try erlpy_codec:decode(Bin, NoneAtom, NewAtom) of
        {Value, Rest} -> decode_fields(N - 1, Rest, D, [Value | Acc])
    catch
        throw:{badarg, Reason} ->
            try skip(N, Bin) of
                Rest -> {{undecodable, lists:reverse(Acc), Reason}, Rest}
            catch
                throw:_ -> malformed
            end
    end.

-spec skip(non_neg_integer(), binary()) -> binary().
skip(0, Bin) -> Bin;
skip(N, Bin) -> skip(N - 1, erlpy_codec:skip(Bin)).

-spec handle_message(term(), #data{}) -> #data{}.
handle_message([?OP_DATA, Id, Items], D) ->
    stream_data(Id, Items, D);
handle_message([?OP_RESULT, Id, Value], D) ->
    finish(Id, {ok, Value}, D);
handle_message([?OP_ERROR, Id, Type, Message, Traceback], D) ->
    finish(Id, {error, {python, Type, Message, Traceback}}, D);
handle_message([?OP_FAIL, Id, Reason], D) ->
    finish(Id, {error, Reason}, D);
handle_message([?OP_DONE, Id], D) ->
    finish(Id, done, D);
handle_message([?OP_LOG, Level, Text], D) ->
    log(Level, Text, D),
    D;
handle_message([?OP_CALLBACK, CallbackId, Name, Args], D) ->
    Pid = erlpy_functions:run_async(self(), CallbackId, Name, Args, maps:get(none_atom, D#data.meta)),
    D#data{callbacks = (D#data.callbacks)#{CallbackId => Pid}};
handle_message([?OP_CALLBACK_CANCEL, CallbackId], D) ->
    %% Nobody waits for this callback any more (its request was cancelled).
    case maps:take(CallbackId, D#data.callbacks) of
        {Pid, Callbacks} ->
            exit(Pid, kill),
            D#data{callbacks = Callbacks};
        error ->
            D
    end;
handle_message([?OP_SEND, Dest, Term], D) ->
    try
        erlang:send(Dest, Term)
    catch
        error:badarg -> ?LOG_WARNING(#{what => bad_send_destination, destination => Dest})
    end,
    D;
handle_message([?OP_READY, Info], D) when is_map(Info) ->
    D#data{booted = true, python = maps:get(<<"python">>, Info, <<>>)};
handle_message([?OP_FATAL, Detail], D) ->
    D#data{start_error = fatal_detail(Detail)};
handle_message({undecodable, [?OP_CALLBACK, CallbackId | _], Reason}, D) ->
    %% Python waits for this answer: tell it why the call could not be made.
    enqueue(encode([?OP_REPLY, CallbackId, false, {badarg, Reason}], D), D);
handle_message({undecodable, [Op, Id | _], Reason}, D) when
    Op =:= ?OP_RESULT; Op =:= ?OP_DATA; Op =:= ?OP_ERROR; Op =:= ?OP_FAIL
->
    case D#data.streams of
        #{Id := _} -> cancel(Id, {badarg, Reason}, D);
        #{} -> finish(Id, {error, {badarg, Reason}}, D)
    end;
handle_message(Message, D) ->
    ?LOG_ERROR(#{what => unexpected_message, pool => D#data.pool, message => Message}),
    D.

%% What _boot.py reports when Python cannot run erlpy. Only known keys and reasons become
%% atoms: whatever else arrives stays as it is, so this cannot be used to make atoms.
-spec fatal_detail(term()) -> map().
fatal_detail(Detail) when is_map(Detail) ->
    Known = #{<<"reason">> => reason, <<"missing_module">> => missing_module,
              <<"message">> => message, <<"python">> => python},
    maps:fold(
        fun(K, V, Acc) ->
            case Known of
                #{K := reason} -> Acc#{reason => fatal_reason(V)};
                #{K := Key} -> Acc#{Key => V};
                #{} -> Acc
            end
        end,
        #{},
        Detail
    );
fatal_detail(Detail) ->
    #{reason => Detail}.

-spec fatal_reason(term()) -> term().
fatal_reason(<<"missing_module">>) -> missing_module;
fatal_reason(<<"python_too_old">>) -> python_too_old;
fatal_reason(Other) -> Other.

-spec log(term(), term(), #data{}) -> ok.
log(Level0, Text, D) ->
    Level =
        case lists:member(Level0, [debug, info, notice, warning, error, critical]) of
            true -> Level0;
            false -> info
        end,
    %% No `domain': OTP's default handler drops events of domains other than otp/sasl,
    %% and a print() in Python should show up where Erlang's own logs do.
    logger:log(Level, "~ts", [Text], #{
        pool => D#data.pool,
        worker => D#data.index,
        os_pid => D#data.os_pid
    }).

%% A request ended on the Python side.
-spec finish(id(), term(), #data{}) -> #data{}.
finish(Id, Result, #data{calls = Calls} = D) ->
    case maps:take(Id, Calls) of
        {Call, Calls1} ->
            finish_call(Id, Call, Result, D#data{calls = Calls1});
        error ->
            case D#data.streams of
                #{Id := Entry} -> finish_stream(Id, Entry, Result, D);
                #{} -> D
            end
    end.

-spec finish_call(id(), #call{}, term(), #data{}) -> #data{}.
finish_call(_, #call{alias = {internal, Kind}}, Result, D) ->
    D1 = D#data{pending_init = D#data.pending_init - 1},
    case Result of
        {ok, _} -> D1;
        {error, Error} -> D1#data{start_error = {Kind, Error}}
    end;
finish_call(Id, #call{alias = Alias, monitor = Mon, cancelled = Cancelled, exec = Index}, Result, D) ->
    Cancelled orelse (Alias ! {Alias, Result}),
    erlang:demonitor(Mon, [flush]),
    erlpy_pool:done(D#data.meta, D#data.index),
    Execs =
        case Result of
            {ok, _} when is_integer(Index) -> max(Index, D#data.execs);
            _ -> D#data.execs
        end,
    stop_grace(Id, D#data{served = D#data.served + 1, execs = Execs,
                          monitors = maps:remove(Mon, D#data.monitors)}).

-spec finish_stream(id(), #entry{}, term(), #data{}) -> #data{}.
finish_stream(Id, #entry{stopping = false, stream = S} = Entry, Result, D) ->
    Final =
        case Result of
            done -> done;
            {error, _} = Error -> Error;
            {ok, _} -> done
        end,
    case erlpy_stream:finish(Final, S) of
        {send, Final} ->
            end_stream(Id, Entry, Final, D);
        {held, S1} ->
            %% The generator is done; only the owner's window holds the rest back, which
            %% is no reason for an idle timeout.
            Timer = Entry#entry.idle_timer,
            Timer =:= undefined orelse erlang:cancel_timer(Timer),
            put_entry(Id, Entry#entry{stream = S1, idle_timer = undefined}, D)
    end;
finish_stream(Id, #entry{stopping = Reason} = Entry, _, D) ->
    end_stream(Id, Entry, {error, Reason}, stop_grace(Id, D)).

%% Send the terminal message (owners that died get none) and forget the stream.
-spec end_stream(id(), #entry{}, done | {error, term()}, #data{}) -> #data{}.
end_stream(Id, #entry{stream = S, monitor = Mon, idle_timer = Timer, stopping = Stopping} = Entry,
           Final, D0) ->
    D = forget_owner(Id, Entry, D0),
    Ref = erlpy_stream:ref(S),
    case erlpy_stream:owner(S) of
        {collect, Alias} -> Alias ! {Alias, Final};
        _ when Stopping =:= owner_down -> ok;
        Owner -> Owner ! {py_stream, Ref, Final}
    end,
    Mon =:= undefined orelse erlang:demonitor(Mon, [flush]),
    Timer =:= undefined orelse erlang:cancel_timer(Timer),
    unalias(Ref),
    erlpy_pool:done(D#data.meta, D#data.index),
    D#data{
        served = D#data.served + 1,
        streams = maps:remove(Id, D#data.streams),
        aliases = maps:remove(Ref, D#data.aliases),
        monitors = maps:remove(Mon, D#data.monitors)
    }.

%%====================================================================
%% Streams
%%====================================================================

-spec start_stream(reference(), id(), map(), #data{}) -> #data{}.
start_stream(Alias, Id, #{owner := Owner, request := Request} = Opts, D) ->
    Window = maps:get(window, Opts, infinity),
    Credit = erlpy_stream:initial_credit(Window),
    Ref = alias(),
    Mon = erlang:monitor(process, Owner),
    Idle = maps:get(idle_timeout, Opts, infinity),
    %% A local owner without a window is paced by its backlog, with its other streams.
    Gated = Window =:= infinity andalso node(Owner) =:= node(),
    Entry = #entry{
        stream = erlpy_stream:new(Ref, Owner, Window, Credit),
        monitor = Mon,
        idle = Idle,
        idle_timer = idle_timer(Id, Idle),
        input = maps:get(input, Opts, false),
        gated = Gated
    },
    Owners =
        case Gated of
            true -> maps:update_with(Owner, fun(O) -> erlpy_owner:add(Id, Ref, O) end,
                                     erlpy_owner:add(Id, Ref, erlpy_owner:new()), D#data.owners);
            false -> D#data.owners
        end,
    Alias ! {Alias, {ok, Ref}},
    enqueue(Request, D#data{
        streams = (D#data.streams)#{Id => Entry},
        aliases = (D#data.aliases)#{Ref => Id},
        monitors = (D#data.monitors)#{Mon => Id},
        owners = Owners
    }).

-spec forget_owner(id(), #entry{}, #data{}) -> #data{}.
forget_owner(_, #entry{gated = false}, D) ->
    D;
forget_owner(Id, #entry{stream = S}, #data{owners = Owners} = D) ->
    Owner = erlpy_stream:owner(S),
    case Owners of
        #{Owner := O} ->
            O1 = erlpy_owner:remove(Id, O),
            case erlpy_owner:is_empty(O1) of
                true ->
                    Timer = erlpy_owner:timer(O1),
                    Timer =:= undefined orelse erlang:cancel_timer(Timer),
                    D#data{owners = maps:remove(Owner, Owners)};
                false ->
                    D#data{owners = Owners#{Owner := O1}}
            end;
        #{} ->
            D
    end.

-spec idle_timer(id(), timeout()) -> reference() | undefined.
idle_timer(_, infinity) -> undefined;
idle_timer(Id, Ms) -> erlang:start_timer(Ms, self(), {idle, Id}).

-spec stream_data(id(), [term()], #data{}) -> #data{}.
stream_data(Id, Items, D) ->
    case D#data.streams of
        #{Id := #entry{stopping = false, stream = S, idle = Idle, idle_timer = Timer} = Entry} ->
            Timer =:= undefined orelse erlang:cancel_timer(Timer),
            Entry1 = Entry#entry{stream = erlpy_stream:deliver(Items, S), idle_timer = idle_timer(Id, Idle)},
            give_credit(Id, Entry1, D);
        #{} ->
            D
    end.

-spec give_credit(id(), #entry{}, #data{}) -> #data{}.
give_credit(Id, #entry{gated = false, stream = S} = Entry, D) ->
    %% A window sets its own limit; a remote owner without one gets the whole budget.
    {N, S1} =
        case erlpy_stream:windowed(S) of
            true -> erlpy_stream:take_credit(S);
            false -> erlpy_stream:take_credit(?STREAM_CREDIT, S)
        end,
    send_credit(Id, N, put_entry(Id, Entry#entry{stream = S1}, D));
give_credit(Id, #entry{stream = S} = Entry, D) ->
    case erlpy_stream:credit_due(S) of
        false ->
            put_entry(Id, Entry, D);
        true ->
            Owner = erlpy_stream:owner(S),
            #{Owner := O} = D#data.owners,
            case erlpy_owner:check(Owner, erlpy_stream:ref(S), O) of
                {open, O1} ->
                    {N, S1} = erlpy_stream:take_credit(erlpy_owner:target(O1), S),
                    D1 = put_entry(Id, Entry#entry{stream = S1}, D),
                    send_credit(Id, N, D1#data{owners = (D1#data.owners)#{Owner := O1}});
                {Why, O1} ->
                    %% Held: the owner's timer asks again for all its held streams.
                    O2 = owner_timer(Owner, Why, erlpy_owner:hold(Id, O1)),
                    put_entry(Id, Entry, D#data{owners = (D#data.owners)#{Owner := O2}})
            end
    end.

-spec owner_timer(pid(), busy | stalled, erlpy_owner:owner()) -> erlpy_owner:owner().
owner_timer(Owner, Why, O) ->
    case {erlpy_owner:timer(O), Why} of
        {undefined, _} ->
            {Delay, O1} = erlpy_owner:backoff(Why, O),
            erlpy_owner:set_timer(erlang:start_timer(Delay, self(), {owner, Owner}), O1);
        {Timer, busy} ->
            %% A stalled owner started running: look again soon, not after a long backoff.
            erlang:cancel_timer(Timer),
            owner_timer(Owner, busy, erlpy_owner:set_timer(undefined, O));
        {_, stalled} ->
            O
    end.

%% The owner's timer fired: ask again for each of its held streams.
-spec recheck_owner(pid(), erlpy_owner:owner(), #data{}) -> #data{}.
recheck_owner(Owner, O, D) ->
    {Held, O1} = erlpy_owner:take_held(O),
    lists:foldl(
        fun(Id, Acc) ->
            case Acc#data.streams of
                #{Id := Entry} -> give_credit(Id, Entry, Acc);
                #{} -> Acc
            end
        end,
        D#data{owners = (D#data.owners)#{Owner := O1}},
        Held
    ).

-spec send_credit(id(), non_neg_integer(), #data{}) -> #data{}.
send_credit(_, 0, D) -> D;
send_credit(Id, N, D) -> enqueue(encode([?OP_CREDIT, Id, N], D), D).

-spec put_entry(id(), #entry{}, #data{}) -> #data{}.
put_entry(Id, Entry, D) ->
    D#data{streams = (D#data.streams)#{Id => Entry}}.

-spec stream_command(id(), term(), #data{}) -> #data{}.
stream_command(Id, cancel, D) ->
    cancel(Id, cancelled, D);
stream_command(Id, {ack, N}, D) ->
    case D#data.streams of
        #{Id := #entry{stopping = false, stream = S} = Entry} ->
            S1 = erlpy_stream:ack(N, S),
            case erlpy_stream:terminal(S1) of
                undefined -> give_credit(Id, Entry#entry{stream = S1}, D);
                Final -> end_stream(Id, Entry, Final, D)
            end;
        #{} ->
            D
    end;
stream_command(Id, {send, Value}, D) ->
    case D#data.streams of
        #{Id := #entry{input = true}} ->
            try encode([?OP_INPUT, Id, [Value]], D) of
                Message -> enqueue(Message, D)
            catch
                throw:{badarg, Reason} -> cancel(Id, {badarg, Reason}, D)
            end;
        #{Id := _} ->
            cancel(Id, {badarg, no_input}, D);
        #{} ->
            D
    end;
stream_command(Id, close, D) ->
    case D#data.streams of
        #{Id := #entry{input = true}} -> enqueue(encode([?OP_INPUT_CLOSE, Id], D), D);
        #{Id := _} -> cancel(Id, {badarg, no_input}, D);
        #{} -> D
    end.

%% Ask Python to stop a request. Its answer (or the grace timer) ends it; the reason is
%% what the owner of a stream will see.
-spec cancel(id(), cancelled | timeout | owner_down | {badarg, term()}, #data{}) -> #data{}.
cancel(Id, Reason, D) ->
    case {D#data.calls, D#data.streams} of
        {#{Id := #call{cancelled = false} = Call}, _} ->
            D1 = D#data{calls = (D#data.calls)#{Id => Call#call{cancelled = true}}},
            start_grace(Id, enqueue(encode([?OP_CANCEL, Id], D1), D1));
        {_, #{Id := #entry{stopping = false, stream = S} = Entry}} ->
            case erlpy_stream:python_done(S) of
                true ->
                    %% Python already finished it: drop the held items, nothing to stop.
                    end_stream(Id, Entry#entry{stopping = Reason}, {error, Reason}, D);
                false ->
                    D1 = put_entry(Id, Entry#entry{stopping = Reason}, D),
                    start_grace(Id, enqueue(encode([?OP_CANCEL, Id], D1), D1))
            end;
        _ ->
            D
    end.

-spec start_grace(id(), #data{}) -> #data{}.
start_grace(Id, #data{meta = #{cancel_grace := Grace}} = D) ->
    D#data{grace = (D#data.grace)#{Id => erlang:start_timer(Grace, self(), {grace, Id})}}.

-spec stop_grace(id(), #data{}) -> #data{}.
stop_grace(Id, D) ->
    case maps:take(Id, D#data.grace) of
        {TRef, Grace} ->
            erlang:cancel_timer(TRef),
            D#data{grace = Grace};
        error ->
            D
    end.

%%====================================================================
%% Info
%%====================================================================

-spec worker_info(state(), #data{}) -> map().
worker_info(State, D) ->
    #{
        index => D#data.index,
        pid => self(),
        os_pid => D#data.os_pid,
        state => State,
        in_flight => map_size(D#data.calls) + map_size(D#data.streams) - D#data.pending_init,
        restarts => D#data.restarts,
        recycled => D#data.recycled,
        served => D#data.served,
        python => D#data.python
    }.

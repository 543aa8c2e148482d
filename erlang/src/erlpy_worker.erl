%% @private
%% @doc One Python worker: a gen_statem that owns exactly one port, that is one Python OS
%% process, and performs what its table of requests in flight (erlpy_inflight) says.
%%
%% States:
%% - `{starting, booting}': Python was started and has not said READY yet; the worker's own
%%   requests (SETUP, the pool's `init' code, the exec log) are already queued for it.
%% - `{starting, replaying}': READY came; the worker's own requests are still running.
%%   In both, callers' requests wait in the table's queue (a caller that gives up takes
%%   its request back).
%% - `ready': requests go to Python; many may be in flight, each with its own id.
%% - `draining': Python has served the pool's `max_requests'; callers are steered to the
%%   other workers, and Python is replaced once the requests in flight have ended.
%% - `{stopping, From, Reason}': the worker killed Python (stuck past `cancel_grace', or
%%   a frame it could not read) and waits for its exit; `From' is `starting' or `ready'.
%% - `failed': Python could not start; requests get the start error, and a state timeout
%%   tries again (1 s, doubling to 30 s).
%%
%% When Python dies, every request in flight gets exactly one answer and a new Python
%% starts: a Python crash is an expected event, not an Erlang failure, so it does not count
%% against the supervisor's restart intensity. Timers are gen_statem timeouts: the retry
%% is a state timeout, and `{grace, Id}', `{idle, Id}' and `{owner, Pid}' are named ones.
%% The caller's side of a request is erlpy_caller; the wire format is erlpy_frame.
-module(erlpy_worker).
-behaviour(gen_statem).

-export([start_link/3, await_ready/2, info/1]).
-export([call/4, call_ref/5, exec/3, collect/5, stream_start/4, stream_command/2, exec_sync/1]).
-export([init/1, callback_mode/0, handle_event/4, terminate/3]).
-export_type([state/0]).

-include("erlpy_protocol.hrl").
-include("erlpy_worker.hrl").
-include_lib("kernel/include/logger.hrl").

-type state() :: {starting, booting | replaying} | ready | draining
               | {stopping, starting | ready, term()} | failed.
-type id() :: pos_integer().
-define(IS_REQUEST(Tag), (Tag =:= '$erlpy_call' orelse Tag =:= '$erlpy_collect' orelse
                          Tag =:= '$erlpy_stream' orelse Tag =:= '$erlpy_exec')).
-define(MAX_RETRY, 30000).
-define(IO, erlpy_worker_io).


%%====================================================================
%% API (used by py and erlpy_pool; the caller's side is erlpy_caller)
%%====================================================================

-spec start_link(atom(), pos_integer(), erlpy_pool:meta()) -> gen_statem:start_ret().
start_link(Pool, Index, Meta) ->
    gen_statem:start_link(?MODULE, {Pool, Index, Meta}, []).

-spec await_ready(pid(), timeout()) -> ok | {error, term()}.
await_ready(Worker, Timeout) -> erlpy_caller:await_ready(Worker, Timeout).

-spec info(pid()) -> map().
info(Worker) -> erlpy_caller:info(Worker).

-spec call(pid(), id(), iodata(), timeout()) -> {ok, term()} | {error, term()}.
call(Worker, Id, Request, Timeout) -> erlpy_caller:call(Worker, Id, Request, Timeout).

-spec call_ref(pid(), id(), iodata(), pid(), timeout()) -> {ok, term()} | {error, term()}.
call_ref(Worker, Id, Request, Owner, Timeout) ->
    erlpy_caller:call_ref(Worker, Id, Request, Owner, Timeout).

-spec collect(pid(), id(), iodata(), timeout(), Decode) -> {ok, [term()]} | {error, term()} when
    Decode :: fun((binary(), [term()]) -> [term()]).
collect(Worker, Id, Request, Timeout, Decode) ->
    erlpy_caller:collect(Worker, Id, Request, Timeout, Decode).

-spec stream_start(pid(), id(), map(), timeout()) -> {ok, reference()} | {error, term()}.
stream_start(Worker, Id, Stream, Timeout) -> erlpy_caller:stream_start(Worker, Id, Stream, Timeout).

-spec stream_command(reference(), cancel | close | {ack, pos_integer()} | {send, term()}) -> ok.
stream_command(Ref, Command) -> erlpy_caller:stream_command(Ref, Command).

-spec exec([pid()], {id(), iodata(), pos_integer()}, timeout()) -> [{ok, term()} | {error, term()}].
exec(Workers, Request, Timeout) -> erlpy_caller:exec(Workers, Request, Timeout).

-spec exec_sync(pid()) -> ok.
exec_sync(Worker) -> erlpy_caller:exec_sync(Worker).

%%====================================================================
%% gen_statem
%%====================================================================

-spec callback_mode() -> gen_statem:callback_mode_result().
callback_mode() -> [handle_event_function, state_enter].

-spec init({atom(), pos_integer(), erlpy_pool:meta()}) -> gen_statem:init_result(state()).
init({Pool, Index, Meta}) ->
    process_flag(trap_exit, true),
    erlpy_pool:register_worker(Meta, Index, self()),
    D = #data{pool = Pool, index = Index, meta = Meta, none_atom = maps:get(none_atom, Meta),
              new_atom = erlpy_pool:new_atom_fun(Meta)},
    {State, D1} = boot(D),
    {ok, State, D1}.

-spec handle_event(gen_statem:event_type(), term(), state(), #data{}) ->
    gen_statem:event_handler_result(state()).
%% --- requests: forwarded when ready, kept while Python starts, refused when it cannot
handle_event(info, {Tag, _, _, _} = Request, State, D) when ?IS_REQUEST(Tag) ->
    case State of
        ready -> keep(?IO:accept(Request, D));
        draining -> keep(?IO:accept(Request, D));
        failed -> keep(?IO:effects(erlpy_inflight:refuse(Request, D#data.start_error), D));
        _ -> {keep_state, D#data{table = erlpy_inflight:wait(Request, D#data.table)}}
    end;
%% --- port traffic, in every state
handle_event(info, {Port, {data, Frame}}, State, #data{port = Port} = D) ->
    {State1, D1} = frame(Frame, State, D),
    after_frame(State1, D1);
handle_event(info, '$erlpy_flush', _, D) ->
    {keep_state, ?IO:flush(D)};
handle_event(info, {Port, {exit_status, Status}}, State, #data{port = Port} = D) ->
    python_exited(State, {exit_status, Status}, D);
handle_event(info, {'EXIT', Port, Reason}, State, #data{port = Port} = D) ->
    python_exited(State, {port_closed, Reason}, D);
handle_event(info, {'EXIT', _, _}, _, _) ->
    keep_state_and_data;
handle_event(info, {OldPort, _}, _, _) when is_port(OldPort) ->
    keep_state_and_data;
%% --- entering a state
handle_event(enter, _, ready, D) ->
    %% Requests that waited for Python go to it now, oldest first.
    {Waiting, T} = erlpy_inflight:take_all_waiting(D#data.table),
    %% Only what this Python serves from now on counts against max_requests.
    D1 = steer(false, D#data{table = T, retry = 1000, start_crashes = 0, served = 0}),
    keep(lists:foldl(fun ?IO:accept/2, D1, Waiting));
handle_event(enter, _, draining, D) ->
    {keep_state, steer(true, D)};
handle_event(enter, _, failed, #data{retry = Retry} = D) ->
    {Waiting, T} = erlpy_inflight:take_all_waiting(D#data.table),
    Refuse = fun(R, Acc) -> ?IO:effects(erlpy_inflight:refuse(R, Acc#data.start_error), Acc) end,
    D1 = lists:foldl(Refuse,
                     steer(true, D#data{table = T, retry = min(Retry * 2, ?MAX_RETRY)}), Waiting),
    {keep_state, D1, [{state_timeout, Retry, retry}]};
handle_event(enter, _, _, _) ->
    keep_state_and_data;
handle_event(state_timeout, retry, failed, D) ->
    case boot(D) of
        {failed, D1} -> {repeat_state, D1};
        {State, D1} -> {next_state, State, D1}
    end;
%% --- queries
handle_event({call, From}, await_ready, State, D) ->
    case State of
        ready -> {keep_state_and_data, {reply, From, ok}};
        draining -> {keep_state_and_data, {reply, From, ok}};
        failed -> {keep_state_and_data, {reply, From, {error, {python_start_failed, D#data.start_error}}}};
        _ -> {keep_state_and_data, postpone}
    end;
handle_event({call, From}, info, State, D) ->
    {keep_state_and_data, {reply, From, worker_info(State, D)}};
%% --- a caller gave up; stream commands; owners that died; the exec log
handle_event(info, {'$erlpy_abandon', Id}, _, D) ->
    %% A stream_start that timed out: dropped if it still waits; if it started, its caller
    %% has the answer already.
    keep(?IO:perform(erlpy_inflight:take_waiting(Id, {error, timeout}, D#data.table), D));
handle_event(info, {'$erlpy_cancel', Id}, _, D) ->
    D1 = ?IO:perform(erlpy_inflight:take_waiting(Id, none, D#data.table), D),
    D2 = ?IO:perform(erlpy_inflight:cancel(Id, timeout, D1#data.table), D1),
    %% A return => ref call answered just after its caller gave up: nobody got the handle.
    keep(?IO:release(Id, D2));
handle_event(info, {'$erlpy_stream_cmd', Ref, Command}, _, D) ->
    keep(?IO:perform(erlpy_inflight:command(Ref, Command, D#data.table), D));
handle_event(info, {'DOWN', Mon, process, _, _}, _, D) ->
    keep(?IO:down(Mon, D));
handle_event(info, {'$erlpy_release', Id}, _, D) ->
    {keep_state, ?IO:release(Id, D)};
handle_event(info, '$erlpy_exec_sync', State, D) when State =/= failed ->
    {keep_state, exec_missing(D)};
handle_event(info, {'$erlpy_callback_done', CallbackId, Reply}, _, D) ->
    case maps:take(CallbackId, D#data.callbacks) of
        {_, Callbacks} -> {keep_state, ?IO:enqueue(Reply, D#data{callbacks = Callbacks})};
        error -> keep_state_and_data
    end;
%% --- timeouts
handle_event({timeout, {idle, Id}}, _, _, D) ->
    keep(?IO:perform(erlpy_inflight:idle(Id, D#data.table), D));
handle_event({timeout, {grace, Id}}, _, State, D) ->
    case erlpy_inflight:in_grace(Id, D#data.table) of
        true ->
            %% Python did not stop the request in time: it is stuck in C code.
            kill_python({cancel_timeout, maps:get(cancel_grace, D#data.meta)}, State, D);
        false ->
            keep_state_and_data
    end;
handle_event({timeout, {owner, Owner}}, _, _, D) ->
    keep(?IO:recheck_owner(Owner, D));
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
    _ = ?IO:fail_all({worker_exited, Detail}, D),
    erlpy_python:close(D#data.port, ?IO:processes(D)),
    ok.

%% The timeouts asked for while handling the event go with the result.
-spec keep(#data{}) -> gen_statem:event_handler_result(state()).
keep(#data{actions = []} = D) -> {keep_state, D};
keep(#data{actions = Actions} = D) -> {keep_state, D#data{actions = []}, lists:reverse(Actions)}.

-spec next(state(), #data{}) -> gen_statem:event_handler_result(state()).
next(State, #data{actions = []} = D) -> {next_state, State, D};
next(State, #data{actions = Actions} = D) ->
    {next_state, State, D#data{actions = []}, lists:reverse(Actions)}.

%%====================================================================
%% Requests and their effects
%%====================================================================


%% Run the entries of the pool's exec log that this Python has not run.
-spec exec_missing(#data{}) -> #data{}.
exec_missing(#data{execs = Done, meta = Meta} = D) ->
    Log = erlpy_pool:exec_log(Meta),
    case length(Log) of
        N when N > Done ->
            lists:foldl(fun(Code, Acc) -> ?IO:internal(exec, fun(Id) -> [?OP_EXEC, Id, Code] end, Acc) end,
                        D#data{execs = N}, lists:nthtail(Done, Log));
        _ ->
            D
    end.


-spec steer(boolean(), #data{}) -> #data{}.
steer(Steered, #data{steered = Steered} = D) -> D;
steer(Steered, #data{meta = Meta, index = Index} = D) ->
    erlpy_pool:draining(Meta, Index, Steered),
    D#data{steered = Steered}.

%%====================================================================
%% Frames from Python
%%====================================================================

-spec frame(binary(), state(), #data{}) -> {state(), #data{}}.
frame(<<>>, State, D) ->
    {State, D};
frame(Frame, State, #data{none_atom = NoneAtom, new_atom = NewAtom} = D) ->
    case erlpy_frame:next(Frame, NoneAtom, NewAtom) of
        {[?OP_READY, Info], Rest} when is_map(Info) ->
            State1 = case State of
                         {starting, booting} -> {starting, replaying};
                         _ -> State
                     end,
            PythonPid = case maps:get(<<"os_pid">>, Info, undefined) of
                            Pid when is_integer(Pid) -> Pid;
                            _ -> undefined  % python_pid/1 falls back to the port's
                        end,
            frame(Rest, State1, D#data{python = maps:get(<<"python">>, Info, <<>>),
                                       python_pid = PythonPid});
        {Message, Rest} ->
            frame(Rest, State, ?IO:message(Message, D));
        malformed ->
            %% The protocol is lost: this Python cannot be trusted with the next frame.
            ?LOG_ERROR(#{what => malformed_frame, pool => D#data.pool, worker => D#data.index}),
            kill(malformed_frame, State, D)
    end.


%% What a frame changed: the end of starting, a start failure, max_requests reached.
-spec after_frame(state(), #data{}) -> gen_statem:event_handler_result(state()).
after_frame({starting, _}, #data{start_error = Error} = D) when Error =/= undefined ->
    D1 = ?IO:fail_all({python_start_failed, Error}, kill_group_of(D)),
    next(failed, start_failed(Error, D1));
after_frame({starting, replaying}, D) ->
    case erlpy_inflight:pending(D#data.table) of
        0 -> next(ready, D);
        _ -> next({starting, replaying}, D)
    end;
after_frame(ready, #data{meta = #{max_requests := Max}, served = Served} = D) when
    is_integer(Max), Served >= Max
->
    recycle(D);
after_frame(draining, D) ->
    recycle(D);
after_frame(State, D) ->
    next(State, D).

%% Replace a Python process that has served max_requests requests, once it is idle; until
%% then callers are steered to the other workers.
-spec recycle(#data{}) -> gen_statem:event_handler_result(state()).
recycle(D) ->
    case erlpy_inflight:busy(D#data.table) of
        true ->
            next(draining, D);
        false ->
            erlpy_python:close(D#data.port, ?IO:processes(D)),
            D1 = steer(false, ?IO:drop_handles(D)),
            {State, D2} = boot(D1#data{port = undefined, recycled = D1#data.recycled + 1}),
            next(State, D2)
    end.

%%====================================================================
%% Python process
%%====================================================================

-spec boot(#data{}) -> {state(), #data{}}.
boot(#data{meta = Meta} = D) ->
    Mark = erlpy_python:mark(),
    case erlpy_python:open(Meta, Mark) of
        {ok, Port, OsPid} ->
            {{starting, booting}, setup(D#data{port = Port, os_pid = OsPid, python_pid = undefined,
                                               mark = Mark, start_error = undefined})};
        {error, Reason} ->
            {failed, start_failed(Reason, D)}
    end.

%% Tell Python who we are, then run the pool's init code and replay its exec log; requests
%% wait in `starting' until all of it has run.
-spec setup(#data{}) -> #data{}.
setup(#data{meta = Meta} = D) ->
    Limits = maps:with([max_memory, max_refs, poll_us], Meta),
    Log = erlpy_pool:exec_log(Meta),
    Codes = [{init, Code} || Code <- maps:get(init, Meta)] ++ [{exec, Code} || Code <- Log],
    lists:foldl(
        fun({Kind, Message}, Acc) -> ?IO:internal(Kind, Message, Acc) end,
        D#data{served = 0, execs = length(Log)},
        [{setup, fun(Id) -> [?OP_SETUP, Id, self(), Limits] end} |
         [{Kind, fun(Id) -> [?OP_EXEC, Id, Code] end} || {Kind, Code} <- Codes]]
    ).

-spec start_failed(term(), #data{}) -> #data{}.
start_failed(Reason, D) ->
    %% Not while the pool starts: its start fails with this reason, which its caller gets.
    D#data.start_crashes =:= undefined orelse
        ?LOG_ERROR(#{what => python_start_failed, pool => D#data.pool, worker => D#data.index,
                     reason => Reason}),
    D#data{start_error = Reason, port = undefined}.

-spec python_exited(state(), term(), #data{}) -> gen_statem:event_handler_result(state()).
python_exited(State, Detail0, D0) ->
    {From, Detail} =
        case State of
            {stopping, Was, Killed} -> {Was, Killed};
            {starting, _} -> {starting, Detail0};
            _ -> {ready, Detail0}
        end,
    %% Python is dead, but what it started may live on (and hold the pipes).
    erlpy_python:kill_leftovers(?IO:processes(D0)),
    D = D0#data{port = undefined},
    case From of
        starting when D#data.start_crashes =:= undefined; D#data.start_crashes >= 3 ->
            Error =
                case D#data.start_error of
                    undefined -> Detail;
                    StartError -> StartError
                end,
            next(failed, start_failed(Error, ?IO:fail_all({python_start_failed, Error}, D)));
        _ ->
            ?LOG_WARNING(#{what => python_exited, pool => D#data.pool, worker => D#data.index,
                           os_pid => ?IO:python_pid(D), detail => Detail}),
            D1 = ?IO:fail_all({worker_exited, Detail}, D),
            Crashes =
                case From of
                    starting -> D1#data.start_crashes + 1;
                    ready -> 0
                end,
            {NewState, D2} = boot(D1#data{restarts = D1#data.restarts + 1, start_crashes = Crashes}),
            next(NewState, D2)
    end.

%% Kill Python and wait for its exit in `{stopping, From, Reason}'.
-spec kill_python(term(), state(), #data{}) -> gen_statem:event_handler_result(state()).
kill_python(Reason, State, D) ->
    {State1, D1} = kill(Reason, State, D),
    next(State1, D1).

-spec kill_group_of(#data{}) -> #data{}.
kill_group_of(D) ->
    ok = erlpy_python:kill_group(?IO:processes(D)),
    D.

-spec kill(term(), state(), #data{}) -> {state(), #data{}}.
kill(_, {stopping, _, _} = State, D) -> {State, D};
kill(_, State, #data{port = undefined} = D) -> {State, D};
kill(Reason, {starting, _}, D) -> {{stopping, starting, Reason}, kill_group_of(D)};
kill(Reason, _, D) -> {{stopping, ready, Reason}, kill_group_of(D)}.

%%====================================================================
%% Info
%%====================================================================

-spec worker_info(state(), #data{}) -> map().
worker_info(State, D) ->
    #{
        index => D#data.index,
        pid => self(),
        os_pid => ?IO:python_pid(D),
        state => case State of
                     {starting, _} -> starting;
                     draining -> ready;
                     {stopping, From, _} -> From;
                     _ -> State
                 end,
        in_flight => erlpy_inflight:in_flight(D#data.table),
        restarts => D#data.restarts,
        recycled => D#data.recycled,
        served => D#data.served,
        python => D#data.python
    }.

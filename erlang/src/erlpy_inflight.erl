%% @private
%% @doc The requests in flight on one worker: calls, streams, the requests waiting for
%% Python to start, and the maps that find them (by stream alias, by monitor).
%%
%% Pure: each function takes an event and returns the new table and the effects to
%% perform, in order; erlpy_worker performs them (sends, demonitors, gen_statem timeouts,
%% messages for Python). Every request ends exactly once: one `{done, Id}' effect (the
%% pool's in-flight counter goes down), with at most one final message before it (none
%% when its caller gave up or its owner died), and nothing for it afterwards. The PropEr
%% property in test/erlang/erlpy_inflight_prop_tests.erl checks that over random
%% sequences of events.
-module(erlpy_inflight).

-include("erlpy_protocol.hrl").

-export([new/0, wait/2, take_waiting/3, take_all_waiting/1, refuse/2]).
-export([add_call/5, add_internal/3, add_collect/4, add_stream/6]).
-export([result/3, data/3, undecodable/3, cancel/3, command/3, down/2, idle/2, credit/2,
         grant/3, fail_all/2]).
-export([in_grace/2, in_flight/1, busy/1, pending/1]).
-export_type([table/0, effect/0, request/0, reason/0]).

-type id() :: pos_integer().
-type request() :: {'$erlpy_call' | '$erlpy_collect' | '$erlpy_stream' | '$erlpy_exec',
                    reference(), id(), term()}.
%% Why the worker stops a request; what the owner of a stream sees.
-type reason() :: cancelled | timeout | owner_down | {badarg, term()}.
-type final() :: done | {error, term()}.
-type effect() ::
    {reply, reference(), term()}                      % Alias ! {Alias, Reply}
    | {items, erlpy_stream:owner(), reference(), [term()] | binary()}
    | {final, erlpy_stream:owner(), reference(), final()}
    | {python, list()}                                % a message for Python
    | {input, id(), term()}                           % stream_send: encoded by the worker
    | {demonitor, reference()}
    | {unalias, reference()}
    | {done, id()}                                    % the request has ended
    | {grace, id()} | {stop_grace, id()}              % the cancel_grace timer
    | {idle, id(), timeout()}                         % (re)start the idle timer; infinity: stop
    | {gate, pid(), id(), reference()}                % a stream paced by its owner (erlpy_owner)
    | {ungate, pid(), id()}
    | {credit_due, pid(), id(), reference()}          % ask erlpy_owner, then grant/3
    | {internal, setup | init | exec, {ok, term()} | {error, term()} | done}
    | {exec_ran, pos_integer()}.

-record(call, {
    alias :: reference() | {internal, setup | init | exec},
    %% The caller: a caller that dies (killed, not timed out) cancels its request.
    monitor :: reference() | undefined,
    %% Its caller gave up: it hears nothing more.
    cancelled = false :: boolean(),
    %% For the pool's `exec': the place of its code in the pool's exec log.
    exec :: pos_integer() | undefined
}).

-record(entry, {
    stream :: erlpy_stream:stream(),
    monitor :: reference(),
    idle = infinity :: timeout(),
    %% Why the stream is being stopped, once Python was asked to stop it.
    stopping = false :: false | reason(),
    %% Started with `input => true' (stream_send and stream_close allowed).
    input = false :: boolean(),
    %% Paced by its owner's backlog (a local owner, no window): see erlpy_owner.
    gated = false :: boolean(),
    %% Started in a session: the id of its namespace's handle, which Python calls stale
    %% once the session has ended (its owner sees `session_ended', as callers do).
    session :: pos_integer() | undefined
}).

-record(table, {
    calls = #{} :: #{id() => #call{}},
    streams = #{} :: #{id() => #entry{}},
    aliases = #{} :: #{reference() => id()},
    monitors = #{} :: #{reference() => id()},
    %% Requests Python was asked to stop: their cancel_grace timer runs.
    grace = #{} :: #{id() => true},
    %% Requests that came while Python was starting, oldest first.
    waiting = queue:new() :: queue:queue(request()),
    %% Requests of the worker's own (setup, init, exec log) among `calls'.
    pending = 0 :: non_neg_integer()
}).

-opaque table() :: #table{}.
-type result() :: {table(), [effect()]}.

-spec new() -> table().
new() -> #table{}.

%%====================================================================
%% Requests waiting for Python to start
%%====================================================================

-spec wait(request(), table()) -> table().
wait(Request, #table{waiting = Waiting} = T) ->
    T#table{waiting = queue:in(Request, Waiting)}.

%% @doc Take back a request that still waits, answered with `Reply' (`none': its caller
%% gave up and hears nothing more).
-spec take_waiting(id(), none | {error, timeout}, table()) -> result().
take_waiting(Id, Reply, #table{waiting = Waiting} = T) ->
    case queue:is_empty(Waiting) of
        true ->
            {T, []};
        false ->
            case lists:partition(fun({_, _, I, _}) -> I =:= Id end, queue:to_list(Waiting)) of
                {[{_, Alias, _, _}], Rest} ->
                    Reply1 = [{reply, Alias, Reply} || Reply =/= none],
                    {T#table{waiting = queue:from_list(Rest)}, Reply1 ++ [{done, Id}]};
                {_, _} ->
                    {T, []}
            end
    end.

-spec take_all_waiting(table()) -> {[request()], table()}.
take_all_waiting(#table{waiting = Waiting} = T) ->
    {queue:to_list(Waiting), T#table{waiting = queue:new()}}.

%% @doc Python cannot start: the request gets the reason.
-spec refuse(request(), term()) -> [effect()].
refuse({_, Alias, Id, _}, Error) ->
    [{reply, Alias, {error, {python_start_failed, Error}}}, {done, Id}].

%%====================================================================
%% Requests sent to Python
%%====================================================================

-spec add_call(id(), reference(), reference(), pos_integer() | undefined, table()) -> table().
add_call(Id, Alias, Mon, Exec, #table{calls = Calls, monitors = Monitors} = T) ->
    T#table{calls = Calls#{Id => #call{alias = Alias, monitor = Mon, exec = Exec}},
            monitors = Monitors#{Mon => Id}}.

%% @doc A request of the worker's own: no caller, no answer, no counter.
-spec add_internal(id(), setup | init | exec, table()) -> table().
add_internal(Id, Kind, #table{calls = Calls, pending = Pending} = T) ->
    T#table{calls = Calls#{Id => #call{alias = {internal, Kind}}}, pending = Pending + 1}.

%% @doc A stream collected whole: its chunks and its end go to the caller's alias.
-spec add_collect(id(), reference(), reference(), table()) -> table().
add_collect(Id, Alias, Mon, #table{streams = Streams, monitors = Monitors} = T) ->
    Collect = erlpy_stream:new(Alias, {collect, Alias}, infinity, ?COLLECT_CREDIT),
    T#table{streams = Streams#{Id => #entry{stream = Collect, monitor = Mon}},
            monitors = Monitors#{Mon => Id}}.

%% @doc A stream with an owner; `Ref' (an alias of the worker) is its reference.
-spec add_stream(id(), reference(), reference(), reference(), map(), table()) -> result().
add_stream(Id, Alias, Ref, Mon, #{owner := Owner} = Opts, T) ->
    Window = maps:get(window, Opts, infinity),
    Idle = maps:get(idle_timeout, Opts, infinity),
    %% A local owner without a window is paced by its backlog, with its other streams.
    Gated = Window =:= infinity andalso node(Owner) =:= node(),
    Entry = #entry{stream = erlpy_stream:new(Ref, Owner, Window, erlpy_stream:initial_credit(Window)),
                   monitor = Mon, idle = Idle, input = maps:get(input, Opts, false), gated = Gated,
                   session = maps:get(session, Opts, undefined)},
    T1 = T#table{streams = (T#table.streams)#{Id => Entry},
                 aliases = (T#table.aliases)#{Ref => Id},
                 monitors = (T#table.monitors)#{Mon => Id}},
    {T1, [{reply, Alias, {ok, Ref}}] ++ [{gate, Owner, Id, Ref} || Gated] ++
         [{idle, Id, Idle} || Idle =/= infinity]}.

%%====================================================================
%% Events
%%====================================================================

%% @doc A request ended on the Python side (RESULT, ERROR, FAIL or DONE).
-spec result(id(), {ok, term()} | {error, term()} | done, table()) -> result().
result(Id, Result, #table{calls = Calls} = T) ->
    case maps:take(Id, Calls) of
        {#call{alias = {internal, Kind}}, Calls1} ->
            {T#table{calls = Calls1, pending = T#table.pending - 1}, [{internal, Kind, Result}]};
        {Call, Calls1} ->
            end_call(Id, Call, Result, T#table{calls = Calls1});
        error ->
            case T#table.streams of
                #{Id := Entry} -> finish_stream(Id, Entry, Result, T);
                #{} -> {T, []}
            end
    end.

-spec end_call(id(), #call{}, term(), table()) -> result().
end_call(Id, #call{alias = Alias, monitor = Mon, cancelled = Cancelled, exec = Index}, Result, T) ->
    {T1, Grace} = stop_grace(Id, T),
    Reply = case Cancelled of
                false -> [{reply, Alias, Result}];
                true -> []
            end,
    Exec = case Result of
               {ok, _} when is_integer(Index) -> [{exec_ran, Index}];
               _ -> []
           end,
    {T1#table{monitors = maps:remove(Mon, T1#table.monitors)},
     Reply ++ [{demonitor, Mon}, {done, Id} | Exec ++ Grace]}.

-spec finish_stream(id(), #entry{}, term(), table()) -> result().
finish_stream(Id, #entry{stopping = false, stream = S} = Entry, Result, T) ->
    Final = case Result of
                {error, _} = Error -> Error;
                _ -> done
            end,
    case erlpy_stream:finish(Final, S) of
        {send, Final} ->
            end_stream(Id, Entry, Final, T);
        {held, S1} ->
            %% The generator is done; only the owner's window holds the rest back, which
            %% is no reason for an idle timeout.
            {put_entry(Id, Entry#entry{stream = S1, idle = infinity}, T),
             [{idle, Id, infinity} || Entry#entry.idle =/= infinity]}
    end;
finish_stream(Id, #entry{stopping = Reason} = Entry, _, T) ->
    end_stream(Id, Entry, {error, Reason}, T).

%% Send the terminal message (owners that died get none) and forget the stream.
-spec end_stream(id(), #entry{}, final(), table()) -> result().
end_stream(Id, #entry{stream = S, monitor = Mon, idle = Idle, stopping = Stopping, gated = Gated,
                      session = Session},
           Final0, T0) ->
    {T, Grace} = stop_grace(Id, T0),
    Final = case Final0 of
                {error, {stale_ref, Session}} -> {error, session_ended};
                _ -> Final0
            end,
    Ref = erlpy_stream:ref(S),
    Owner = erlpy_stream:owner(S),
    Effects =
        [{ungate, Owner, Id} || Gated] ++
        [{final, Owner, Ref, Final} || Stopping =/= owner_down orelse not is_pid(Owner)] ++
        [{demonitor, Mon}] ++
        [{idle, Id, infinity} || Idle =/= infinity] ++
        [{unalias, Ref} || is_pid(Owner)] ++
        [{done, Id} | Grace],
    {T#table{streams = maps:remove(Id, T#table.streams),
             aliases = maps:remove(Ref, T#table.aliases),
             monitors = maps:remove(Mon, T#table.monitors)},
     Effects}.

%% @doc Items of a stream arrived from Python.
-spec data(id(), [term()] | binary(), table()) -> result().
data(Id, Items, T) ->
    case T#table.streams of
        #{Id := #entry{stopping = false, stream = S, idle = Idle} = Entry} ->
            {Send, S1} = erlpy_stream:deliver(Items, S),
            Out = [{items, erlpy_stream:owner(S), erlpy_stream:ref(S), Send} || Send =/= []],
            Restart = [{idle, Id, Idle} || Idle =/= infinity],
            {T1, Credit} = give_credit(Id, Entry#entry{stream = S1}, T),
            {T1, Out ++ Restart ++ Credit};
        #{} ->
            {T, []}
    end.

%% A stream paced by its owner asks erlpy_owner first (the worker looks at the owner).
-spec give_credit(id(), #entry{}, table()) -> result().
give_credit(Id, #entry{gated = false, stream = S} = Entry, T) ->
    %% A window sets its own limit; a remote owner without one gets the whole budget.
    {N, S1} =
        case erlpy_stream:windowed(S) of
            true -> erlpy_stream:take_credit(S);
            false -> erlpy_stream:take_credit(?STREAM_CREDIT, S)
        end,
    {put_entry(Id, Entry#entry{stream = S1}, T), [{python, [?OP_CREDIT, Id, N]} || N > 0]};
give_credit(Id, #entry{stream = S} = Entry, T) ->
    Due = [{credit_due, erlpy_stream:owner(S), Id, erlpy_stream:ref(S)} || erlpy_stream:credit_due(S)],
    {put_entry(Id, Entry, T), Due}.

%% @doc Ask again for credit for a stream that was held back by its owner's backlog.
-spec credit(id(), table()) -> [effect()].
credit(Id, T) ->
    case T#table.streams of
        #{Id := #entry{gated = true, stream = S}} ->
            [{credit_due, erlpy_stream:owner(S), Id, erlpy_stream:ref(S)} || erlpy_stream:credit_due(S)];
        #{} ->
            []
    end.

%% @doc The owner may have more: Python may run `Target' items ahead on the stream again.
-spec grant(id(), pos_integer(), table()) -> result().
grant(Id, Target, T) ->
    case T#table.streams of
        #{Id := #entry{stream = S} = Entry} ->
            {N, S1} = erlpy_stream:take_credit(Target, S),
            {put_entry(Id, Entry#entry{stream = S1}, T), [{python, [?OP_CREDIT, Id, N]} || N > 0]};
        #{} ->
            {T, []}
    end.

%% @doc A message for request `Id' could not be decoded.
-spec undecodable(id(), term(), table()) -> result().
undecodable(Id, Reason, T) ->
    case T#table.streams of
        #{Id := _} -> cancel(Id, {badarg, Reason}, T);
        #{} -> result(Id, {error, {badarg, Reason}}, T)
    end.

%% @doc Ask Python to stop a request. Its answer (or the grace timer) ends it; the reason
%% is what the owner of a stream will see.
-spec cancel(id(), reason(), table()) -> result().
cancel(Id, Reason, #table{calls = Calls, streams = Streams} = T) ->
    case {Calls, Streams} of
        {#{Id := #call{cancelled = false, alias = Alias} = Call}, _} when is_reference(Alias) ->
            stop(Id, T#table{calls = Calls#{Id := Call#call{cancelled = true}}});
        {_, #{Id := #entry{stopping = false, stream = S} = Entry}} ->
            case erlpy_stream:python_done(S) of
                true ->
                    %% Python already finished it: drop the held items, nothing to stop.
                    end_stream(Id, Entry#entry{stopping = Reason}, {error, Reason}, T);
                false ->
                    stop(Id, put_entry(Id, Entry#entry{stopping = Reason}, T))
            end;
        _ ->
            {T, []}
    end.

-spec stop(id(), table()) -> result().
stop(Id, #table{grace = Grace} = T) ->
    {T#table{grace = Grace#{Id => true}}, [{python, [?OP_CANCEL, Id]}, {grace, Id}]}.

%% @doc A command of a stream's owner, sent through the stream reference.
-spec command(reference(), cancel | close | {ack, pos_integer()} | {send, term()}, table()) ->
    result().
command(Ref, Command, #table{aliases = Aliases} = T) ->
    case Aliases of
        #{Ref := Id} -> stream_command(Id, Command, T);
        #{} -> {T, []}
    end.

-spec stream_command(id(), term(), table()) -> result().
stream_command(Id, cancel, T) ->
    cancel(Id, cancelled, T);
stream_command(Id, {ack, N}, T) ->
    case T#table.streams of
        #{Id := #entry{stopping = false, stream = S} = Entry} ->
            {Released, S1} = erlpy_stream:ack(N, S),
            Out = [{items, erlpy_stream:owner(S), erlpy_stream:ref(S), Released} || Released =/= []],
            {T1, Effects} =
                case erlpy_stream:terminal(S1) of
                    undefined -> give_credit(Id, Entry#entry{stream = S1}, T);
                    Final -> end_stream(Id, Entry#entry{stream = S1}, Final, T)
                end,
            {T1, Out ++ Effects};
        #{} ->
            {T, []}
    end;
stream_command(Id, Input, T) ->
    case {T#table.streams, Input} of
        {#{Id := #entry{input = true}}, {send, Value}} -> {T, [{input, Id, Value}]};
        {#{Id := #entry{input = true}}, close} -> {T, [{python, [?OP_INPUT_CLOSE, Id]}]};
        {#{Id := _}, _} -> cancel(Id, {badarg, no_input}, T);
        {#{}, _} -> {T, []}
    end.

%% @doc A monitored caller or owner died.
-spec down(reference(), table()) -> result().
down(Mon, #table{monitors = Monitors} = T) ->
    case maps:take(Mon, Monitors) of
        {Id, Monitors1} -> cancel(Id, owner_down, T#table{monitors = Monitors1});
        error -> {T, []}
    end.

%% @doc A stream's idle timer fired.
-spec idle(id(), table()) -> result().
idle(Id, T) ->
    case T#table.streams of
        #{Id := #entry{idle = Idle}} when Idle =/= infinity -> cancel(Id, timeout, T);
        #{} -> {T, []}
    end.

%% @doc Python is gone (or about to be): every request in flight gets exactly one answer,
%% `Error' (a stream being stopped gets the reason it is stopped for). Waiting requests
%% stay for the next Python.
-spec fail_all(term(), table()) -> result().
fail_all(Error, #table{calls = Calls, streams = Streams, waiting = Waiting} = T) ->
    CallEffects =
        lists:append([element(2, end_call(Id, Call, {error, Error}, T))
                      || {Id, #call{alias = Alias} = Call} <- lists:sort(maps:to_list(Calls)),
                         is_reference(Alias)]),
    {_, StreamEffects} =
        lists:foldl(
            fun({Id, Entry}, {Acc, Effects}) ->
                Final = case Entry#entry.stopping of
                            false -> {error, Error};
                            Reason -> {error, Reason}
                        end,
                {Acc1, E} = end_stream(Id, Entry, Final, Acc),
                {Acc1, Effects ++ E}
            end,
            {T, []},
            lists:sort(maps:to_list(Streams))),
    {#table{waiting = Waiting}, CallEffects ++ StreamEffects}.

%%====================================================================
%% Queries
%%====================================================================

-spec in_grace(id(), table()) -> boolean().
in_grace(Id, #table{grace = Grace}) -> is_map_key(Id, Grace).

%% @doc Requests of callers in flight (the worker's own not counted).
-spec in_flight(table()) -> non_neg_integer().
in_flight(#table{calls = Calls, streams = Streams, pending = Pending}) ->
    map_size(Calls) + map_size(Streams) - Pending.

-spec busy(table()) -> boolean().
busy(#table{calls = Calls, streams = Streams}) -> map_size(Calls) + map_size(Streams) > 0.

%% @doc Requests of the worker's own still running (setup, init, the exec log).
-spec pending(table()) -> non_neg_integer().
pending(#table{pending = Pending}) -> Pending.

%%====================================================================
%% Internal
%%====================================================================

-spec put_entry(id(), #entry{}, table()) -> table().
put_entry(Id, Entry, #table{streams = Streams} = T) ->
    T#table{streams = Streams#{Id => Entry}}.

-spec stop_grace(id(), table()) -> {table(), [effect()]}.
stop_grace(Id, #table{grace = Grace} = T) ->
    case maps:take(Id, Grace) of
        {true, Grace1} -> {T#table{grace = Grace1}, [{stop_grace, Id}]};
        error -> {T, []}
    end.

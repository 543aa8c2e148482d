%% PropEr property of erlpy_inflight, the worker's table of requests in flight, run from
%% EUnit without Python: over random sequences of events (requests that start at once or
%% wait for Python, replies, errors, stream items, acks, cancels, caller timeouts, idle
%% and grace timeouts, owner deaths, undecodable replies, Python exits), every request
%% ends with exactly one final message:
%%   * exactly one `{done, Id}' (the pool's in-flight counter goes down once);
%%   * at most one answer to the caller's alias, and exactly one unless its caller gave up
%%     or died first; a started stream gets at most one terminal message, and exactly one
%%     unless its owner died first;
%%   * nothing is sent for a request after it ended, no item after a stream's terminal;
%%   * each grace timer started is stopped, each monitor removed once, and the table is
%%     empty once Python has exited.
-module(erlpy_inflight_prop_tests).
-include_lib("eunit/include/eunit.hrl").

-define(FORALL(X, RawType, Prop), proper:forall(RawType, fun(X) -> Prop end)).
-define(WHENFAIL(Action, Prop), proper:whenfail(fun() -> Action end, fun() -> Prop end)).
-define(NUMTESTS, 3000).
-define(REQS, 6).

%%====================================================================
%% Generators
%%====================================================================

req() -> proper_types:integer(1, ?REQS).

event() ->
    T = proper_types:frequency([
        {3, {call, req()}},
        {1, {exec, req(), proper_types:integer(1, 3)}},
        {2, {collect, req()}},
        {3, {stream, req(), proper_types:oneof([infinity, proper_types:integer(1, 4)]),
             proper_types:oneof([infinity, 100]), proper_types:boolean()}},
        {2, {wait, req(), proper_types:oneof(['$erlpy_call', '$erlpy_collect', '$erlpy_stream',
                                              '$erlpy_exec'])}},
        {1, {internal, req()}},
        {1, start_waiting},
        {1, refuse_waiting},
        {1, {abandon, req()}},
        {2, {caller_cancel, req()}},
        {4, {result, req(), proper_types:oneof([ok, error, fail])}},
        {3, {done, req()}},
        {4, {data, req(), proper_types:integer(1, 40)}},
        {1, {chunk, req()}},
        {2, {ack, req(), proper_types:integer(1, 5)}},
        {2, {stream_cancel, req()}},
        {1, {send, req()}},
        {1, {close, req()}},
        {2, {down, req()}},
        {1, {idle, req()}},
        {1, {grace, req()}},
        {1, {undecodable, req()}},
        {1, {recheck, req()}},
        {1, python_exit}
    ]),
    T.

events() -> proper_types:list(event()).

%%====================================================================
%% Driver: applies events to the table as erlpy_worker does, records every effect
%%====================================================================

-record(s, {
    table = erlpy_inflight:new() :: erlpy_inflight:table(),
    %% K => kind; and every reference that names a request (alias, stream ref, monitor)
    kinds = #{} :: #{pos_integer() => atom()},
    names = #{} :: #{term() => pos_integer()},
    waiting = #{} :: #{pos_integer() => true},
    started = #{} :: #{pos_integer() => true},
    ended = #{} :: #{pos_integer() => true},
    silenced = #{} :: #{pos_integer() => true},
    %% {K, Effect}, newest first
    log = [] :: [{pos_integer() | none, term()}]
}).

run(Events) ->
    S = lists:foldl(fun apply_event/2, #s{}, Events),
    %% Python starts and then exits: whatever waits or runs ends.
    lists:foldl(fun apply_event/2, S, [start_waiting, python_exit]).

apply_event({call, K}, S) -> submit(K, call, S);
apply_event({exec, K, I}, S) -> submit(K, {exec, I}, S);
apply_event({collect, K}, S) -> submit(K, collect, S);
apply_event({stream, K, W, Idle, Input}, S) -> submit(K, {stream, W, Idle, Input}, S);
apply_event({internal, K}, #s{kinds = Kinds} = S) when not is_map_key(K, Kinds) ->
    S#s{kinds = Kinds#{K => internal}, table = erlpy_inflight:add_internal(K, init, S#s.table)};
apply_event({wait, K, Tag}, #s{kinds = Kinds} = S) when not is_map_key(K, Kinds) ->
    Alias = make_ref(),
    Payload = case Tag of
                  '$erlpy_stream' -> #{owner => self(), request => <<>>};
                  '$erlpy_exec' -> {self(), <<>>, 1};
                  _ -> {self(), <<>>}
              end,
    Kind = maps:get(Tag, #{'$erlpy_call' => call, '$erlpy_collect' => collect,
                           '$erlpy_stream' => stream, '$erlpy_exec' => call}),
    S#s{kinds = Kinds#{K => Kind}, names = (S#s.names)#{Alias => K},
        waiting = (S#s.waiting)#{K => true},
        table = erlpy_inflight:wait({Tag, Alias, K, Payload}, S#s.table)};
apply_event(start_waiting, S) ->
    {Waiting, T} = erlpy_inflight:take_all_waiting(S#s.table),
    lists:foldl(fun accept/2, S#s{table = T, waiting = #{}}, Waiting);
apply_event(refuse_waiting, S) ->
    {Waiting, T} = erlpy_inflight:take_all_waiting(S#s.table),
    lists:foldl(fun(R, Acc) -> record(erlpy_inflight:refuse(R, no_python), Acc) end,
                S#s{table = T, waiting = #{}}, Waiting);
apply_event({abandon, K}, S) ->
    perform(erlpy_inflight:take_waiting(K, {error, timeout}, S#s.table),
            S#s{waiting = maps:remove(K, S#s.waiting)});
apply_event({caller_cancel, K}, S) ->
    %% '$erlpy_cancel': a caller that timed out; it hears nothing more of a call.
    S1 = case is_map_key(K, S#s.waiting) orelse
                  (maps:get(K, S#s.kinds, none) =:= call andalso live(K, S)) of
             true -> S#s{silenced = (S#s.silenced)#{K => true}};
             false -> S
         end,
    S2 = perform(erlpy_inflight:take_waiting(K, none, S1#s.table),
                 S1#s{waiting = maps:remove(K, S1#s.waiting)}),
    perform(erlpy_inflight:cancel(K, timeout, S2#s.table), S2);
apply_event({result, K, ok}, S) -> perform(erlpy_inflight:result(K, {ok, K}, S#s.table), S);
apply_event({result, K, error}, S) ->
    perform(erlpy_inflight:result(K, {error, {python, t, m, tb}}, S#s.table), S);
apply_event({result, K, fail}, S) -> perform(erlpy_inflight:result(K, {error, cancelled}, S#s.table), S);
apply_event({done, K}, S) -> perform(erlpy_inflight:result(K, done, S#s.table), S);
apply_event({data, K, N}, S) -> perform(erlpy_inflight:data(K, lists:seq(1, N), S#s.table), S);
apply_event({chunk, K}, S) ->
    case maps:get(K, S#s.kinds, none) of
        collect -> perform(erlpy_inflight:data(K, <<1, 2, 3>>, S#s.table), S);
        _ -> S
    end;
apply_event({ack, K, N}, S) -> command(K, {ack, N}, S);
apply_event({stream_cancel, K}, S) -> command(K, cancel, S);
apply_event({send, K}, S) -> command(K, {send, value}, S);
apply_event({close, K}, S) -> command(K, close, S);
apply_event({down, K}, S) ->
    case [M || {{mon, M}, K1} <- maps:to_list(S#s.names), K1 =:= K] of
        [Mon] ->
            %% A dead caller hears nothing; a dead owner gets no terminal message (a
            %% collecting caller's alias still gets one, harmlessly).
            S1 = case live(K, S) andalso maps:get(K, S#s.kinds) =/= collect of
                     true -> S#s{silenced = (S#s.silenced)#{K => true}};
                     false -> S
                 end,
            perform(erlpy_inflight:down(Mon, S1#s.table), S1);
        [] ->
            S
    end;
apply_event({idle, K}, S) -> perform(erlpy_inflight:idle(K, S#s.table), S);
apply_event({grace, K}, S) ->
    case erlpy_inflight:in_grace(K, S#s.table) of
        true -> apply_event(python_exit, S);   % killed after cancel_grace
        false -> S
    end;
apply_event({undecodable, K}, S) -> perform(erlpy_inflight:undecodable(K, bad, S#s.table), S);
apply_event({recheck, K}, S) -> effects(erlpy_inflight:credit(K, S#s.table), S);
apply_event(python_exit, S) ->
    perform(erlpy_inflight:fail_all({worker_exited, {exit_status, 1}}, S#s.table), S);
apply_event(_, S) ->
    S.

live(K, S) -> is_map_key(K, S#s.started) andalso not is_map_key(K, S#s.ended).

%% A request that starts at once, as the worker accepts it when ready.
submit(K, Kind, #s{kinds = Kinds} = S) when not is_map_key(K, Kinds) ->
    Alias = make_ref(),
    {Tag, Payload} =
        case Kind of
            call -> {'$erlpy_call', {self(), <<>>}};
            {exec, I} -> {'$erlpy_exec', {self(), <<>>, I}};
            collect -> {'$erlpy_collect', {self(), <<>>}};
            {stream, W, Idle, Input} ->
                {'$erlpy_stream', maps:merge(#{owner => self(), request => <<>>, input => Input},
                                             maps:from_list([{window, W} || W =/= infinity] ++
                                                            [{idle_timeout, Idle} || Idle =/= infinity]))}
        end,
    Kind1 = case Kind of {exec, _} -> call; {stream, _, _, _} -> stream; _ -> Kind end,
    accept({Tag, Alias, K, Payload},
           S#s{kinds = Kinds#{K => Kind1}, names = (S#s.names)#{Alias => K}});
submit(_, _, S) ->
    S.

accept({Tag, Alias, K, Payload}, S) ->
    Mon = make_ref(),
    S1 = S#s{names = (S#s.names)#{{mon, Mon} => K, Mon => K}, started = (S#s.started)#{K => true}},
    T = S1#s.table,
    case Tag of
        '$erlpy_call' -> S1#s{table = erlpy_inflight:add_call(K, Alias, Mon, undefined, T)};
        '$erlpy_exec' -> S1#s{table = erlpy_inflight:add_call(K, Alias, Mon, element(3, Payload), T)};
        '$erlpy_collect' -> S1#s{table = erlpy_inflight:add_collect(K, Alias, Mon, T)};
        '$erlpy_stream' ->
            Ref = make_ref(),
            perform(erlpy_inflight:add_stream(K, Alias, Ref, Mon, Payload, T),
                    S1#s{names = (S1#s.names)#{Ref => K}})
    end.

command(K, Command, S) ->
    case [R || {R, K1} <- maps:to_list(S#s.names), K1 =:= K, is_reference(R),
               not is_map_key({mon, R}, S#s.names), is_stream_ref(R, K, S)] of
        [Ref] -> perform(erlpy_inflight:command(Ref, Command, S#s.table), S);
        [] -> S
    end.

%% The stream reference is the one its start reply carried.
is_stream_ref(R, K, S) ->
    lists:any(fun({K1, {reply, _, {ok, R1}}}) -> K1 =:= K andalso R1 =:= R; (_) -> false end, S#s.log).

perform({T, Effects}, S) -> effects(Effects, S#s{table = T}).

record(Effects, S) -> effects(Effects, S).

effects(Effects, S) -> lists:foldl(fun effect/2, S, Effects).

%% Effects that feed back into the table, as the worker performs them.
effect({credit_due, _, Id, _} = E, S) ->
    perform(erlpy_inflight:grant(Id, 8192, S#s.table), log(E, S));
effect({done, K} = E, S) ->
    log(E, S#s{ended = (S#s.ended)#{K => true}});
effect(E, S) ->
    log(E, S).

log(E, S) -> S#s{log = [{key(E, S), E} | S#s.log]}.

key({reply, Alias, _}, S) -> name(Alias, S);
key({items, {collect, A}, _, _}, S) -> name(A, S);
key({items, _, Ref, _}, S) -> name(Ref, S);
key({final, {collect, A}, _, _}, S) -> name(A, S);
key({final, _, Ref, _}, S) -> name(Ref, S);
key({python, [_, Id | _]}, _) -> Id;
key({input, Id, _}, _) -> Id;
key({demonitor, Mon}, S) -> name(Mon, S);
key({unalias, Ref}, S) -> name(Ref, S);
key({done, Id}, _) -> Id;
key({grace, Id}, _) -> Id;
key({stop_grace, Id}, _) -> Id;
key({idle, Id, _}, _) -> Id;
key({gate, _, Id, _}, _) -> Id;
key({ungate, _, Id}, _) -> Id;
key({credit_due, _, Id, _}, _) -> Id;
key(_, _) -> none.

name(Name, S) -> maps:get(Name, S#s.names, none).

%%====================================================================
%% The property
%%====================================================================

prop_one_final_message() ->
    ?FORALL(Events, events(),
        begin
            S = run(Events),
            Problems = problems(S),
            ?WHENFAIL(io:format("events ~p~nproblems ~p~nlog ~p~n",
                                [Events, Problems, lists:reverse(S#s.log)]),
                      Problems =:= [])
        end).

problems(#s{kinds = Kinds, log = Log0, table = T} = S) ->
    Log = lists:reverse(Log0),
    Table = [{table_not_empty, erlpy_inflight:in_flight(T)} || erlpy_inflight:busy(T)],
    Table ++ [{K, P} || {K, Kind} <- maps:to_list(Kinds), Kind =/= internal,
                        P <- request_problems(Kind, [E || {K1, E} <- Log, K1 =:= K],
                                              is_map_key(K, S#s.silenced))]
          ++ [{K, internal_done} || {K, internal} <- maps:to_list(Kinds),
                                    lists:member({K, {done, K}}, Log)].

request_problems(Kind, Effects, Silenced) ->
    Count = fun(F) -> length([E || E <- Effects, F(E)]) end,
    Done = Count(fun({done, _}) -> true; (_) -> false end),
    Replies = Count(fun({reply, _, _}) -> true; (_) -> false end),
    Started = lists:any(fun({reply, _, {ok, _}}) -> true; (_) -> false end, Effects),
    Finals = Count(fun({final, _, _, _}) -> true; (_) -> false end),
    Answers = case Kind of
                  stream -> Replies;
                  _ -> Replies + Finals
              end,
    [{done, Done} || Done =/= 1] ++
    [{answers, Answers} || Answers > 1] ++
    [{no_answer, Kind} || Answers =:= 0, not Silenced] ++
    [{stream_finals, Finals} || Kind =:= stream, Finals > 1] ++
    [{no_terminal, stream} || Kind =:= stream, Started, Finals =:= 0, not Silenced] ++
    [{after_done, E} || E <- after_first(fun({done, _}) -> true; (_) -> false end, Effects),
                        is_message(E)] ++
    [{item_after_final, E} || {items, _, _, _} = E <-
                                  after_first(fun({final, _, _, _}) -> true; (_) -> false end, Effects)] ++
    [{grace_timers, G, S} || G <- [Count(fun({grace, _}) -> true; (_) -> false end)],
                             S <- [Count(fun({stop_grace, _}) -> true; (_) -> false end)], G =/= S] ++
    [{demonitors, N} || N <- [Count(fun({demonitor, _}) -> true; (_) -> false end)], N > 1].

after_first(F, Effects) ->
    case lists:dropwhile(fun(E) -> not F(E) end, Effects) of
        [] -> [];
        [_ | Rest] -> Rest
    end.

is_message({reply, _, _}) -> true;
is_message({items, _, _, _}) -> true;
is_message({final, _, _, _}) -> true;
is_message({python, _}) -> true;
is_message({input, _, _}) -> true;
is_message(_) -> false.

%%====================================================================
%% EUnit
%%====================================================================

one_final_message_test_() ->
    {timeout, 300, fun() ->
        ?assertEqual(true, erlpy_codec_prop_tests:check(prop_one_final_message(), ?NUMTESTS))
    end}.

%% A few sequences spelled out, as examples of what the property covers.
examples_test() ->
    %% a call answered, then a late duplicate RESULT: one reply, one done
    ?assertEqual([], problems(run([{call, 1}, {result, 1, ok}, {result, 1, ok}]))),
    %% a stream whose owner dies, then Python answers the cancel
    ?assertEqual([], problems(run([{stream, 1, infinity, infinity, false}, {data, 1, 3},
                                   {down, 1}, {result, 1, fail}]))),
    %% a window stream that finished with items held, then cancelled
    ?assertEqual([], problems(run([{stream, 1, 2, 100, false}, {data, 1, 5}, {done, 1},
                                   {stream_cancel, 1}]))),
    %% a request waiting for Python, abandoned; another refused
    ?assertEqual([], problems(run([{wait, 1, '$erlpy_stream'}, {abandon, 1},
                                   {wait, 2, '$erlpy_call'}, refuse_waiting]))),
    %% cancel, then the grace timer: Python killed, everything answered once
    ?assertEqual([], problems(run([{call, 1}, {collect, 2}, {caller_cancel, 1}, {grace, 1}]))).

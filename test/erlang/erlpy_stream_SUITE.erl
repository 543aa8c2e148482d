%% Streams end to end against real Python workers: delivery, ordering, exactly one terminal
%% message, cancellation, owner death, windows and credit, input streams, worker crashes,
%% idle timeouts and the error shapes of SPEC §4.
%%
%% The Python side lives in a module file written to the suite's priv_dir, which is put on
%% the default pool's path. Side effects that must be observed from Erlang (a generator's
%% `finally' ran, how far a generator got) are files whose paths the test passes in, so
%% they do not depend on which worker ran the generator.
-module(erlpy_stream_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(M, erlpy_stream_helpers).

all() ->
    [
        {group, delivery},
        {group, cancellation},
        {group, window},
        {group, input},
        {group, failures},
        {group, errors},
        {group, regressions}
    ].

groups() ->
    [
        {delivery, [], [
            many_items_sync_owner,
            many_items_async_owner,
            many_items_sync_collect,
            many_items_async_collect,
            many_items_stream_eval,
            stream_eval_async_and_locals,
            concurrent_streams_one_owner,
            iterable_kinds_stream_start,
            iterable_kinds_collect,
            kwargs_option,
            owner_option,
            slow_sync_items_arrive_as_produced,
            slow_async_items_arrive_as_produced,
            idle_timeout_not_hit_by_steady_stream
        ]},
        {cancellation, [], [
            cancel_sync_endless,
            cancel_async_endless,
            cancel_sync_busy_generator,
            cancel_twice_and_after_end,
            owner_killed_sync,
            owner_killed_async
        ]},
        {window, [], [
            window_owner_never_acks,
            window_full_stream_with_acks,
            window_end_held_until_acked,
            window_one,
            unread_owner_bounded_sync,
            unread_owner_bounded_async
        ]},
        {input, [], [
            input_processor_1000,
            input_interactive,
            input_send_unencodable
        ]},
        {failures, [], [
            worker_killed_mid_stream,
            worker_killed_mid_collect,
            idle_timeout_async,
            idle_timeout_sync,
            collect_timeout_sync,
            collect_timeout_async,
            collect_caller_killed,
            cancel_stuck_in_c_code
        ]},
        {errors, [], [
            error_after_items_sync,
            error_after_items_async,
            error_not_iterable,
            error_missing_module,
            error_missing_function,
            error_collect_raising,
            error_stream_eval_raising,
            error_unencodable_item,
            collect_undecodable_items,
            cancel_unknown_ref,
            bad_options
        ]},
        %% Product bugs these tests found (all fixed since): each case's doc names the bug.
        %% A product bug found later goes to a group `known_bugs' that all/0 does not run.
        {regressions, [], [
            async_cancelled_after_finally,
            cancel_window_held_keeps_worker,
            owner_down_window_held_keeps_worker,
            idle_timeout_window_held_keeps_worker,
            start_then_cancel_async,
            queued_request_timeout_keeps_worker,
            paused_sync_stream_does_not_block_worker,
            owner_backlog_two_streams_in_turn,
            owner_backlog_unrelated_messages,
            cancelled_sync_finally_calls_erlang
        ]}
    ].

cancelled_sync_finally_calls_erlang(Config) ->
    erlpy_test:doc("a sync generator whose finally calls erlang.call() twice, cancelled: "
                   "both calls run and return, the finally runs to its end before "
                   "{error, cancelled}, and the worker goes on serving"),
    Self = self(),
    ok = py:register_function(stream_cleanup, fun(Which, N) -> Self ! {cleanup, Which, N}, Which end),
    try
        Mark = path(Config, "closed"),
        {ok, Ref} = py:stream_start(?M, endless_calls_back, [Mark]),
        _ = erlpy_test:take(Ref, 10),
        ok = py:stream_cancel(Ref),
        ?assertMatch({{error, cancelled}, _}, erlpy_test:collect(Ref, 10000)),
        ?assertEqual(2, read(Mark)),
        receive {cleanup, <<"first">>, _} -> ok after 5000 -> ct:fail(no_first_callback) end,
        receive {cleanup, <<"second">>, _} -> ok after 5000 -> ct:fail(no_second_callback) end,
        assert_silent(Ref),
        ?assertEqual(0, erlpy_test:restarts(default)),
        ?assertEqual({ok, 6}, py:call(builtins, sum, [[1, 2, 3]]))
    after
        py:unregister_function(stream_cleanup)
    end.

%%--------------------------------------------------------------------
%% Setup
%%--------------------------------------------------------------------

init_per_suite(Config) ->
    Dir = ?config(priv_dir, Config),
    ok = file:write_file(filename:join(Dir, "erlpy_stream_helpers.py"), helpers()),
    %% Our own default pool (with Dir on its path), whatever ran before us.
    Saved = erlpy_test:start_app_with_path(Dir),
    [{saved_pools, Saved} | Config].

end_per_suite(Config) ->
    ok = erlpy_test:restore_app(?config(saved_pools, Config)),
    ok.

init_per_group(_, Config) -> Config.
end_per_group(_, _) -> ok.

init_per_testcase(Case, Config) ->
    Dir = filename:join(?config(priv_dir, Config), atom_to_list(Case)),
    ok = filelib:ensure_path(Dir),
    [{dir, Dir} | Config].

end_per_testcase(_Case, _Config) ->
    _ = [py:stop_pool(P) || P <- [kill_pool, one]],
    _ = erlpy_test:flush(),
    ok.

%% A file path (a binary, so Python gets a str) in the case's directory.
path(Config, Name) ->
    iolist_to_binary(filename:join(?config(dir, Config), Name)).

read(Path) ->
    case file:read_file(Path) of
        {ok, Bin} -> binary_to_integer(Bin);
        {error, enoent} -> undefined
    end.

%% No message at all about Ref in our mailbox after a short wait.
assert_silent(Ref) ->
    timer:sleep(300),
    ?assertEqual([], [M || M <- erlpy_test:flush(), element(2, M) =:= Ref]).

data_messages(Pid, Ref) ->
    {messages, Ms} = erlang:process_info(Pid, messages),
    [V || {py_stream, R, {data, V}} <- Ms, R =:= Ref].

start_one_pool(Name, Config) ->
    start_one_pool(Name, #{}, Config).

start_one_pool(Name, Opts, Config) ->
    Dir = ?config(priv_dir, Config),
    {ok, _} = py:start_pool(Name, Opts#{size => 1, path => [Dir]}),
    ok.

%%--------------------------------------------------------------------
%% delivery
%%--------------------------------------------------------------------

-define(BIG, 100000).

many_items_sync_owner(_) ->
    erlpy_test:doc("100,000 items of a sync generator reach the owner complete and in order"),
    {ok, Ref} = py:stream_start(?M, count, [?BIG]),
    ?assertEqual({done, lists:seq(0, ?BIG - 1)}, erlpy_test:collect(Ref, 60000)),
    assert_silent(Ref).

many_items_async_owner(_) ->
    erlpy_test:doc("100,000 items of an async generator reach the owner complete and in order"),
    {ok, Ref} = py:stream_start(?M, acount, [?BIG]),
    ?assertEqual({done, lists:seq(0, ?BIG - 1)}, erlpy_test:collect(Ref, 60000)),
    assert_silent(Ref).

many_items_sync_collect(_) ->
    erlpy_test:doc("py:stream collects 100,000 items of a sync generator in order"),
    ?assertEqual({ok, lists:seq(0, ?BIG - 1)}, py:stream(?M, count, [?BIG], #{}, 60000)).

many_items_async_collect(_) ->
    erlpy_test:doc("py:stream collects 100,000 items of an async generator in order"),
    ?assertEqual({ok, lists:seq(0, ?BIG - 1)}, py:stream(?M, acount, [?BIG], #{}, 60000)).

many_items_stream_eval(_) ->
    erlpy_test:doc("py:stream_eval of a 100,000-item generator expression"),
    ?assertEqual({ok, lists:seq(0, ?BIG - 1)},
                 py:stream_eval(<<"(x for x in range(100000))">>, #{}, 60000)).

stream_eval_async_and_locals(_) ->
    erlpy_test:doc("stream_eval of an async generator (function call and async generator "
                   "expression), with locals"),
    ok = py:exec(<<"
async def stream_suite_agen(n):
    for i in range(n):
        yield i
">>),
    ?assertEqual({ok, [0, 1, 2, 3]}, py:stream_eval(<<"stream_suite_agen(n)">>, #{n => 4})),
    ?assertEqual({ok, [0, 2, 4]},
                 py:stream_eval(<<"(x * 2 async for x in stream_suite_agen(3))">>)),
    ?assertEqual({ok, [10, 11, 12]},
                 py:stream_eval(<<"(x + y for x in range(n))">>, #{n => 3, <<"y">> => 10})).

concurrent_streams_one_owner(_) ->
    erlpy_test:doc("20 concurrent streams (sync and async) to one owner, received one after "
                   "the other by Ref: each complete, in order, with its own terminal "
                   "(8,000 items in all; see owner_backlog_* for more)"),
    concurrent_streams(20, 400, 30000).

concurrent_streams(N, Len, Timeout) ->
    Refs = [begin
                {ok, Ref} = py:stream_start(?M, F, [Len]),
                Ref
            end || _ <- lists:seq(1, N div 2), F <- [count, acount]],
    Expected = lists:seq(0, Len - 1),
    Results = [summary(erlpy_test:collect(Ref, Timeout), Expected) || Ref <- Refs],
    ?assertEqual(lists:duplicate(N, {done, Len, in_order}), Results),
    ?assertEqual([], erlpy_test:flush()).

%% A short description of what a stream delivered, for readable failures.
summary({Terminal, Items}, Items) -> {Terminal, length(Items), in_order};
summary({Terminal, Items}, Expected) ->
    Missing = length(Expected -- Items),
    {Terminal, length(Items), {missing, Missing, first, lists:sublist(Items, 5)}}.

iterable_kinds() ->
    [count, acount, returns_list, returns_tuple, returns_iter, returns_range, returns_agen,
     returns_aiterable, returns_aiterator, coro_returns_list, coro_returns_agen,
     returns_generator_expr].

iterable_kinds_stream_start(_) ->
    erlpy_test:doc("sync/async generators, iterables, iterators, async iterables and "
                   "functions returning them all stream to an owner"),
    Results = [{F, begin
                       {ok, Ref} = py:stream_start(?M, F, [4]),
                       erlpy_test:collect(Ref, 10000)
                   end} || F <- iterable_kinds()],
    ?assertEqual([{F, {done, [0, 1, 2, 3]}} || F <- iterable_kinds()], Results).

iterable_kinds_collect(_) ->
    erlpy_test:doc("the same kinds collected with py:stream"),
    Results = [{F, py:stream(?M, F, [4])} || F <- iterable_kinds()],
    ?assertEqual([{F, {ok, [0, 1, 2, 3]}} || F <- iterable_kinds()], Results).

kwargs_option(_) ->
    erlpy_test:doc("stream_start's kwargs option reaches the generator as keyword arguments"),
    {ok, Ref} = py:stream_start(?M, kw, [1], #{kwargs => #{b => 2, c => <<"x">>}}),
    ?assertEqual({done, [1, 2, <<"x">>]}, erlpy_test:collect(Ref)),
    {ok, Ref2} = py:stream_start(?M, akw, [1], #{kwargs => #{c => 3}}),
    ?assertEqual({done, [1, 0, 3]}, erlpy_test:collect(Ref2)),
    ?assertEqual({ok, [1, 5, 6]}, py:stream(?M, kw, [1], #{b => 5, c => 6})).

owner_option(_) ->
    erlpy_test:doc("owner => Pid sends every event to Pid and none to the caller"),
    Self = self(),
    Owner = spawn(fun() -> Self ! {owner_got, erlpy_test:collect(receive {go, R} -> R end)} end),
    {ok, Ref} = py:stream_start(?M, acount, [50], #{owner => Owner}),
    Owner ! {go, Ref},
    Got = receive {owner_got, G} -> G after 10000 -> timeout end,
    ?assertEqual({done, lists:seq(0, 49)}, Got),
    assert_silent(Ref).

%% Items that come 50 ms apart reach the owner as they are produced, not at the end. The
%% generator leaves a file per item it produced; when we hold item 0 (and 1) the last
%% item, produced at least 150 ms later, must not exist yet. Generous on a loaded machine.
slow_items(Fun, Config) ->
    Dir = path(Config, ""),
    {ok, Ref} = py:stream_start(?M, Fun, [5, 0.05, Dir]),
    Last = path(Config, "produced_4"),
    receive {py_stream, Ref, {data, 0}} -> ok after 10000 -> error(no_item) end,
    NotYet0 = not filelib:is_file(Last),
    receive {py_stream, Ref, {data, 1}} -> ok after 10000 -> error(no_item) end,
    NotYet1 = not filelib:is_file(Last),
    ?assertEqual({done, [2, 3, 4]}, erlpy_test:collect(Ref)),
    ?assert(filelib:is_file(Last)),
    ?assertEqual({true, true}, {NotYet0, NotYet1}).

slow_sync_items_arrive_as_produced(Config) ->
    erlpy_test:doc("sync generator, 5 items 50 ms apart: each arrives before the last is made"),
    slow_items(slow, Config).

slow_async_items_arrive_as_produced(Config) ->
    erlpy_test:doc("async generator, 5 items 50 ms apart: each arrives before the last is made"),
    slow_items(aslow, Config).

idle_timeout_not_hit_by_steady_stream(Config) ->
    erlpy_test:doc("idle_timeout does not end a stream whose items keep coming"),
    Dir = path(Config, ""),
    {ok, Ref} = py:stream_start(?M, aslow, [8, 0.05, Dir], #{idle_timeout => 1000}),
    ?assertEqual({done, lists:seq(0, 7)}, erlpy_test:collect(Ref)),
    {ok, Ref2} = py:stream_start(?M, slow, [8, 0.05, Dir], #{idle_timeout => 1000}),
    ?assertEqual({done, lists:seq(0, 7)}, erlpy_test:collect(Ref2)).

%%--------------------------------------------------------------------
%% cancellation
%%--------------------------------------------------------------------

%% Cancel after 100 items; everything that arrives after that is the continuation of the
%% sequence and then exactly one {error, cancelled}. Returns the mark read on arrival.
cancel_after_100(Fun, Config) ->
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, Fun, [Mark]),
    First = erlpy_test:take(Ref, 100),
    ?assertEqual(lists:seq(0, 99), First),
    ok = py:stream_cancel(Ref),
    {Terminal, Rest} = erlpy_test:collect(Ref, 10000),
    AtTerminal = read(Mark),
    ?assertEqual({error, cancelled}, Terminal),
    ?assertEqual(lists:seq(100, 99 + length(Rest)), Rest),
    assert_silent(Ref),
    {AtTerminal, Mark, 100 + length(Rest)}.

cancel_sync_endless(Config) ->
    erlpy_test:doc("cancel a sync endless generator after 100 items: {error, cancelled} once, "
                   "nothing after, and its finally had run when cancelled arrived"),
    {AtTerminal, _, Seen} = cancel_after_100(endless, Config),
    %% The finally writes how many items the generator yielded: at least what we saw.
    ?assertNotEqual(undefined, AtTerminal),
    ?assert(AtTerminal >= Seen).

cancel_async_endless(Config) ->
    erlpy_test:doc("cancel an async endless generator after 100 items: {error, cancelled} once, "
                   "nothing after, and its finally had run when cancelled arrived"),
    {AtTerminal, _, Seen} = cancel_after_100(aendless, Config),
    ?assertNotEqual(undefined, AtTerminal),
    ?assert(AtTerminal >= Seen).

cancel_sync_busy_generator(Config) ->
    erlpy_test:doc("cancel a sync generator busy in Python code between items: it is "
                   "interrupted, its finally runs, and the worker goes on serving"),
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, busy, [Mark]),
    [0] = erlpy_test:take(Ref, 1),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)),
    ?assertEqual(1, read(Mark)),
    assert_silent(Ref),
    ?assertEqual(0, erlpy_test:restarts(default)),
    ?assertEqual({ok, 6}, py:call(builtins, sum, [[1, 2, 3]])).

cancel_twice_and_after_end(Config) ->
    erlpy_test:doc("stream_cancel twice, or after the stream ended, is ok and sends nothing more"),
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, aendless_paced, [Mark, 0.01]),
    _ = erlpy_test:take(Ref, 3),
    ok = py:stream_cancel(Ref),
    ok = py:stream_cancel(Ref),
    {{error, cancelled}, _} = erlpy_test:collect(Ref, 10000),
    ok = py:stream_cancel(Ref),
    assert_silent(Ref),
    {ok, Ref2} = py:stream_start(?M, count, [3]),
    {done, [0, 1, 2]} = erlpy_test:collect(Ref2),
    ok = py:stream_cancel(Ref2),
    assert_silent(Ref2).

owner_killed(Fun, Config) ->
    Mark = path(Config, "closed"),
    Owner = spawn(fun() -> receive never -> ok end end),
    {ok, Ref} = py:stream_start(?M, Fun, [Mark, 0.005], #{owner => Owner}),
    ok = erlpy_test:wait_until(fun() -> length(data_messages(Owner, Ref)) >= 10 end),
    ?assertEqual(undefined, read(Mark)),
    exit(Owner, kill),
    ok = erlpy_test:wait_until(fun() -> read(Mark) =/= undefined end),
    ?assert(read(Mark) >= 10),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(default) =:= 0 end),
    ?assertEqual({ok, 6}, py:call(builtins, sum, [[1, 2, 3]])),
    ?assertEqual({ok, [0, 1, 2]}, py:stream(?M, count, [3])),
    ?assertEqual(0, erlpy_test:restarts(default)),
    ?assertEqual([], erlpy_test:flush()).

owner_killed_sync(Config) ->
    erlpy_test:doc("the owner is killed mid-stream: the sync generator is closed (finally ran) "
                   "and the worker goes on serving, nothing in flight"),
    owner_killed(endless_paced, Config).

owner_killed_async(Config) ->
    erlpy_test:doc("the owner is killed mid-stream: the async generator is closed (finally ran) "
                   "and the worker goes on serving, nothing in flight"),
    owner_killed(aendless_paced, Config).

%%--------------------------------------------------------------------
%% window
%%--------------------------------------------------------------------

%% An owner that lets messages pile up until told to consume the stream with acks.
lazy_owner(Parent) ->
    receive
        {consume, Ref} -> Parent ! {consumed, consume(Ref, [])}
    end.

consume(Ref, Acc) ->
    receive
        {py_stream, Ref, {data, V}} ->
            ok = py:stream_ack(Ref, 1),
            consume(Ref, [V | Acc]);
        {py_stream, Ref, Terminal} ->
            {Terminal, lists:reverse(Acc)}
    after 10000 -> {no_terminal, lists:reverse(Acc)}
    end.

window_owner_never_acks(Config) ->
    erlpy_test:doc("window => 10, no acks: the owner holds exactly 10 items and the generator "
                   "is not far ahead; ack 10 gives exactly 10 more; acks finish the stream"),
    Counter = path(Config, "produced"),
    Self = self(),
    Owner = spawn(fun() -> lazy_owner(Self) end),
    {ok, Ref} = py:stream_start(?M, counted, [100, Counter], #{owner => Owner, window => 10}),
    ok = erlpy_test:wait_until(fun() -> length(data_messages(Owner, Ref)) >= 10 end),
    timer:sleep(500),
    ?assertEqual(lists:seq(0, 9), data_messages(Owner, Ref)),
    Produced = read(Counter),
    ct:log("produced with 10 delivered: ~p", [Produced]),
    ?assert(Produced >= 10 andalso Produced =< 30),
    ok = py:stream_ack(Ref, 10),
    ok = erlpy_test:wait_until(fun() -> length(data_messages(Owner, Ref)) >= 20 end),
    timer:sleep(500),
    ?assertEqual(lists:seq(0, 19), data_messages(Owner, Ref)),
    Produced2 = read(Counter),
    ct:log("produced with 20 delivered: ~p", [Produced2]),
    ?assert(Produced2 >= 20 andalso Produced2 =< 40),
    Owner ! {consume, Ref},
    Got = receive {consumed, G} -> G after 30000 -> timeout end,
    ?assertEqual({done, lists:seq(0, 99)}, Got),
    ?assertEqual(100, read(Counter)).

window_full_stream_with_acks(_) ->
    erlpy_test:doc("window => 16 on a 20,000-item async generator: acking each item delivers "
                   "everything in order, never more than 16 unacked"),
    {ok, Ref} = py:stream_start(?M, acount, [20000], #{window => 16}),
    ?assertEqual({done, lists:seq(0, 19999)}, window_consume(Ref, 16, 0, [])).

%% Consume with acks every few items, checking the owner is never more than Window ahead.
window_consume(Ref, Window, Unacked, Acc) ->
    Len = length(data_messages(self(), Ref)),
    Unacked + Len =< Window orelse error({window_exceeded, Unacked, Len}),
    receive
        {py_stream, Ref, {data, V}} when Unacked + 1 >= 4 ->
            ok = py:stream_ack(Ref, Unacked + 1),
            window_consume(Ref, Window, 0, [V | Acc]);
        {py_stream, Ref, {data, V}} ->
            window_consume(Ref, Window, Unacked + 1, [V | Acc]);
        {py_stream, Ref, Terminal} ->
            {Terminal, lists:reverse(Acc)}
    after 10000 -> {no_terminal, lists:reverse(Acc)}
    end.

window_end_held_until_acked(_) ->
    erlpy_test:doc("window => 10 on a 15-item stream: 10 items and no done; ack 5 gives the "
                   "last 5 items and then done"),
    {ok, Ref} = py:stream_start(?M, count, [15], #{window => 10}),
    ?assertEqual(lists:seq(0, 9), erlpy_test:take(Ref, 10)),
    assert_silent(Ref),
    ok = py:stream_ack(Ref, 5),
    ?assertEqual({done, lists:seq(10, 14)}, erlpy_test:collect(Ref, 10000)),
    ok = py:stream_ack(Ref, 5),
    assert_silent(Ref).

window_one(_) ->
    erlpy_test:doc("window => 1: one item per ack"),
    {ok, Ref} = py:stream_start(?M, acount, [3], #{window => 1}),
    ?assertEqual([0], erlpy_test:take(Ref, 1)),
    assert_silent(Ref),
    ok = py:stream_ack(Ref, 1),
    ?assertEqual([1], erlpy_test:take(Ref, 1)),
    assert_silent(Ref),
    ok = py:stream_ack(Ref, 1),
    ?assertEqual({done, [2]}, erlpy_test:collect(Ref)).

%% No window, and an owner that never reads its mailbox: the worker stops granting credit,
%% so neither the owner's mailbox nor the generator runs away (SPEC §4, bounded memory).
unread_owner_bounded(Fun, Config) ->
    Counter = path(Config, "produced"),
    Owner = spawn(fun() -> receive never -> ok end end),
    {ok, Ref} = py:stream_start(?M, Fun, [Counter], #{owner => Owner}),
    ok = erlpy_test:wait_until(fun() -> length(data_messages(Owner, Ref)) >= 5000 end),
    timer:sleep(1000),
    {message_queue_len, Len1} = erlang:process_info(Owner, message_queue_len),
    Produced1 = read(Counter),
    timer:sleep(1000),
    {message_queue_len, Len2} = erlang:process_info(Owner, message_queue_len),
    Produced2 = read(Counter),
    ct:log("mailbox ~p -> ~p, produced ~p -> ~p", [Len1, Len2, Produced1, Produced2]),
    ?assertEqual({Len1, Produced1}, {Len2, Produced2}),
    %% Stable is what matters; the bounds are generous (backlog and credit are tunables).
    ?assert(Len2 =< 50000),
    ?assert(Produced2 =< Len2 + 30000),
    exit(Owner, kill),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(default) =:= 0 end),
    ?assert(read(Counter) >= Len2).

unread_owner_bounded_sync(Config) ->
    erlpy_test:doc("no window, owner never reads: mailbox and sync generator stay bounded"),
    unread_owner_bounded(endless_counted, Config).

unread_owner_bounded_async(Config) ->
    erlpy_test:doc("no window, owner never reads: mailbox and async generator stay bounded"),
    unread_owner_bounded(aendless_counted, Config).

%%--------------------------------------------------------------------
%% input
%%--------------------------------------------------------------------

input_processor_1000(_) ->
    erlpy_test:doc("input => true: 1,000 values sent with stream_send come back doubled, "
                   "then done after stream_close"),
    {ok, Ref} = py:stream_start(?M, proc, [], #{input => true}),
    [ok = py:stream_send(Ref, I) || I <- lists:seq(1, 1000)],
    ok = py:stream_close(Ref),
    ?assertEqual({done, [2 * I || I <- lists:seq(1, 1000)]}, erlpy_test:collect(Ref)),
    assert_silent(Ref).

input_interactive(_) ->
    erlpy_test:doc("input => true: each value is processed before the next is sent "
                   "(a chat-like session), extra args follow the input iterator"),
    {ok, Ref} = py:stream_start(?M, tag_proc, [<<"re:">>], #{input => true}),
    lists:foreach(
        fun(Msg) ->
            ok = py:stream_send(Ref, Msg),
            ?assertEqual([<<"re:", Msg/binary>>], erlpy_test:take(Ref, 1))
        end,
        [<<"hello">>, <<"how are you">>, <<"bye">>]
    ),
    assert_silent(Ref),
    ok = py:stream_close(Ref),
    ?assertEqual({done, []}, erlpy_test:collect(Ref)).

input_send_unencodable(_) ->
    erlpy_test:doc("stream_send of a term Python cannot take ends the stream with "
                   "{error, {badarg, _}}"),
    {ok, Ref} = py:stream_start(?M, proc, [], #{input => true}),
    ok = py:stream_send(Ref, 1),
    [2] = erlpy_test:take(Ref, 1),
    ok = py:stream_send(Ref, [1 | improper]),
    ?assertMatch({{error, {badarg, _}}, []}, erlpy_test:collect(Ref, 10000)),
    assert_silent(Ref).

%%--------------------------------------------------------------------
%% failures
%%--------------------------------------------------------------------

worker_killed_mid_stream(Config) ->
    erlpy_test:doc("SIGKILL of the worker mid-stream: exactly one {error, {worker_exited, _}}, "
                   "then nothing; the pool restarts it and serves the next request"),
    start_one_pool(kill_pool, Config),
    [OsPid] = erlpy_test:os_pids(kill_pool),
    {ok, Ref} = py:stream_start(?M, aendless_paced, [path(Config, "closed"), 0.005],
                                #{pool => kill_pool}),
    _ = erlpy_test:take(Ref, 5),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    {Terminal, _} = erlpy_test:collect(Ref, 10000),
    ?assertMatch({error, {worker_exited, _}}, Terminal),
    assert_silent(Ref),
    ?assertEqual({ok, 6}, py:call(builtins, sum, [[1, 2, 3]], #{}, #{pool => kill_pool})),
    {ok, Ref2} = py:stream_start(?M, count, [3], #{pool => kill_pool}),
    ?assertEqual({done, [0, 1, 2]}, erlpy_test:collect(Ref2)),
    ?assertEqual(1, erlpy_test:restarts(kill_pool)),
    ?assertNotEqual([OsPid], erlpy_test:os_pids(kill_pool)),
    ?assertNot(erlpy_test:os_pid_alive(OsPid)).

worker_killed_mid_collect(Config) ->
    erlpy_test:doc("SIGKILL of the worker during py:stream: the caller gets "
                   "{error, {worker_exited, _}}"),
    start_one_pool(kill_pool, Config),
    [OsPid] = erlpy_test:os_pids(kill_pool),
    Self = self(),
    spawn(fun() ->
        Self ! {collected, py:stream(?M, slow, [1000, 0.01, path(Config, "")], #{},
                                     #{pool => kill_pool})}
    end),
    ok = erlpy_test:wait_until(fun() -> filelib:is_file(path(Config, "produced_3")) end),
    _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    Result = receive {collected, R} -> R after 10000 -> timeout end,
    ?assertMatch({error, {worker_exited, _}}, Result),
    ?assertEqual({ok, [0, 1]}, py:stream(?M, count, [2], #{}, #{pool => kill_pool})).

idle_timeout(Fun, Config) ->
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, Fun, [Mark], #{idle_timeout => 200}),
    ?assertEqual({{error, timeout}, [<<"first">>]}, erlpy_test:collect(Ref, 10000)),
    assert_silent(Ref),
    ok = erlpy_test:wait_until(fun() -> read(Mark) =:= 1 end),
    ?assertEqual({ok, 6}, py:call(builtins, sum, [[1, 2, 3]])),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(default) =:= 0 end).

idle_timeout_async(Config) ->
    erlpy_test:doc("idle_timeout => 200 on an async generator that stops producing: "
                   "{error, timeout}, and the generator is closed"),
    idle_timeout(astalled, Config).

idle_timeout_sync(Config) ->
    erlpy_test:doc("idle_timeout => 200 on a sync generator that stops producing: "
                   "{error, timeout}, and the generator is closed"),
    idle_timeout(stalled, Config).

collect_timeout(Fun, Config) ->
    Mark = path(Config, "closed"),
    ?assertEqual({error, timeout}, py:stream(?M, Fun, [Mark, 0.001], #{}, 300)),
    ok = erlpy_test:wait_until(fun() -> read(Mark) =/= undefined end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(default) =:= 0 end),
    timer:sleep(200),
    ?assertEqual([], erlpy_test:flush()),
    ?assertEqual({ok, [0, 1]}, py:stream(?M, count, [2])).

collect_timeout_sync(Config) ->
    erlpy_test:doc("py:stream of an endless sync generator with a timeout: {error, timeout}, "
                   "the generator is closed, no late reply"),
    collect_timeout(endless_paced, Config).

collect_timeout_async(Config) ->
    erlpy_test:doc("py:stream of an endless async generator with a timeout: {error, timeout}, "
                   "the generator is closed, no late reply"),
    collect_timeout(aendless_paced, Config).

collect_caller_killed(Config) ->
    erlpy_test:doc("a process killed in the middle of py:stream (no timeout) takes the "
                   "stream with it: the generator is closed and the worker is free"),
    [begin
         Mark = path(Config, atom_to_list(Fun) ++ "_closed"),
         Caller = spawn(fun() -> py:stream(?M, Fun, [Mark, 0.001], #{}, infinity) end),
         ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(default) =:= 1 end),
         timer:sleep(200),  % the generator is running (one that never started has no finally)
         exit(Caller, kill),
         ok = erlpy_test:wait_until(fun() -> read(Mark) =/= undefined end),
         ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(default) =:= 0 end)
     end || Fun <- [endless_paced, aendless_paced]],
    ?assertEqual({ok, [0, 1]}, py:stream(?M, count, [2])).

cancel_stuck_in_c_code(Config) ->
    erlpy_test:doc("stream_cancel of a sync generator stuck in C code (time.sleep): after "
                   "cancel_grace the worker is replaced, the owner gets {error, cancelled} once"),
    start_one_pool(kill_pool, #{cancel_grace => 300}, Config),
    [OsPid] = erlpy_test:os_pids(kill_pool),
    Sleeping = path(Config, "sleeping"),
    {ok, Ref} = py:stream_start(?M, stuck, [Sleeping], #{pool => kill_pool}),
    [<<"first">>] = erlpy_test:take(Ref, 1),
    ok = erlpy_test:wait_until(fun() -> read(Sleeping) =:= 1 end),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)),
    assert_silent(Ref),
    ?assertEqual({ok, 6}, py:call(builtins, sum, [[1, 2, 3]], #{}, #{pool => kill_pool})),
    ?assertEqual(1, erlpy_test:restarts(kill_pool)),
    ok = erlpy_test:wait_until(fun() -> not erlpy_test:os_pid_alive(OsPid) end).

%%--------------------------------------------------------------------
%% errors
%%--------------------------------------------------------------------

error_after_items(Fun) ->
    {ok, Ref} = py:stream_start(?M, Fun, [3]),
    {Terminal, Items} = erlpy_test:collect(Ref),
    ?assertEqual([0, 1, 2], Items),
    ?assertMatch({error, {python, <<"ValueError">>, <<"boom after 3">>, _}}, Terminal),
    {error, {python, _, _, Tb}} = Terminal,
    ?assertNotEqual(nomatch, binary:match(Tb, <<"ValueError">>)),
    assert_silent(Ref).

error_after_items_sync(_) ->
    erlpy_test:doc("a sync generator raising ValueError after 3 items: 3 data, then "
                   "{error, {python, <<\"ValueError\">>, _, _}}"),
    error_after_items(raise_after).

error_after_items_async(_) ->
    erlpy_test:doc("an async generator raising ValueError after 3 items: 3 data, then "
                   "{error, {python, <<\"ValueError\">>, _, _}}"),
    error_after_items(araise_after).

error_not_iterable(_) ->
    erlpy_test:doc("streaming something that is not iterable is a TypeError"),
    {ok, Ref} = py:stream_start(builtins, int, [3]),
    ?assertMatch({{error, {python, <<"TypeError">>, _, _}}, []}, erlpy_test:collect(Ref)),
    ?assertMatch({error, {python, <<"TypeError">>, _, _}}, py:stream(builtins, int, [3])),
    ?assertMatch({error, {python, <<"TypeError">>, _, _}}, py:stream_eval(<<"42">>)),
    assert_silent(Ref).

error_missing_module(_) ->
    erlpy_test:doc("a missing module is a ModuleNotFoundError, for stream_start and py:stream"),
    {ok, Ref} = py:stream_start(no_such_module_xyz, gen, []),
    ?assertMatch({{error, {python, <<"ModuleNotFoundError">>, _, _}}, []},
                 erlpy_test:collect(Ref)),
    ?assertMatch({error, {python, <<"ModuleNotFoundError">>, _, _}},
                 py:stream(no_such_module_xyz, gen, [])),
    assert_silent(Ref).

error_missing_function(_) ->
    erlpy_test:doc("a missing function is an AttributeError; a bad name is badarg"),
    {ok, Ref} = py:stream_start(?M, no_such_function, []),
    ?assertMatch({{error, {python, <<"AttributeError">>, _, _}}, []}, erlpy_test:collect(Ref)),
    {ok, Ref2} = py:stream_start(?M, <<"x; import os">>, []),
    ?assertMatch({{error, {badarg, _}}, []}, erlpy_test:collect(Ref2)),
    ?assertMatch({error, {badarg, _}}, py:stream_start(?M, count, not_a_list)).

error_collect_raising(_) ->
    erlpy_test:doc("py:stream of a raising generator is {error, {python, ...}}, sync and async"),
    ?assertMatch({error, {python, <<"ValueError">>, <<"boom after 3">>, _}},
                 py:stream(?M, raise_after, [3])),
    ?assertMatch({error, {python, <<"ValueError">>, <<"boom after 3">>, _}},
                 py:stream(?M, araise_after, [3])).

error_stream_eval_raising(_) ->
    erlpy_test:doc("py:stream_eval of a generator expression that raises midway"),
    ?assertMatch({error, {python, <<"ZeroDivisionError">>, _, _}},
                 py:stream_eval(<<"(1 // (2 - x) for x in range(5))">>)).

error_unencodable_item(_) ->
    erlpy_test:doc("a generator yielding a value Erlang cannot represent: the items before it, "
                   "then an error naming the type"),
    {ok, Ref} = py:stream_start(?M, unencodable, []),
    {Terminal, Items} = erlpy_test:collect(Ref),
    ?assertEqual([1], Items),
    ?assertMatch({error, {python, _, _, _}}, Terminal),
    {error, {python, _, Msg, _}} = Terminal,
    ct:log("unencodable: ~p", [Terminal]),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"Opaque">>)),
    assert_silent(Ref).

collect_undecodable_items(Config) ->
    erlpy_test:doc("py:stream_eval whose items Erlang refuses (atoms over max_atoms, sync and "
                   "async): {error, {badarg, _}}, the generator is stopped, nothing left in the "
                   "caller's mailbox, the pool serves on"),
    start_one_pool(one, #{max_atoms => 3}, Config),
    O = #{pool => one},
    U = integer_to_binary(erlang:unique_integer([positive])),
    Locals = #{u => U},
    Sync = <<"(erlang.atom(f'collect_{u}_{i}') for i in range(100000))">>,
    Async = <<"(erlang.atom(f'acollect_{u}_{i}') async for i in erlang_agen(100000))">>,
    ok = py:exec(<<"async def erlang_agen(n):\n    for i in range(n):\n        yield i\n">>, O),
    [begin
         Result = py:stream_eval(Expr, Locals, O),
         ct:log("~p", [Result]),
         ?assertMatch({error, {badarg, _}}, Result),
         ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(one) =:= 0 end)
     end || Expr <- [Sync, Async]],
    timer:sleep(100),
    ?assertEqual([], erlpy_test:flush()),
    ?assertEqual({ok, [0, 1, 2]}, py:stream_eval(<<"(i for i in range(3))">>, #{}, O)).

cancel_unknown_ref(_) ->
    erlpy_test:doc("stream_cancel/ack/send/close of an unknown reference are ok and harmless"),
    Ref = make_ref(),
    ?assertEqual(ok, py:stream_cancel(Ref)),
    ?assertEqual(ok, py:stream_ack(Ref, 1)),
    ?assertEqual(ok, py:stream_send(Ref, 1)),
    ?assertEqual(ok, py:stream_close(Ref)),
    assert_silent(Ref),
    ?assertEqual({ok, 6}, py:call(builtins, sum, [[1, 2, 3]])).

bad_options(_) ->
    erlpy_test:doc("bad stream_start options are {error, {bad_option, _}}; unknown pool is "
                   "{error, {no_pool, _}}"),
    ?assertEqual({error, {bad_option, {window, 0}}}, py:stream_start(?M, count, [1], #{window => 0})),
    ?assertEqual({error, {bad_option, {owner, x}}}, py:stream_start(?M, count, [1], #{owner => x})),
    ?assertEqual({error, {bad_option, {idle_timeout, -1}}},
                 py:stream_start(?M, count, [1], #{idle_timeout => -1})),
    ?assertEqual({error, {bad_option, {nonsense, 1}}},
                 py:stream_start(?M, count, [1], #{nonsense => 1})),
    ?assertEqual({error, {no_pool, nope}}, py:stream_start(?M, count, [1], #{pool => nope})),
    ?assertEqual([], erlpy_test:flush()).

%%--------------------------------------------------------------------
%% regressions (bugs found by this suite, fixed)
%%--------------------------------------------------------------------

async_cancelled_after_finally(Config) ->
    erlpy_test:doc("regression (was a bug): an async generator waiting for credit is cancelled; "
                   "{error, cancelled} must come after its finally ran, it comes before"),
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, aendless_slow_finally, [Mark], #{window => 5}),
    ?assertEqual(lists:seq(0, 4), erlpy_test:take(Ref, 5)),
    timer:sleep(200),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)),
    ?assertNotEqual(undefined, read(Mark)).

%% A window stream whose generator has finished while items are still held for the owner.
held_stream(Opts, Config) ->
    start_one_pool(one, Config),
    {ok, Ref} = py:stream_start(?M, count, [15], Opts#{window => 10, pool => one}),
    ?assertEqual(lists:seq(0, 9), erlpy_test:take(Ref, 10)),
    timer:sleep(200),
    %% A call running on the same worker meanwhile must not be disturbed.
    Self = self(),
    spawn(fun() ->
        Self ! {call, py:eval(<<"__import__('time').sleep(2.5) or 'ok'">>, #{}, #{pool => one})}
    end),
    %% the call is in flight beside the stream
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(one) =:= 2 end),
    Ref.

held_stream_checks() ->
    Call = receive {call, C} -> C after 10000 -> timeout end,
    ?assertEqual({ok, <<"ok">>}, Call),
    ?assertEqual(0, erlpy_test:restarts(one)).

cancel_window_held_keeps_worker(Config) ->
    erlpy_test:doc("regression (was a bug): stream_cancel of a window stream whose generator finished while items "
                   "were held: {error, cancelled} comes only after cancel_grace and the worker "
                   "is killed (other requests on it fail)"),
    Ref = held_stream(#{}, Config),
    T0 = erlang:monotonic_time(millisecond),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)),
    ct:log("cancelled after ~p ms", [erlang:monotonic_time(millisecond) - T0]),
    held_stream_checks().

owner_down_window_held_keeps_worker(Config) ->
    erlpy_test:doc("regression (was a bug): the owner of a window stream dies while the finished stream's items "
                   "are held: the worker is killed after cancel_grace"),
    start_one_pool(one, Config),
    Owner = spawn(fun() -> receive never -> ok end end),
    {ok, Ref} = py:stream_start(?M, count, [15], #{window => 10, pool => one, owner => Owner}),
    ok = erlpy_test:wait_until(fun() -> length(data_messages(Owner, Ref)) >= 10 end),
    timer:sleep(200),
    Self = self(),
    spawn(fun() ->
        Self ! {call, py:eval(<<"__import__('time').sleep(2.5) or 'ok'">>, #{}, #{pool => one})}
    end),
    %% the call is in flight beside the stream
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(one) =:= 2 end),
    exit(Owner, kill),
    held_stream_checks().

idle_timeout_window_held_keeps_worker(Config) ->
    erlpy_test:doc("regression (was a bug): idle_timeout on a window stream whose generator "
                   "finished while items were held killed the worker after cancel_grace; now "
                   "the worker is untouched and the stream ends with exactly one terminal "
                   "({error, timeout}, or the rest and done once acked)"),
    Ref = held_stream(#{idle_timeout => 300}, Config),
    timer:sleep(700),
    ok = py:stream_ack(Ref, 5),
    Result = erlpy_test:collect(Ref, 10000),
    ct:log("after idle_timeout and ack: ~p", [Result]),
    ?assert(lists:member(Result, [{{error, timeout}, []}, {done, lists:seq(10, 14)}])),
    assert_silent(Ref),
    held_stream_checks().

start_then_cancel_async(Config) ->
    erlpy_test:doc("regression (was a bug): stream_start of an async generator immediately followed by "
                   "stream_cancel: now and then no answer from Python, the worker is killed "
                   "after cancel_grace"),
    start_one_pool(one, Config),
    {ok, [0]} = py:stream(?M, acount, [1], #{}, #{pool => one}),
    Mark = path(Config, "closed"),
    lists:foreach(
        fun(I) ->
            {ok, Ref} = py:stream_start(?M, aendless, [Mark], #{pool => one}),
            ok = py:stream_cancel(Ref),
            %% A healthy worker answers in a few ms; cancel_grace is 2000 ms.
            {Terminal, _} = erlpy_test:collect(Ref, 1000),
            ?assertEqual({I, {error, cancelled}}, {I, Terminal})
        end,
        lists:seq(1, 100)
    ),
    ?assertEqual(0, erlpy_test:restarts(one)).

queued_request_timeout_keeps_worker(Config) ->
    erlpy_test:doc("regression (was a bug): a request that times out while queued behind a running sync stream "
                   "gets no answer from Python, so the worker is killed after cancel_grace "
                   "and the innocent stream fails with worker_exited"),
    start_one_pool(one, Config),
    Self = self(),
    Dir = path(Config, ""),
    %% ~3 s of sync streaming (interruptible Python, 60 items 50 ms apart).
    spawn(fun() ->
        Self ! {stream, py:stream(?M, slow, [60, 0.05, Dir], #{}, #{pool => one})}
    end),
    ok = erlpy_test:wait_until(fun() -> filelib:is_file(path(Config, "produced_0")) end),
    ?assertEqual({error, timeout}, py:call(math, sqrt, [4], #{}, #{pool => one, timeout => 300})),
    Stream = receive {stream, S} -> S after 20000 -> timeout end,
    ?assertEqual({ok, lists:seq(0, 59)}, Stream),
    ?assertEqual(0, erlpy_test:restarts(one)).

paused_sync_stream_does_not_block_worker(Config) ->
    erlpy_test:doc("regression (was a bug): a sync generator stream paused by its window (owner not acking) holds "
                   "the worker's main thread: no other sync request on that worker runs"),
    start_one_pool(one, Config),
    {ok, Ref} = py:stream_start(?M, count, [100], #{pool => one, window => 1}),
    ?assertEqual([0], erlpy_test:take(Ref, 1)),
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4], #{}, #{pool => one, timeout => 3000})),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)).

owner_backlog_two_streams_in_turn(_) ->
    erlpy_test:doc("regression (was a bug): two 100,000-item streams to one owner that receives them one after "
                   "the other (selective receive on Ref, like the guide's receive_loop): the "
                   "first stalls forever once the second fills the mailbox past 10,000"),
    {ok, RefA} = py:stream_start(?M, acount, [100000]),
    {ok, RefB} = py:stream_start(?M, count, [100000]),
    Expected = lists:seq(0, 99999),
    A = summary(erlpy_test:collect(RefA, 5000), Expected),
    B = summary(erlpy_test:collect(RefB, 5000), Expected),
    ?assertEqual({{done, 100000, in_order}, {done, 100000, in_order}}, {A, B}).

owner_backlog_unrelated_messages(_) ->
    erlpy_test:doc("regression (was a bug): an owner with 10,001 unrelated messages queued: a 5,000-item stream "
                   "stops after 4,096 items and never ends while the owner waits for it"),
    [self() ! {unrelated, I} || I <- lists:seq(1, 10001)],
    {ok, Ref} = py:stream_start(?M, count, [5000]),
    Result = summary(erlpy_test:collect(Ref, 5000), lists:seq(0, 4999)),
    _ = erlpy_test:flush(),
    py:stream_cancel(Ref),
    ?assertEqual({done, 5000, in_order}, Result).

%%--------------------------------------------------------------------
%% Python side
%%--------------------------------------------------------------------

helpers() ->
    <<"
import asyncio
import os
import time

def _write(path, value):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(str(value))
    os.replace(tmp, path)

def count(n):
    for i in range(n):
        yield i

async def acount(n):
    for i in range(n):
        yield i

def returns_list(n):
    return list(range(n))

def returns_tuple(n):
    return tuple(range(n))

def returns_iter(n):
    return iter(list(range(n)))

def returns_range(n):
    return range(n)

def returns_agen(n):
    return acount(n)

def returns_generator_expr(n):
    return (i for i in range(n))

class AIterable:
    def __init__(self, n):
        self.n = n

    def __aiter__(self):
        return AIterator(self.n)

class AIterator:
    def __init__(self, n):
        self.i, self.n = 0, n

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.i >= self.n:
            raise StopAsyncIteration
        await asyncio.sleep(0)
        self.i += 1
        return self.i - 1

def returns_aiterable(n):
    return AIterable(n)

def returns_aiterator(n):
    return AIterator(n)

async def coro_returns_list(n):
    await asyncio.sleep(0)
    return list(range(n))

async def coro_returns_agen(n):
    await asyncio.sleep(0)
    return acount(n)

def kw(a, b=0, c=0):
    yield a
    yield b
    yield c

async def akw(a, b=0, c=0):
    for v in (a, b, c):
        yield v

def endless_calls_back(mark):
    i = 0
    try:
        while True:
            i += 1
            yield i - 1
    finally:
        # A clean-up that calls into Erlang, twice: both run, then the mark is written.
        import erlang
        first = erlang.call('stream_cleanup', 'first', i)
        second = erlang.call('stream_cleanup', 'second', i)
        _write(mark, (first == 'first') + (second == 'second'))

def endless(mark):
    i = 0
    try:
        while True:
            i += 1
            yield i - 1
    finally:
        _write(mark, i)

async def aendless(mark):
    i = 0
    try:
        while True:
            i += 1
            yield i - 1
    finally:
        _write(mark, i)

def endless_paced(mark, delay):
    i = 0
    try:
        while True:
            i += 1
            yield i - 1
            time.sleep(delay)
    finally:
        _write(mark, i)

async def aendless_paced(mark, delay):
    i = 0
    try:
        while True:
            i += 1
            yield i - 1
            await asyncio.sleep(delay)
    finally:
        _write(mark, i)

async def aendless_slow_finally(mark):
    i = 0
    try:
        while True:
            i += 1
            yield i - 1
    finally:
        await asyncio.sleep(0.3)   # an async clean-up, e.g. closing a connection
        _write(mark, i)

def endless_counted(path):
    i = 0
    try:
        while True:
            i += 1
            if i % 256 == 0:
                _write(path, i)
            yield i - 1
    finally:
        _write(path, i)

async def aendless_counted(path):
    i = 0
    try:
        while True:
            i += 1
            if i % 256 == 0:
                _write(path, i)
            yield i - 1
    finally:
        _write(path, i)

def stuck(mark):
    yield 'first'
    # The mark comes from another thread 0.2 s later, once this one is well inside the
    # sleep: written just before it, a cancel could land between the two (under load)
    # and interrupt the generator before it is stuck.
    import threading
    threading.Timer(0.2, _write, (mark, 1)).start()
    time.sleep(60)   # C code: not interruptible
    yield 'never'

def busy(mark):
    try:
        yield 0
        while True:   # pure Python work, interruptible between bytecodes
            pass
    finally:
        _write(mark, 1)

def counted(n, path):
    for i in range(n):
        _write(path, i + 1)
        yield i

def slow(n, delay, dirname):
    for i in range(n):
        if i:
            time.sleep(delay)
        _write(os.path.join(dirname, 'produced_%d' % i), i)
        yield i

async def aslow(n, delay, dirname):
    for i in range(n):
        if i:
            await asyncio.sleep(delay)
        _write(os.path.join(dirname, 'produced_%d' % i), i)
        yield i

def stalled(mark):
    try:
        yield 'first'
        for _ in range(6000):
            time.sleep(0.005)
    finally:
        _write(mark, 1)

async def astalled(mark):
    try:
        yield 'first'
        await asyncio.sleep(30)
    finally:
        _write(mark, 1)

def raise_after(n):
    for i in range(n):
        yield i
    raise ValueError('boom after %d' % n)

async def araise_after(n):
    for i in range(n):
        yield i
        await asyncio.sleep(0)
    raise ValueError('boom after %d' % n)

class Opaque:
    pass

def unencodable():
    yield 1
    yield Opaque()

async def proc(inp):
    async for v in inp:
        yield v * 2

async def tag_proc(inp, tag):
    async for v in inp:
        yield tag + v
">>.

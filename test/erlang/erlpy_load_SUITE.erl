%% Load: many concurrent streams, and mixed calls and streams while a chaos process kills
%% a random worker's Python (kill -9) every 200 ms.
%%
%% Every reply is checked against its request (the Python functions echo a unique token),
%% so the cases count, per request: answered correctly, answered {worker_exited, _} (its
%% worker was killed: an answer, not a loss), lost (no answer), misrouted (someone else's
%% answer, or stream items out of order), anything else; and per requesting process, the
%% messages that reached it after its last answer (late or duplicated replies). Afterwards
%% the VM's memory and process count must be back at their baseline.
%%
%% Sizes: ERLPY_LOAD=full runs the sizes of the reliability table in docs/reliability.md
%% (10,000 streams; 100 processes x 1,000 requests); the default run is smaller (2,000
%% streams; 20 processes x 500 requests) to stay quick on a 2-core machine.
-module(erlpy_load_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(M, erlpy_load_helpers).
-define(POOL, erlpy_load).

all() ->
    [
        many_concurrent_streams,
        chaos_mixed_load
    ].

suite() ->
    [{timetrap, {minutes, 15}}].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    ok = file:write_file(filename:join(?config(priv_dir, Config), "erlpy_load_helpers.py"), helpers()),
    Sizes = sizes(),
    ct:log("sizes: ~p", [Sizes]),
    [{sizes, Sizes} | Config].

end_per_suite(_Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    {ok, _} = py:start_pool(?POOL, #{size => 4, path => [?config(priv_dir, Config)]}),
    ok = py:exec(<<"replay_marker = 'replayed'\n"
                   "def xecho(token):\n    return (token, replay_marker)\n">>, #{pool => ?POOL}),
    Config.

end_per_testcase(_Case, _Config) ->
    _ = py:stop_pool(?POOL),
    _ = erlpy_test:flush(),
    ok.

sizes() ->
    case os:getenv("ERLPY_LOAD") of
        "full" -> #{streams => 10000, procs => 100, ops => 1000};
        _ -> #{streams => 2000, procs => 20, ops => 500}
    end.

%%====================================================================
%% many concurrent streams
%%====================================================================

many_concurrent_streams(Config) ->
    #{streams := N} = ?config(sizes, Config),
    erlpy_test:doc(io_lib:format("~b streams of small generators (sync and async) open at once on "
                                 "a pool of 4: all complete, in order, once; memory back", [N])),
    %% warm up (code loading, first allocations), then take the baseline
    ?assertMatch({#{ok := 200}, 200}, streams_round(warm_up, 2, 100)),
    Base = baseline(),
    T0 = erlang:monotonic_time(millisecond),
    {Counts, Open} = streams_round(main, N div 100, 100),
    Ms = erlang:monotonic_time(millisecond) - T0,
    ct:log("~b streams in ~b ms, ~b in flight at once: ~p", [N, Ms, Open, Counts]),
    ?assertEqual(#{ok => N, items => 10 * N}, Counts),
    ?assertEqual(N, Open),
    ok = settled(),
    ?assertEqual(0, restarts()),
    assert_back_to_baseline(Base),
    figures(many_concurrent_streams, #{streams => N, ms => Ms, open_at_once => Open,
                                       lost => 0, duplicated => 0, misrouted => 0}).

%% Owners processes each start PerOwner streams. The async generators wait at a gate and
%% the sync ones (window => 4) park, so all streams are open at the same time; then the
%% gate opens and the owners read everything. Returns {Counts, streams in flight at once}.
streams_round(Round, Owners, PerOwner) ->
    Parent = self(),
    Pids = [spawn(fun() -> Parent ! {self(), stream_owner(Round, PerOwner, Parent)} end)
            || _ <- lists:seq(1, Owners)],
    [receive {started, Pid} -> ok after 600000 -> error({owner_not_started, Pid}) end || Pid <- Pids],
    Total = Owners * PerOwner,
    ok = erlpy_test:wait_until(fun() -> in_flight() >= Total end, 60000),
    Open = in_flight(),
    ok = py:exec(iolist_to_binary(["import erlpy_load_helpers\n",
                                   "erlpy_load_helpers.open_gate('", atom_to_list(Round), "')"]),
                 #{pool => ?POOL}),
    [Pid ! go || Pid <- Pids],
    Results = [receive {Pid, R} -> R after 600000 -> #{lost_owner => 1} end || Pid <- Pids],
    {sum_counts(Results), Open}.

stream_owner(Round, PerOwner, Parent) ->
    Started = [begin
                   Token = {self(), J},
                   %% three gated async generators per parked sync one
                   {Fun, Args, Opts} =
                       case J rem 4 of
                           0 -> {gen, [Token, 10], #{window => 4}};
                           _ -> {agen_gated, [Token, 10, atom_to_binary(Round)], #{}}
                       end,
                   {ok, Ref} = py:stream_start(?M, Fun, Args, Opts#{pool => ?POOL}),
                   {Token, Ref}
               end || J <- lists:seq(1, PerOwner)],
    Parent ! {started, self()},
    receive go -> ok end,
    Results = [check_stream(Token, collect_acking(Ref, []), 10) || {Token, Ref} <- Started],
    timer:sleep(300),
    Stray = length(erlpy_test:flush()),
    Counts = count([R || {R, _} <- Results]),
    Counts1 = Counts#{items => lists:sum([I || {_, I} <- Results, is_integer(I)])},
    case Stray of 0 -> Counts1; _ -> Counts1#{stray => Stray} end.

%% Like erlpy_test:collect/2, granting one more item for each one received.
collect_acking(Ref, Acc) ->
    receive
        {py_stream, Ref, {data, V}} -> py:stream_ack(Ref, 1), collect_acking(Ref, [V | Acc]);
        {py_stream, Ref, Terminal} -> {Terminal, lists:reverse(Acc)}
    after 60000 -> {no_terminal, lists:reverse(Acc)}
    end.

sum_counts(Results) ->
    lists:foldl(fun(R, Acc) -> maps:fold(fun(K, V, A) -> maps:update_with(K, fun(X) -> X + V end, V, A) end, Acc, R) end,
                #{}, Results).

%%====================================================================
%% chaos
%%====================================================================

chaos_mixed_load(Config) ->
    #{procs := Procs, ops := Ops} = ?config(sizes, Config),
    erlpy_test:doc(io_lib:format("~b processes x ~b mixed calls and streams while a worker's Python "
                                 "is killed every 200 ms: nothing lost, duplicated or misrouted",
                                 [Procs, Ops])),
    %% warm up without chaos, then take the baseline
    Warm = mixed_round(4, 50),
    ?assertEqual(#{ok => 200}, maps:without([items], Warm)),
    Base = baseline(),
    Chaos = chaos(200),
    T0 = erlang:monotonic_time(millisecond),
    Counts = mixed_round(Procs, Ops),
    Ms = erlang:monotonic_time(millisecond) - T0,
    {Kills, Seen} = stop_chaos(Chaos),
    %% worker processes that crashed (not Python: the Erlang gen_statem) and were replaced
    %% by their supervisor; see known_bugs in erlpy_fault_SUITE
    WorkerCrashes = length(Seen) - 4,
    ct:log("~b requests in ~b ms, ~b kills, ~b worker process crashes: ~p",
           [Procs * Ops, Ms, Kills, WorkerCrashes, Counts]),
    Answered = maps:get(ok, Counts, 0) + maps:get(exited, Counts, 0),
    ?assertEqual(#{}, maps:without([ok, exited, items], Counts)),
    ?assertEqual(Procs * Ops, Answered),
    ?assert(Kills > 0),
    ok = erlpy_test:wait_until(fun() -> lists:all(fun(#{state := S}) -> S =:= ready end, workers()) end, 30000),
    ok = settled(),
    ?assert(restarts() > 0),
    %% the restarted workers have the exec state: every worker answers xecho
    ?assertEqual(#{ok => 40}, maps:without([items], mixed_round(4, 10))),
    assert_back_to_baseline(Base),
    figures(chaos_mixed_load, #{requests => Procs * Ops, ms => Ms, kills => Kills,
                                worker_process_crashes => WorkerCrashes,
                                ok => maps:get(ok, Counts, 0), exited => maps:get(exited, Counts, 0),
                                lost => 0, duplicated => 0, misrouted => 0}).

mixed_round(Procs, Ops) ->
    Parent = self(),
    Pids = [spawn(fun() -> Parent ! {self(), mixed_ops(Ops)} end) || _ <- lists:seq(1, Procs)],
    Results = [receive {Pid, R} -> R after 900000 -> #{lost_process => 1} end || Pid <- Pids],
    sum_counts(Results).

mixed_ops(Ops) ->
    Results = [op(rand:uniform(7), {self(), I}) || I <- lists:seq(1, Ops)],
    timer:sleep(300),
    Stray = erlpy_test:flush(),
    Stray =/= [] andalso ct:log("stray messages in ~p: ~p", [self(), Stray]),
    Counts = count([R || {R, _} <- Results]),
    Bad = [X || {R, X} <- Results, R =/= ok, R =/= exited],
    Bad =/= [] andalso ct:log("bad answers in ~p: ~p", [self(), lists:sublist(Bad, 5)]),
    Counts1 = Counts#{items => lists:sum([I || {_, I} <- Results, is_integer(I)])},
    case Stray of [] -> Counts1; _ -> Counts1#{stray => length(Stray)} end.

opts() -> #{pool => ?POOL}.

op(1, Token) -> check_call(Token, py:call(?M, echo, [Token], #{}, opts()));
op(2, Token) -> check_call(Token, py:call(?M, aecho, [Token], #{}, opts()));
op(3, Token) -> check_call({Token, <<"replayed">>}, py:call('__main__', xecho, [Token], #{}, opts()));
op(4, Token) -> check_call({Token, <<"replayed">>}, py:eval(<<"(t, replay_marker)">>, #{t => Token}, opts()));
op(5, Token) ->
    case py:stream(?M, gen, [Token, 5], #{}, opts()) of
        {ok, Items} -> check_stream(Token, {done, Items}, 5);
        Error -> check_stream(Token, {Error, []}, 5)
    end;
op(6, Token) -> start_and_check(gen, Token);
op(7, Token) -> start_and_check(agen, Token).

start_and_check(Fun, Token) ->
    case py:stream_start(?M, Fun, [Token, 20], opts()) of
        {ok, Ref} -> check_stream(Token, erlpy_test:collect(Ref, 60000), 20);
        {error, {worker_exited, _}} -> {exited, 0};
        Error -> {other, {stream_start, Error}}
    end.

check_call(Expected, {ok, Expected}) -> {ok, 1};
check_call(_, {ok, Other}) -> {misrouted, Other};
check_call(_, {error, {worker_exited, _}}) -> {exited, 0};
check_call(_, {error, timeout}) -> {lost, timeout};
check_call(_, Other) -> {other, Other}.

%% {Class, Items}: a complete stream is ok; one ended by worker_exited must have delivered
%% an in-order prefix.
check_stream(Token, {Terminal, Items}, N) ->
    Prefix = [{Token, I} || I <- lists:seq(0, length(Items) - 1)],
    case {Terminal, Items =:= Prefix, length(Items)} of
        {_, false, _} -> {misrouted, {Token, Items}};
        {done, true, N} -> {ok, N};
        {done, true, _} -> {lost, {missing_items, Token, Items}};
        {{error, {worker_exited, _}}, true, Len} -> {exited, Len};
        {no_terminal, true, _} -> {lost, {no_terminal, Token}};
        {{error, timeout}, true, _} -> {lost, timeout};
        {Other, true, _} -> {other, Other}
    end.

%%--------------------------------------------------------------------
%% chaos process: kill -9 of a random ready worker's Python every Interval ms
%%--------------------------------------------------------------------

%% It also notes the worker processes (Erlang) it sees: a Python crash is handled inside
%% its worker, so the set should not grow.
chaos(Interval) ->
    spawn_link(fun() -> chaos_loop(Interval, [], worker_pids()) end).

%% Kills: the os pids of the Pythons killed.
chaos_loop(Interval, Kills, Seen) ->
    receive
        {stop, From} -> From ! {kills, Kills, Seen}
    after Interval ->
        Ws = workers(),
        Seen1 = lists:usort(Seen ++ [W || #{pid := W} <- Ws]),
        Ready = [O || #{state := ready, os_pid := O} <- Ws],
        case Ready of
            [] ->
                chaos_loop(Interval, Kills, Seen1);
            _ ->
                Victim = lists:nth(rand:uniform(length(Ready)), Ready),
                _ = os:cmd("kill -9 " ++ integer_to_list(Victim)),
                chaos_loop(Interval, [Victim | Kills], Seen1)
        end
    end.

%% {Kills, worker processes seen}
stop_chaos(Chaos) ->
    Chaos ! {stop, self()},
    receive
        {kills, Killed, Seen} ->
            unlink(Chaos),
            %% The workers notice a kill a little later: wait until every killed Python
            %% has been replaced, so that what follows meets no dying one.
            ok = erlpy_test:wait_until(
                   fun() -> [O || #{os_pid := O} <- workers(), lists:member(O, Killed)] =:= [] end,
                   10000),
            {length(Killed), lists:usort(Seen ++ worker_pids())}
    after 10000 -> error(chaos_stuck)
    end.

worker_pids() -> [W || #{pid := W} <- workers()].

%%====================================================================
%% baseline: memory and processes
%%====================================================================

baseline() ->
    gc_all(),
    #{memory => erlang:memory(total), processes => erlang:system_info(process_count),
      atoms => erlang:system_info(atom_count)}.

assert_back_to_baseline(#{memory := Mem0, processes := Procs0, atoms := Atoms0}) ->
    ok = erlpy_test:wait_until(fun() -> erlang:system_info(process_count) =< Procs0 end, 20000),
    %% a reasonable margin: 10 % or 10 MB, within a few seconds (what the last requests
    %% left in flight, binaries among them, goes with the next collections)
    Bound = Mem0 + max(Mem0 div 10, 10000000),
    _ = catch erlpy_test:wait_until(fun() -> gc_all(), erlang:memory(total) =< Bound end, 5000),
    Mem = erlang:memory(total),
    ct:log("memory ~.1f MB -> ~.1f MB, processes ~b -> ~b, atoms ~b -> ~b",
           [Mem0 / 1.0e6, Mem / 1.0e6, Procs0, erlang:system_info(process_count),
            Atoms0, erlang:system_info(atom_count)]),
    ?assert(Mem =< Bound),
    %% no atom per request (a crash report may load a module or two, whose names count)
    ?assert(erlang:system_info(atom_count) =< Atoms0 + 100).

gc_all() ->
    [erlang:garbage_collect(P) || P <- processes()],
    ok.

%% The pool is idle again: nothing in flight, nothing queued.
settled() ->
    erlpy_test:wait_until(fun() -> in_flight() =:= 0 andalso maps:get(queued, py:info(?POOL)) =:= 0 end,
                          30000).

%%====================================================================
%% helpers
%%====================================================================

workers() -> erlpy_test:workers(?POOL).

in_flight() -> erlpy_test:in_flight(?POOL).

restarts() -> erlpy_test:restarts(?POOL).

count(List) ->
    lists:foldl(fun(X, M) -> maps:update_with(X, fun(N) -> N + 1 end, 1, M) end, #{}, List).

%% Figures for docs/reliability.md, in the CT log (grep FIGURES).
figures(Case, Map) ->
    Line = io_lib:format("~p ~p ~p~n", [Case, os:getenv("ERLPY_LOAD", "default"), Map]),
    ct:log("FIGURES ~ts", [Line]),
    ok.

helpers() ->
    <<"
import asyncio


def echo(token):
    return token


async def aecho(token):
    await asyncio.sleep(0)
    return token


def gen(token, n):
    for i in range(n):
        yield (token, i)


async def agen(token, n):
    for i in range(n):
        yield (token, i)
        await asyncio.sleep(0)


_gates = {}
_opened = set()
_loop = None


def _gate(name):
    if name not in _gates:
        _gates[name] = asyncio.Event()
    return _gates[name]


async def agen_gated(token, n, gate):
    global _loop
    _loop = asyncio.get_running_loop()
    if gate not in _opened:
        await _gate(gate).wait()
    for i in range(n):
        yield (token, i)
        await asyncio.sleep(0)


def open_gate(gate):
    # runs on the main thread (py:exec): wake the generators on the event loop
    _opened.add(gate)
    if _loop is not None:
        _loop.call_soon_threadsafe(_gate(gate).set)
">>.

%% One worker's life: timeouts and cancellation (no late replies), Python dying and being
%% restarted, code stuck in C killed after the grace period, async calls interleaving on
%% one worker, overload, and exec state replayed on restart.
%%
%% Every case runs on its own pool (named after the case, started in init_per_testcase).
-module(erlpy_worker_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

all() ->
    [
        timeout_time_sleep_no_late_reply,
        timeout_interrupts_python_loop,
        timeout_async_cancelled,
        timeout_infinity_and_zero,
        stuck_in_c_killed_after_grace,
        os_exit_worker_exited,
        segfault_worker_exited,
        crash_fails_every_request_in_flight,
        python_crash_not_counted_as_erlang_restart,
        erlang_worker_killed,
        async_calls_run_concurrently,
        sync_call_while_async_pending,
        async_eval_awaitable,
        overloaded_max_queue_0,
        overloaded_max_queue_1,
        exec_replayed_on_restart,
        exec_failure_not_replayed,
        in_flight_counters_settle,
     {group, regressions}].

groups() ->
    %% Run by all/0: product bugs these tests found, all fixed since; each case's doc names the bug.
    [{regressions, [], [
        callback_reentrant_single_worker,
        queued_timeout_kills_busy_worker,
        timeout_in_erlang_callback_kills_worker
    ]}].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(erlpy).

init_per_testcase(Case, Config) ->
    {ok, _} = py:start_pool(Case, pool_opts(Case)),
    [{pool, Case} | Config].

end_per_testcase(Case, _Config) ->
    _ = py:unregister_function(reenter),
    _ = py:unregister_function(slow_erlang),
    _ = py:stop_pool(Case),
    ok.

pool_opts(stuck_in_c_killed_after_grace) -> #{size => 1, cancel_grace => 300};
pool_opts(timeout_time_sleep_no_late_reply) -> #{size => 1, cancel_grace => 10000};
pool_opts(timeout_interrupts_python_loop) -> #{size => 1, cancel_grace => 10000};
pool_opts(timeout_infinity_and_zero) -> #{size => 1, cancel_grace => 10000};
pool_opts(overloaded_max_queue_0) -> #{size => 1, max_queue => 0};
pool_opts(overloaded_max_queue_1) -> #{size => 1, max_queue => 1};
pool_opts(in_flight_counters_settle) -> #{size => 2, cancel_grace => 300};
pool_opts(queued_timeout_kills_busy_worker) -> #{size => 1, cancel_grace => 500};
pool_opts(timeout_in_erlang_callback_kills_worker) -> #{size => 1, cancel_grace => 500};
pool_opts(_) -> #{size => 1}.

%%====================================================================
%% timeouts
%%====================================================================

timeout_time_sleep_no_late_reply(Config) ->
    erlpy_test:doc("time.sleep past the timeout: {error, timeout}, no late reply, work stopped"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import time\ndef slow(t):\n    time.sleep(t)\n"
                   "    global finished\n    finished = True\n    return 'late'\n">>, opts(P)),
    [OsPid] = erlpy_test:os_pids(P),
    ?assertEqual({error, timeout}, py:call('__main__', slow, [1.0], #{}, opts(P, 200))),
    %% Python has answered the cancel (a sleep it did not interrupt would end it only with
    %% `finished' set, checked below)
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 0 end),
    ?assertEqual([], erlpy_test:flush()),
    %% the pool serves the next call, on the same Python (interrupted, not killed) ...
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    ?assertEqual([OsPid], erlpy_test:os_pids(P)),
    %% ... and the code after the sleep never ran
    ?assertEqual({ok, false}, py:eval(<<"'finished' in globals()">>, #{}, opts(P))),
    ?assertEqual([], erlpy_test:flush()).

timeout_interrupts_python_loop(Config) ->
    erlpy_test:doc("sync Python code running past its timeout is interrupted"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import time\nticks = 0\ndef spin():\n    global ticks\n"
                   "    while True:\n        ticks += 1\n        time.sleep(0.01)\n">>, opts(P)),
    [OsPid] = erlpy_test:os_pids(P),
    ?assertEqual({error, timeout}, py:call('__main__', spin, [], #{}, opts(P, 200))),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, opts(P))),
    {ok, T1} = py:eval(<<"ticks">>, #{}, opts(P)),
    timer:sleep(200),
    %% the loop has stopped: the counter no longer moves
    ?assertEqual({ok, T1}, py:eval(<<"ticks">>, #{}, opts(P))),
    ?assertEqual([OsPid], erlpy_test:os_pids(P)),
    ?assertEqual([], erlpy_test:flush()).

timeout_async_cancelled(Config) ->
    erlpy_test:doc("an async call past its timeout is cancelled (finally runs), no late reply"),
    P = ?config(pool, Config),
    ok = py:exec(<<"state = 'idle'\nasync def along():\n    global state\n    state = 'running'\n"
                   "    try:\n        await asyncio.sleep(1.0)\n        state = 'finished'\n"
                   "        return 'late'\n    except asyncio.CancelledError:\n"
                   "        state = 'cancelled'\n        raise\n">>, opts(P)),
    ?assertEqual({error, timeout}, py:call('__main__', along, [], #{}, opts(P, 200))),
    ok = erlpy_test:wait_until(fun() -> py:eval(<<"state">>, #{}, opts(P)) =:= {ok, <<"cancelled">>} end),
    timer:sleep(1200),
    ?assertEqual({ok, <<"cancelled">>}, py:eval(<<"state">>, #{}, opts(P))),
    ?assertEqual([], erlpy_test:flush()).

timeout_infinity_and_zero(Config) ->
    erlpy_test:doc("timeout infinity waits; timeout 0 gives {error, timeout} and no late reply"),
    P = ?config(pool, Config),
    ?assertEqual({ok, 3.0}, py:call(math, sqrt, [9], #{}, opts(P, infinity))),
    ?assertEqual({ok, 3.0}, py:call(math, sqrt, [9], #{}, infinity)),
    ok = py:exec(<<"import time">>, opts(P)),
    ?assertEqual({error, timeout}, py:eval(<<"time.sleep(0.3)">>, #{}, opts(P, 0))),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 0 end),
    ?assertEqual([], erlpy_test:flush()),
    ?assertEqual({ok, 3.0}, py:call(math, sqrt, [9], #{}, opts(P))).

stuck_in_c_killed_after_grace(Config) ->
    erlpy_test:doc("a sync call stuck in C past its timeout: killed after cancel_grace, replaced"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import ctypes, signal\ndef stuck():\n"
                   "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGALRM})\n"
                   "    ctypes.CDLL(None).sleep(30)\n    return 'woke'\n">>, opts(P)),
    [#{os_pid := Old, restarts := 0}] = erlpy_test:workers(P),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({error, timeout}, py:call('__main__', stuck, [], #{}, opts(P, 200))),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    ct:log("timeout after ~b ms", [Elapsed]),
    ?assert(Elapsed < 5000),
    ok = erlpy_test:wait_until(fun() ->
        case erlpy_test:workers(P) of
            [#{os_pid := New, restarts := 1, state := ready}] -> New =/= Old;
            _ -> false
        end
    end),
    ok = erlpy_test:wait_until(fun() -> not erlpy_test:os_pid_alive(Old) end),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    %% the exec'd definitions were replayed on the new Python
    ?assertEqual({ok, true}, py:eval(<<"callable(stuck)">>, #{}, opts(P))),
    ?assertEqual([], erlpy_test:flush()).

%%====================================================================
%% Python dying
%%====================================================================

os_exit_worker_exited(Config) ->
    erlpy_test:doc("os._exit(1) in a call: {error, {worker_exited, _}}, the worker is restarted"),
    P = ?config(pool, Config),
    [Old] = erlpy_test:os_pids(P),
    ?assertMatch({error, {worker_exited, _}}, py:call(os, '_exit', [1], #{}, opts(P))),
    ok = wait_restarted(P, Old, 1),
    ?assertNot(erlpy_test:os_pid_alive(Old)),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    {ok, NewPid} = py:call(os, getpid, [], #{}, opts(P)),
    ?assertEqual([NewPid], erlpy_test:os_pids(P)),
    ?assertEqual([], erlpy_test:flush()).

segfault_worker_exited(Config) ->
    erlpy_test:doc("a segfault in a call: {error, {worker_exited, _}}, the worker is restarted"),
    P = ?config(pool, Config),
    [Old] = erlpy_test:os_pids(P),
    ?assertMatch({error, {worker_exited, _}},
                 py:eval(<<"__import__('ctypes').string_at(0)">>, #{}, opts(P))),
    ok = wait_restarted(P, Old, 1),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))).

crash_fails_every_request_in_flight(Config) ->
    erlpy_test:doc("when Python dies, every request in flight gets exactly one worker_exited"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import time\nasync def await_long():\n    await asyncio.sleep(30)\n"
                   "def sync_long():\n    time.sleep(30)\n">>, opts(P)),
    [Old] = erlpy_test:os_pids(P),
    Self = self(),
    Async = [spawn_call(Self, fun() -> py:call('__main__', await_long, [], #{}, opts(P)) end)
             || _ <- lists:seq(1, 3)],
    Sync = spawn_call(Self, fun() -> py:call('__main__', sync_long, [], #{}, opts(P)) end),
    Queued = spawn_call(Self, fun() -> py:call(math, sqrt, [4], #{}, opts(P)) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 5 end),
    os:cmd("kill -9 " ++ integer_to_list(Old)),
    Results = [receive {Ref, R} -> R after 10000 -> no_reply end
               || Ref <- Async ++ [Sync, Queued]],
    ct:log("~p", [Results]),
    [?assertMatch({error, {worker_exited, _}}, R) || R <- Results],
    ok = wait_restarted(P, Old, 1),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 0 end),
    timer:sleep(100),
    ?assertEqual([], erlpy_test:flush()).

python_crash_not_counted_as_erlang_restart(Config) ->
    erlpy_test:doc("killing Python many times in a row never takes the pool down"),
    P = ?config(pool, Config),
    [#{pid := WorkerPid}] = erlpy_test:workers(P),
    lists:foreach(
        fun(N) ->
            [Old] = erlpy_test:os_pids(P),
            os:cmd("kill -9 " ++ integer_to_list(Old)),
            ok = wait_restarted(P, Old, N)
        end,
        lists:seq(1, 6)
    ),
    ?assertMatch([#{pid := WorkerPid, restarts := 6}], erlpy_test:workers(P)),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))).

erlang_worker_killed(Config) ->
    erlpy_test:doc("the worker's Erlang process killed: callers get worker_exited, its Python "
                   "(even stuck in C) exits, the supervisor starts a new worker with the exec log"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import ctypes\ndef stuck():\n    ctypes.CDLL(None).sleep(30)\n"
                   "def alive():\n    return 'alive'\n">>, opts(P)),
    [#{pid := WorkerPid, os_pid := Old}] = erlpy_test:workers(P),
    Ref = spawn_call(self(), fun() -> py:call('__main__', stuck, [], #{}, opts(P, 60000)) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 1 end),
    exit(WorkerPid, kill),
    ?assertMatch({error, {worker_exited, _}}, receive {Ref, R} -> R after 10000 -> no_reply end),
    ok = erlpy_test:wait_until(fun() -> not erlpy_test:os_pid_alive(Old) end),
    ok = erlpy_test:wait_until(fun() ->
        try erlpy_test:workers(P) of
            [#{pid := New, state := ready}] -> New =/= WorkerPid;
            _ -> false
        catch _:_ -> false
        end
    end),
    ?assertEqual({ok, <<"alive">>}, py:call('__main__', alive, [], #{}, opts(P))),
    ?assertEqual(0, erlpy_test:in_flight(P)),
    ?assertMatch(#{queued := 0}, py:info(P)).

%%====================================================================
%% async
%%====================================================================

async_calls_run_concurrently(Config) ->
    erlpy_test:doc("20 async calls sleeping 0.5 s interleave on a single worker"),
    P = ?config(pool, Config),
    ok = py:exec(<<"async def nap(i):\n    await asyncio.sleep(0.5)\n    return i\n">>, opts(P)),
    T0 = erlang:monotonic_time(millisecond),
    Results = erlpy_test:pmap(fun(I) -> py:call('__main__', nap, [I], #{}, opts(P)) end, lists:seq(1, 20)),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    ct:log("20 naps took ~b ms", [Elapsed]),
    ?assertEqual([{ok, I} || I <- lists:seq(1, 20)], Results),
    %% sequentially this would take 10 s; allow a very loaded machine
    ?assert(Elapsed < 5000).

sync_call_while_async_pending(Config) ->
    erlpy_test:doc("sync calls keep working while an async call is pending on the same worker"),
    P = ?config(pool, Config),
    ok = py:exec(<<"flag = False\nasync def wait_flag():\n    while not flag:\n"
                   "        await asyncio.sleep(0.01)\n    return 'released'\n"
                   "def set_flag():\n    global flag\n    flag = True\n    return 'set'\n">>, opts(P)),
    Ref = spawn_call(self(), fun() -> py:call('__main__', wait_flag, [], #{}, opts(P)) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 1 end),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, opts(P))),
    receive {Ref, Early} -> error({async_returned_early, Early}) after 0 -> ok end,
    ?assertEqual({ok, <<"set">>}, py:call('__main__', set_flag, [], #{}, opts(P))),
    ?assertEqual({ok, <<"released">>}, receive {Ref, R} -> R after 10000 -> no_reply end).

async_eval_awaitable(Config) ->
    erlpy_test:doc("eval of an expression giving a coroutine awaits it"),
    P = ?config(pool, Config),
    ok = py:exec(<<"async def add1(x):\n    await asyncio.sleep(0)\n    return x + 1\n">>, opts(P)),
    ?assertEqual({ok, 6}, py:eval(<<"add1(5)">>, #{}, opts(P))),
    ?assertEqual({ok, 6}, py:call('__main__', add1, [5], #{}, opts(P))),
    %% an async function raising gives the Python error
    ok = py:exec(<<"async def araise():\n    raise KeyError('k')\n">>, opts(P)),
    ?assertMatch({error, {python, <<"KeyError">>, _, _}}, py:call('__main__', araise, [], #{}, opts(P))).

%%====================================================================
%% overload
%%====================================================================

overloaded_max_queue_0(Config) ->
    erlpy_test:doc("size 1, max_queue 0, a long call in flight: the next request is overloaded"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import time">>, opts(P)),
    Ref = spawn_call(self(), fun() -> py:eval(<<"time.sleep(1.5) or 'slept'">>, #{}, opts(P)) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 1 end),
    ?assertEqual({error, overloaded}, py:call(math, sqrt, [16], #{}, opts(P))),
    ?assertEqual({error, overloaded}, py:eval(<<"1">>, #{}, opts(P))),
    ?assertEqual({error, overloaded}, py:stream(builtins, range, [3], #{}, opts(P))),
    ?assertEqual({ok, <<"slept">>}, receive {Ref, R} -> R after 10000 -> no_reply end),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    ?assertMatch(#{queued := 0}, py:info(P)).

overloaded_max_queue_1(Config) ->
    erlpy_test:doc("size 1, max_queue 1: one request may wait, the one after is overloaded"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import time">>, opts(P)),
    Ref1 = spawn_call(self(), fun() -> py:eval(<<"time.sleep(1.5) or 1">>, #{}, opts(P)) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 1 end),
    Ref2 = spawn_call(self(), fun() -> py:eval(<<"2">>, #{}, opts(P)) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 2 end),
    ?assertMatch(#{queued := 1}, py:info(P)),
    ?assertEqual({error, overloaded}, py:eval(<<"3">>, #{}, opts(P))),
    ?assertEqual({ok, 1}, receive {Ref1, R1} -> R1 after 10000 -> no_reply end),
    ?assertEqual({ok, 2}, receive {Ref2, R2} -> R2 after 10000 -> no_reply end),
    ?assertEqual({ok, 3}, py:eval(<<"3">>, #{}, opts(P))).

%%====================================================================
%% exec state and restarts
%%====================================================================

exec_replayed_on_restart(Config) ->
    erlpy_test:doc("exec'd definitions are replayed, in order, on a restarted Python"),
    P = ?config(pool, Config),
    ok = py:exec(<<"log = ['a']">>, opts(P)),
    ok = py:exec(<<"log.append('b')\ndef logged():\n    return log\n">>, opts(P)),
    ?assertEqual({ok, [<<"a">>, <<"b">>]}, py:call('__main__', logged, [], #{}, opts(P))),
    ok = py:exec(<<"log.append('c')">>, opts(P)),
    [Old] = erlpy_test:os_pids(P),
    os:cmd("kill -9 " ++ integer_to_list(Old)),
    ok = wait_restarted(P, Old, 1),
    ?assertEqual({ok, [<<"a">>, <<"b">>, <<"c">>]}, py:call('__main__', logged, [], #{}, opts(P))).

exec_failure_not_replayed(Config) ->
    erlpy_test:doc("a failing exec is not remembered: a restarted Python does not replay it"),
    P = ?config(pool, Config),
    ok = py:exec(<<"kept = 1">>, opts(P)),
    ?assertMatch({error, {python, <<"SyntaxError">>, _, _}}, py:exec(<<"def (:">>, opts(P))),
    ?assertMatch({error, {python, <<"ValueError">>, _, _}},
                 py:exec(<<"partial = 1\nraise ValueError('no')">>, opts(P))),
    %% the failing code ran up to the error on this Python ...
    ?assertEqual({ok, true}, py:eval(<<"'partial' in globals()">>, #{}, opts(P))),
    [Old] = erlpy_test:os_pids(P),
    os:cmd("kill -9 " ++ integer_to_list(Old)),
    ok = wait_restarted(P, Old, 1),
    %% ... but was not replayed on the new one, which started fine
    ?assertMatch([#{state := ready}], erlpy_test:workers(P)),
    ?assertEqual({ok, false}, py:eval(<<"'partial' in globals()">>, #{}, opts(P))),
    ?assertEqual({ok, 1}, py:eval(<<"kept">>, #{}, opts(P))).

in_flight_counters_settle(Config) ->
    erlpy_test:doc("after timeouts, kills and errors the in-flight counters return to 0"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import time, ctypes">>, opts(P)),
    _ = erlpy_test:pmap(fun(I) ->
        case I rem 4 of
            0 -> py:eval(<<"time.sleep(0.5)">>, #{}, opts(P, 50));
            1 -> py:eval(<<"ctypes.CDLL(None).sleep(5)">>, #{}, opts(P, 50));
            2 -> py:eval(<<"1/0">>, #{}, opts(P));
            3 -> py:eval(<<"asyncio.sleep(0.5)">>, #{}, opts(P, 50))
        end
    end, lists:seq(1, 12)),
    ok = erlpy_test:wait_until(fun() ->
        #{queued := Q, workers := Ws} = py:info(P),
        Q =:= 0 andalso [0, 0] =:= [F || #{in_flight := F} <- Ws]
            andalso [ready, ready] =:= [S || #{state := S} <- Ws]
    end, 20000),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    ?assertEqual([], erlpy_test:flush()).

%%====================================================================
%% regressions: bugs these tests found (fixed)
%%====================================================================

callback_reentrant_single_worker(Config) ->
    erlpy_test:doc("a registered fun calling py:call back into a 1-worker pool (BUG: deadlock)"),
    P = ?config(pool, Config),
    ok = py:register_function(reenter, fun([X]) ->
        {ok, V} = py:call(math, sqrt, [X], #{}, opts(P)),
        V
    end),
    ?assertEqual({ok, 4.0}, py:eval(<<"erlang.call('reenter', 16)">>, #{}, opts(P, 5000))).

queued_timeout_kills_busy_worker(Config) ->
    erlpy_test:doc("a queued request timing out must not kill the worker busy with another "
                   "caller's healthy call (BUG: grace timer starts for a request not yet running)"),
    P = ?config(pool, Config),
    ok = py:exec(<<"import time">>, opts(P)),
    [Old] = erlpy_test:os_pids(P),
    %% A: a legitimate 2 s sync call with a generous timeout
    RefA = spawn_call(self(), fun() -> py:eval(<<"time.sleep(2) or 'A done'">>, #{}, opts(P, 20000)) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 1 end),
    %% B: queued behind A (sync code runs one at a time), gives up after 100 ms
    ?assertEqual({error, timeout}, py:call(math, sqrt, [4], #{}, opts(P, 100))),
    ?assertEqual({ok, <<"A done">>}, receive {RefA, R} -> R after 15000 -> no_reply end),
    ?assertEqual([Old], erlpy_test:os_pids(P)).

timeout_in_erlang_callback_kills_worker(Config) ->
    erlpy_test:doc("a call timing out while Python waits in erlang.call() for a slow Erlang "
                   "fun is interrupted, not killed (BUG: the wait is not interruptible)"),
    P = ?config(pool, Config),
    ok = py:register_function(slow_erlang, fun([]) -> timer:sleep(1500), done end),
    [Old] = erlpy_test:os_pids(P),
    ?assertEqual({error, timeout},
                 py:eval(<<"erlang.call('slow_erlang')">>, #{}, opts(P, 200))),
    timer:sleep(2500),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, opts(P))),
    ?assertEqual([Old], erlpy_test:os_pids(P)).

%%====================================================================
%% helpers
%%====================================================================

opts(P) -> #{pool => P, timeout => 10000}.
opts(P, Timeout) -> #{pool => P, timeout => Timeout}.

%% Wait until the (single) worker runs a new Python, restarted Restarts times in all.
wait_restarted(P, Old, Restarts) ->
    erlpy_test:wait_until(fun() ->
        case erlpy_test:workers(P) of
            [#{os_pid := New, restarts := Restarts, state := ready}] -> New =/= Old;
            _ -> false
        end
    end).

spawn_call(Parent, F) ->
    Ref = make_ref(),
    spawn_link(fun() -> Parent ! {Ref, F()} end),
    Ref.


%% Edge cases of isolation, deadlines and state, one regression test per case.
%%
%% Each case pins down what erlpy must do at an edge that it got wrong when the case was
%% written (see the doc line of each case): a forked child answering for its parent,
%% children holding the protocol pipes, requests that time out while their worker starts,
%% an event loop that dies, collected streams that outlive their deadline, many streams
%% to an owner that does not read, a worker process killed while its Python holds the
%% GIL, protocol fds closed or written to by user code, children that outlive their pool
%% or their VM, exec state lost by a restart, callbacks into Erlang that outlive their
%% request, py:info/0,1 racing with pools that start and stop, stream_send to a stream
%% without input, and indented exec code.
%%
%% The Python side is a module written to the suite's priv_dir (helpers/0), on the path of
%% the pools the cases start. Every pool of a case gets the environment variable
%% ERLPY_EDGES_TAG with a value of its own, which every process its Pythons start
%% inherits: end_per_testcase kills whatever still carries the case's tag, so that a case
%% that fails (because the bug it shows is there) leaves no OS process behind.
-module(erlpy_edges_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(M, erlpy_edges_helpers).
-define(TAG_VAR, "ERLPY_EDGES_TAG").

suite() ->
    [{timetrap, {seconds, 60}}].

all() ->
    [
        fork_child_never_answers,
        fork_child_exit_never_answers,
        system_child_holding_fds,
        popen_child_holding_fds,
        multiprocessing_child_holding_fds,
        call_timed_out_while_starting_never_runs,
        stream_start_timed_out_while_starting_never_runs,
        collect_timed_out_while_starting_never_runs,
        stream_start_timeout_zero_no_orphans,
        async_call_timeout_zero_never_runs,
        loop_dies_task_system_exit,
        loop_dies_call_soon_exit,
        loop_dies_task_keyboard_interrupt,
        loop_dies_stop,
        collect_eval_endless_keeps_deadline,
        collect_call_endless_keeps_deadline,
        collect_eval_large_keeps_deadline,
        many_streams_owner_not_reading_10,
        many_streams_owner_not_reading_50,
        two_streams_read_one_after_the_other,
        worker_killed_while_gil_held,
        close_fd_3,
        close_fd_4,
        children_end_with_pool,
        escaped_children_end_with_python,
        escaped_children_end_with_group_kill,
        children_end_with_supervisor_kill,
        stop_ends_python_stuck_in_c,
        children_end_with_vm,
        exec_survives_restart_during_exec,
        exec_survives_pool_server_restart,
        callback_timeout_does_not_kill_other_call,
        callback_processes_stop_with_request,
        info_never_raises,
        corrupt_frame_does_not_freeze_worker,
        stream_send_without_input,
        stream_close_without_input,
        exec_indented_code
    ].

%%--------------------------------------------------------------------
%% Setup
%%--------------------------------------------------------------------

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    ok = file:write_file(filename:join(?config(priv_dir, Config), "erlpy_edges_helpers.py"),
                         helpers()),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_testcase(Case, Config) ->
    Dir = filename:join(?config(priv_dir, Config), atom_to_list(Case)),
    ok = filelib:ensure_path(Dir ++ "/"),
    Tag = atom_to_list(Case) ++ "-" ++ integer_to_list(erlang:unique_integer([positive])),
    _ = erlpy_test:flush(),
    erase(tracked),
    [{dir, Dir}, {pool, Case}, {tag, Tag}, {started, now_ms()} | Config].

end_per_testcase(Case, Config) ->
    ct:log("~s took ~b ms", [Case, now_ms() - ?config(started, Config)]),
    [exit(Pid, kill) || Pid <- tracked()],
    _ = py:stop_pool(Case),
    _ = [py:unregister_function(F) || F <- [edges_block, edges_record_block]],
    Left = erlpy_test:kill_tagged(?TAG_VAR, ?config(tag, Config)),
    Left =:= [] orelse ct:log("killed processes left behind: ~p", [Left]),
    _ = erlpy_test:flush(),
    ok.

%% Start the case's pool: the helpers on its path, the case's tag in its environment.
start_pool(Config, Opts) ->
    P = ?config(pool, Config),
    {ok, _} = py:start_pool(P, pool_opts(Config, Opts)),
    P.

pool_opts(Config, Opts) ->
    maps:merge(#{path => [?config(priv_dir, Config)],
                 env => [{?TAG_VAR, ?config(tag, Config)}]}, Opts).

%%====================================================================
%% 1. A forked child never answers
%%====================================================================

fork_child_never_answers(Config) ->
    erlpy_test:doc("os.fork() in a sync call: the parent's answer is the one the caller gets, "
                   "20 times out of 20 (with and without the parent being slower than the "
                   "child)"),
    P = start_pool(Config, #{size => 1}),
    O = #{pool => P, timeout => 5000},
    ok = py:exec(<<"import os, time\n"
                   "def f():\n"
                   "    return ['child' if os.fork() == 0 else 'parent', os.getpid()]\n"
                   "def f_slow_parent():\n"
                   "    pid = os.fork()\n"
                   "    if pid:\n"
                   "        time.sleep(0.02)\n"
                   "    return ['child' if pid == 0 else 'parent', os.getpid()]\n">>, O),
    [OsPid] = erlpy_test:os_pids(P),
    %% f_slow_parent makes the race certain: a child that can answer always answers first.
    Results = [py:call('__main__', F, [], #{}, O) || F <- [f, f_slow_parent], _ <- lists:seq(1, 20)],
    ct:log("worker ~b; answers: ~p", [OsPid, Results]),
    ?assertEqual([], [R || R <- Results, R =/= {ok, [<<"parent">>, OsPid]}]).

fork_child_exit_never_answers(Config) ->
    erlpy_test:doc("a forked child that calls sys.exit(0) in user code: the caller gets the "
                   "parent's answer, 20 times out of 20"),
    P = start_pool(Config, #{size => 1}),
    O = #{pool => P, timeout => 5000},
    ok = py:exec(<<"import os, sys, time\n"
                   "def g(delay):\n"
                   "    pid = os.fork()\n"
                   "    if pid == 0:\n"
                   "        sys.exit(0)\n"
                   "    time.sleep(delay)\n"
                   "    return 'parent'\n">>, O),
    %% With the parent delayed, the child's SystemExit is certain to be reported first.
    Results = [py:call('__main__', g, [Delay], #{}, O) || Delay <- [0, 0.02], _ <- lists:seq(1, 20)],
    ct:log("answers: ~p", [Results]),
    ?assertEqual([], [R || R <- Results, R =/= {ok, <<"parent">>}]).

%%====================================================================
%% 2. A child holding inherited fds does not hide Python's death
%%====================================================================

system_child_holding_fds(Config) ->
    erlpy_test:doc("os.system('sleep 30 &') then kill -9 of Python: the stream in flight ends "
                   "with worker_exited and a call is answered within 3 s; the sleep is gone"),
    child_holding_fds(Config, spawn_system_sleep).

popen_child_holding_fds(Config) ->
    erlpy_test:doc("subprocess.Popen(['sleep', '30'], close_fds=False) then kill -9 of Python: "
                   "stream terminal and a call answered within 3 s; the sleep is gone"),
    child_holding_fds(Config, spawn_popen_sleep).

multiprocessing_child_holding_fds(Config) ->
    erlpy_test:doc("a multiprocessing (fork context) Process sleeping 30 s, then kill -9 of "
                   "Python: stream terminal and a call answered within 3 s; the child is gone"),
    child_holding_fds(Config, spawn_mp_sleep).

child_holding_fds(Config, Spawn) ->
    P = start_pool(Config, #{size => 1, cancel_grace => 500}),
    O = #{pool => P, timeout => 5000},
    [OsPid] = erlpy_test:os_pids(P),
    {ok, _} = py:call(?M, Spawn, [30], #{}, O),
    Group = erlpy_test:pgid(OsPid),
    Children = erlpy_test:group_members([Group]) -- [OsPid, Group],
    ct:log("worker ~b, children ~p", [OsPid, Children]),
    ?assertNotEqual([], Children),
    {ok, Ref} = py:stream_start(?M, ticks, [0.001], #{pool => P, window => 10}),
    _ = erlpy_test:take(Ref, 3),
    T0 = now_ms(),
    kill9(OsPid),
    Terminal = read_to_terminal(Ref, T0 + 3000),
    T1 = now_ms(),
    Call = await(job(fun() -> py:call(math, sqrt, [4], #{}, O) end), max(0, T0 + 4000 - now_ms())),
    T2 = now_ms(),
    Gone = wait_gone(Children, T0 + 6000),
    T3 = now_ms(),
    ct:log("after kill -9: stream terminal ~p after ~b ms; call ~p after ~b ms; "
           "children still alive ~p after ~b ms", [Terminal, T1 - T0, Call, T2 - T0, Gone, T3 - T0]),
    ?assertMatch({error, {worker_exited, _}}, Terminal),
    ?assertMatch({{ok, 2.0}, []}, Call),
    ?assert(T2 - T0 =< 3500),
    ?assertEqual([], Gone).

%% Read stream Ref, granting each item back (the owner reads), until its terminal message
%% or the deadline.
read_to_terminal(Ref, Deadline) ->
    receive
        {py_stream, Ref, {data, _}} ->
            py:stream_ack(Ref, 1),
            read_to_terminal(Ref, Deadline);
        {py_stream, Ref, Terminal} ->
            Terminal
    after max(0, Deadline - now_ms()) ->
        no_terminal
    end.

%%====================================================================
%% 3. A request that timed out while its worker was starting never runs
%%====================================================================

call_timed_out_while_starting_never_runs(Config) ->
    erlpy_test:doc("py:call with timeout 200 while the worker replays a 1.5 s init: "
                   "{error, timeout}, and the function never runs"),
    timed_out_while_starting(Config, fun(P, Mark) ->
        py:call(?M, mark_call, [Mark], #{}, #{pool => P, timeout => 200})
    end).

stream_start_timed_out_while_starting_never_runs(Config) ->
    erlpy_test:doc("py:stream_start with timeout 200 while the worker replays a 1.5 s init: "
                   "{error, timeout}, no py_stream message ever, the generator never runs"),
    timed_out_while_starting(Config, fun(P, Mark) ->
        py:stream_start(?M, mark_gen, [Mark], #{pool => P, timeout => 200})
    end).

collect_timed_out_while_starting_never_runs(Config) ->
    erlpy_test:doc("py:stream with timeout 200 while the worker replays a 1.5 s init: "
                   "{error, timeout}, the generator never runs"),
    timed_out_while_starting(Config, fun(P, Mark) ->
        py:stream(?M, mark_gen, [Mark, 100], #{}, #{pool => P, timeout => 200})
    end).

%% The request is made by the test process, which stays alive: a caller that died would
%% have its request cancelled for that reason alone.
timed_out_while_starting(Config, Request) ->
    P = start_pool(Config, #{size => 1, init => <<"import time; time.sleep(1.5)">>}),
    [Old] = erlpy_test:os_pids(P),
    kill9(Old),
    ok = erlpy_test:wait_until(fun() ->
        case erlpy_test:workers(P) of
            [#{state := starting, os_pid := New}] -> New =/= Old;
            _ -> false
        end
    end, 5000),
    Mark = filename:join(?config(dir, Config), "ran"),
    Result = Request(P, list_to_binary(Mark)),
    ok = erlpy_test:wait_until(fun() -> [ready] =:= [S || #{state := S} <- erlpy_test:workers(P)] end,
                               10000),
    timer:sleep(500),
    Ran = filelib:is_file(Mark),
    Stray = drain(1000),
    ct:log("result ~p; messages after it ~p; the request ran: ~p", [Result, Stray, Ran]),
    ?assertEqual({error, timeout}, Result),
    ?assertEqual([], Stray),
    ?assertNot(Ran).

%%====================================================================
%% 4. stream_start with timeout 0: no message for a ref the caller never got
%%====================================================================

async_call_timeout_zero_never_runs(Config) ->
    erlpy_test:doc("50 calls of an async function with timeout => 0: each {error, timeout}, and "
                   "the function never runs (its caller has gone): it ran every time, as an "
                   "async call starts as it is read, before its cancel is"),
    P = start_pool(Config, #{size => 1}),
    ok = py:exec(<<"ran = []\nasync def side_effect():\n    ran.append(1)\n">>, #{pool => P}),
    Results = [py:call('__main__', side_effect, [], #{}, #{pool => P, timeout => 0})
               || _ <- lists:seq(1, 50)],
    ?assertEqual([{error, timeout}], lists:usort(Results)),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 0 end, 5000),
    ?assertEqual({ok, 0}, py:eval(<<"len(ran)">>, #{}, #{pool => P})).

stream_start_timeout_zero_no_orphans(Config) ->
    erlpy_test:doc("30 x py:stream_start(itertools, count, [], #{timeout => 0}): {ok, Ref} "
                   "(cancelled, ends with exactly {error, cancelled}) or {error, timeout}; no "
                   "py_stream message for a ref never returned"),
    P = start_pool(Config, #{size => 1}),
    Results = [py:stream_start(itertools, count, [], #{pool => P, timeout => 0})
               || _ <- lists:seq(1, 30)],
    Refs = [R || {ok, R} <- Results],
    Other = [R || R <- Results, not is_tuple(R) orelse element(1, R) =/= ok],
    ct:log("~b streams started, the rest: ~p", [length(Refs), lists:usort(Other)]),
    ?assertEqual([], [R || R <- Other, R =/= {error, timeout}]),
    [py:stream_cancel(R) || R <- Refs],
    Terminals = [{R, element(1, erlpy_test:collect(R, 5000))} || R <- Refs],
    ?assertEqual([], [RT || {_, T} = RT <- Terminals, T =/= {error, cancelled}]),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 0 end, 5000),
    timer:sleep(300),
    Left = drain(1000),
    Orphans = [M || {py_stream, R, _} = M <- Left, not lists:member(R, Refs)],
    ct:log("messages after the streams ended: ~b, for refs never returned: ~b; first: ~p",
           [length(Left), length(Orphans), lists:sublist(Orphans, 5)]),
    ?assertEqual([], Orphans),
    ?assertEqual([], Left).

%%====================================================================
%% 5. A dead event loop makes the worker restart
%%====================================================================

loop_dies_task_system_exit(Config) ->
    erlpy_test:doc("a task raises SystemExit and takes the event loop down: the worker "
                   "restarts, the next call is answered, streams in flight end"),
    loop_dies(Config, task_system_exit).

loop_dies_call_soon_exit(Config) ->
    erlpy_test:doc("loop.call_soon(sys.exit, 4) takes the event loop down: the worker "
                   "restarts, the next call is answered, streams in flight end"),
    loop_dies(Config, call_soon_exit).

loop_dies_task_keyboard_interrupt(Config) ->
    erlpy_test:doc("a task raises KeyboardInterrupt and takes the event loop down: the worker "
                   "restarts, the next call is answered, streams in flight end"),
    loop_dies(Config, task_keyboard_interrupt).

loop_dies_stop(Config) ->
    erlpy_test:doc("loop.stop() from user code ends the event loop: the worker restarts, the "
                   "next call is answered, streams in flight end"),
    loop_dies(Config, stop).

%% cancel_grace is longer than the case: a request that times out on the stuck worker must
%% not get it restarted by the grace timer, only the loop's death may.
loop_dies(Config, How) ->
    P = start_pool(Config, #{size => 1, cancel_grace => 30000}),
    Restarts0 = erlpy_test:restarts(P),
    %% Import the helpers (so that async functions start on the loop at once) and math.
    {ok, _} = py:call(?M, sleep_return, [0, ok], #{}, #{pool => P}),
    {ok, _} = py:call(math, sqrt, [1], #{}, #{pool => P}),
    %% The sync stream parks once its window is used: the main thread stays free.
    {ok, Sync} = py:stream_start(?M, ticks, [0.01], #{pool => P, window => 5}),
    {ok, Async} = py:stream_start(?M, aticks, [0.01], #{pool => P}),
    _ = erlpy_test:take(Sync, 1),
    _ = erlpy_test:take(Async, 1),
    T0 = now_ms(),
    Trigger = py:call(?M, kill_loop, [atom_to_binary(How)], #{}, #{pool => P, timeout => 1000}),
    %% The streams end once the worker has noticed; a call made after that is answered by
    %% the new Python (one made before might still find the dead one: worker_exited).
    Terminals = [{S, terminal_by(S, T0 + 5000)} || S <- [Sync, Async]],
    T1 = now_ms(),
    Call = await(job(fun() -> py:call(math, sqrt, [4], #{}, #{pool => P, timeout => 5000}) end),
                 max(0, T0 + 7000 - now_ms())),
    Restarts = erlpy_test:restarts(P),
    ct:log("trigger ~p; terminals ~p after ~b ms; call ~p after ~b ms; restarts ~b -> ~b",
           [Trigger, Terminals, T1 - T0, Call, now_ms() - T0, Restarts0, Restarts]),
    ?assertEqual([], [T || {_, T} <- Terminals, T =:= no_terminal]),
    ?assertMatch({{ok, 2.0}, []}, Call),
    ?assert(Restarts > Restarts0).

%% The terminal message of stream Ref (its items dropped), or no_terminal at the deadline.
terminal_by(Ref, Deadline) ->
    receive
        {py_stream, Ref, {data, _}} -> terminal_by(Ref, Deadline);
        {py_stream, Ref, Terminal} -> Terminal
    after max(0, Deadline - now_ms()) -> no_terminal
    end.

%%====================================================================
%% 6. Collected streams keep their deadline
%%====================================================================

collect_eval_endless_keeps_deadline(Config) ->
    erlpy_test:doc("py:stream_eval of itertools.count() with timeout 300: {error, timeout} "
                   "within 1.5 s, nothing in the caller's mailbox after"),
    P = start_pool(Config, #{size => 1}),
    collect_deadline(fun() ->
        py:stream_eval(<<"__import__('itertools').count()">>, #{}, #{pool => P, timeout => 300})
    end, 1500, fun(R) -> R =:= {error, timeout} end).

collect_call_endless_keeps_deadline(Config) ->
    erlpy_test:doc("py:stream(itertools, count, []) with timeout 300: {error, timeout} within "
                   "1.5 s, nothing in the caller's mailbox after"),
    P = start_pool(Config, #{size => 1}),
    collect_deadline(fun() ->
        py:stream(itertools, count, [], #{}, #{pool => P, timeout => 300})
    end, 1500, fun(R) -> R =:= {error, timeout} end).

collect_eval_large_keeps_deadline(Config) ->
    erlpy_test:doc("py:stream_eval of range(3000000) with timeout 300: an answer (the list or "
                   "{error, timeout}) within 1 s, nothing in the caller's mailbox after"),
    P = start_pool(Config, #{size => 1}),
    collect_deadline(fun() ->
        case py:stream_eval(<<"range(3000000)">>, #{}, #{pool => P, timeout => 300}) of
            {ok, L} -> {ok, length(L)};
            Other -> Other
        end
    end, 1000, fun(R) -> R =:= {error, timeout} orelse R =:= {ok, 3000000} end).

collect_deadline(Fun, Limit, Valid) ->
    T0 = now_ms(),
    Job = job(fun() ->
        R = Fun(),
        {R, now_ms() - T0}
    end, #{linger => 300}),
    Answer = await(Job, Limit + 600),
    ct:log("answer (result, ms): ~p", [Answer]),
    ?assertMatch({{_, _}, []}, Answer),
    {{Result, Ms}, []} = Answer,
    ?assert(Valid(Result)),
    ?assert(Ms =< Limit).

%%====================================================================
%% 7. Many streams to one owner that does not read
%%====================================================================

many_streams_owner_not_reading_10(Config) ->
    erlpy_test:doc("10 endless streams to one owner that does not read: after 2 s its mailbox "
                   "holds under 60,000 messages, the worker under 50 MB and under 200,000 "
                   "reductions a second"),
    many_streams_owner_not_reading(Config, 10).

many_streams_owner_not_reading_50(Config) ->
    erlpy_test:doc("50 endless streams to one owner that does not read: after 2 s its mailbox "
                   "holds under 60,000 messages, the worker under 50 MB and under 200,000 "
                   "reductions a second"),
    many_streams_owner_not_reading(Config, 50).

many_streams_owner_not_reading(Config, K) ->
    P = start_pool(Config, #{size => 1}),
    [#{pid := Worker}] = erlpy_test:workers(P),
    Owner = track(spawn(fun() -> receive stop -> ok end end)),
    Refs = [begin
                {ok, R} = py:stream_start(itertools, count, [], #{pool => P, owner => Owner}),
                R
            end || _ <- lists:seq(1, K)],
    timer:sleep(2000),
    {message_queue_len, Queue} = erlang:process_info(Owner, message_queue_len),
    {memory, Memory} = erlang:process_info(Worker, memory),
    {reductions, R0} = erlang:process_info(Worker, reductions),
    timer:sleep(1000),
    {reductions, R1} = erlang:process_info(Worker, reductions),
    {message_queue_len, Queue1} = erlang:process_info(Owner, message_queue_len),
    ct:log("~b streams: owner's queue ~b (~b a second later), worker memory ~b bytes, "
           "worker reductions in 1 s ~b", [K, Queue, Queue1, Memory, R1 - R0]),
    [py:stream_cancel(R) || R <- Refs],
    exit(Owner, kill),
    ?assert(Queue < 60000),
    ?assert(Queue1 < 60000),
    ?assert(Memory < 50 bsl 20),
    %% Once nothing is sent, the worker has next to nothing to do (1,000,000 to 2,300,000
    %% for 10 streams and 6,400,000 to 7,100,000 for 50 when every recheck copied the
    %% owner's mailbox).
    ?assert(R1 - R0 < 200000).

two_streams_read_one_after_the_other(Config) ->
    erlpy_test:doc("two 100,000-item streams to one owner, read one after the other with a "
                   "selective receive: both complete, in order"),
    P = start_pool(Config, #{size => 1}),
    Self = self(),
    Owner = track(spawn(fun() ->
        {ok, A} = py:stream_start(builtins, range, [100000], #{pool => P}),
        {ok, B} = py:stream_start(builtins, range, [100000], #{pool => P}),
        RA = erlpy_test:collect(A, 20000),
        RB = erlpy_test:collect(B, 20000),
        Self ! {self(), RA, RB}
    end)),
    receive
        {Owner, {TA, IA}, {TB, IB}} ->
            ct:log("first ~p with ~b items, second ~p with ~b items", [TA, length(IA), TB, length(IB)]),
            ?assertEqual({done, lists:seq(0, 99999)}, {TA, IA}),
            ?assertEqual({done, lists:seq(0, 99999)}, {TB, IB})
    after 30000 ->
        ct:fail(owner_stuck)
    end.

%%====================================================================
%% 8. The worker process killed while Python holds the GIL
%%====================================================================

worker_killed_while_gil_held(Config) ->
    erlpy_test:doc("exit(Worker, kill) while Python runs a catastrophic regex (GIL held in "
                   "C): after stop_pool that Python is gone within 3 s"),
    P = start_pool(Config, #{size => 1}),
    [#{pid := Worker, os_pid := OsPid}] = erlpy_test:workers(P),
    Mark = filename:join(?config(dir, Config), "regex"),
    _ = job(fun() -> py:call(?M, catastrophic, [list_to_binary(Mark)], #{}, #{pool => P, timeout => 30000}) end),
    ok = erlpy_test:wait_until(fun() -> filelib:is_file(Mark) end, 5000),
    timer:sleep(100),
    exit(Worker, kill),
    ok = erlpy_test:wait_until(fun() ->
        case catch erlpy_test:workers(P) of
            [#{pid := W, state := ready}] -> W =/= Worker;
            _ -> false
        end
    end, 10000),
    New = erlpy_test:os_pids(P),
    ok = py:stop_pool(P),
    Alive = wait_gone([OsPid | New], now_ms() + 3000),
    ct:log("Python of the killed worker ~b, of its successor ~p; alive 3 s after stop_pool: ~p",
           [OsPid, New, Alive]),
    ?assertEqual([], Alive).

%%====================================================================
%% 9. User code closes a protocol fd
%%====================================================================

close_fd_3(Config) ->
    erlpy_test:doc("os.close(3) in user code: the call is answered, later calls are answered "
                   "(no timeout), every Python of the pool is gone after stop_pool"),
    close_fd(Config, 3).

close_fd_4(Config) ->
    erlpy_test:doc("os.close(4) in user code: the call is answered, later calls are answered "
                   "(no timeout), every Python of the pool is gone after stop_pool"),
    close_fd(Config, 4).

close_fd(Config, Fd) ->
    P = start_pool(Config, #{size => 1, cancel_grace => 500}),
    O = #{pool => P, timeout => 3000},
    Seen0 = erlpy_test:os_pids(P),
    First = py:eval(<<"__import__('os').close(fd)">>, #{fd => Fd}, O),
    Seen1 = erlpy_test:os_pids(P),
    Later = [begin
                 R = py:call(math, sqrt, [4], #{}, O),
                 {R, erlpy_test:os_pids(P)}
             end || _ <- lists:seq(1, 4)],
    Seen = lists:usort(Seen0 ++ Seen1 ++ lists:append([S || {_, S} <- Later])),
    ok = py:stop_pool(P),
    Alive = wait_gone(Seen, now_ms() + 3000),
    ct:log("os.close(~b): ~p; later calls ~p; Pythons ~p, alive after stop_pool ~p",
           [Fd, First, Later, Seen, Alive]),
    %% The first may find the damaged Python and be answered worker_exited; none waits for
    %% its timeout.
    [L1 | Rest] = [R || {R, _} <- Later],
    ?assertMatch({_, true}, {L1, L1 =:= {ok, 2.0} orelse worker_exited(L1)}),
    ?assertEqual([{ok, 2.0}], lists:usort(Rest)),
    ?assertEqual([], Alive).

worker_exited({error, {worker_exited, _}}) -> true;
worker_exited(_) -> false.

%%====================================================================
%% 10. Forked children and background processes end with the pool, and with the VM
%%====================================================================

children_end_with_pool(Config) ->
    erlpy_test:doc("a forked child, os.system('sleep 300 &'), a Popen child that ignores "
                   "SIGTERM, and two that left the process group (start_new_session=True, a "
                   "double-forked setsid daemon): after stop_pool none is alive within 3 s, "
                   "and the worker's process group is empty"),
    P = start_pool(Config, #{size => 1}),
    [OsPid] = erlpy_test:os_pids(P),
    Call = fun(F, A) -> py:call(?M, F, A, #{}, #{pool => P}) end,
    Children = make_children(Call, ?config(dir, Config)),
    Escaped = make_escaped(Call),
    Pgid = erlpy_test:pgid(OsPid),
    Group = erlpy_test:group_members([Pgid]),
    ct:log("worker ~b, children ~p, escaped ~p, its process group ~b: ~p",
           [OsPid, Children, Escaped, Pgid, Group]),
    [?assert(lists:member(C, Group)) || C <- Children],
    ok = py:stop_pool(P),
    Alive = wait_gone(Children ++ Escaped ++ [OsPid], now_ms() + 3000),
    Left = erlpy_test:wait_groups_empty([Pgid], 1000),
    ct:log("alive 3 s after stop_pool: ~p; left in the process group: ~p", [Alive, Left]),
    ?assertEqual([], Alive),
    ?assertEqual([], Left).

escaped_children_end_with_python(Config) ->
    erlpy_test:doc("children that left the process group (start_new_session=True, a "
                   "double-forked setsid daemon), then kill -9 of Python: they are gone "
                   "when the worker has restarted, and the new Python answers"),
    P = start_pool(Config, #{size => 1}),
    [OsPid] = erlpy_test:os_pids(P),
    Escaped = make_escaped(fun(F, A) -> py:call(?M, F, A, #{}, #{pool => P}) end),
    kill9(OsPid),
    wait_replaced(P, OsPid),
    ?assertMatch({ok, _}, py:call(?M, sleep_return, [0, up], #{}, #{pool => P})),
    Alive = [C || C <- Escaped, erlpy_test:os_pid_alive(C)],
    ct:log("escaped children ~p; alive once the worker restarted: ~p", [Escaped, Alive]),
    ?assertEqual([], Alive).

escaped_children_end_with_group_kill(Config) ->
    erlpy_test:doc("the same escaped children, then Python kills its own process group with "
                   "SIGKILL (os.killpg(0, 9)): they are gone when the worker has restarted, "
                   "and the new Python answers"),
    P = start_pool(Config, #{size => 1}),
    [OsPid] = erlpy_test:os_pids(P),
    Escaped = make_escaped(fun(F, A) -> py:call(?M, F, A, #{}, #{pool => P}) end),
    ?assertMatch({error, {worker_exited, _}}, py:call(os, killpg, [0, 9], #{}, #{pool => P})),
    wait_replaced(P, OsPid),
    ?assertMatch({ok, _}, py:call(?M, sleep_return, [0, up], #{}, #{pool => P})),
    Alive = wait_gone(Escaped, now_ms() + 2000),
    ct:log("escaped children ~p; alive 2 s after the worker restarted: ~p", [Escaped, Alive]),
    ?assertEqual([], Alive).

children_end_with_supervisor_kill(Config) ->
    erlpy_test:doc("the children of items 10 (in Python's process group) and two that left "
                   "it, then kill -9 of the port's process, Python's supervisor: Python dies "
                   "with it, and all the children are gone when the worker has restarted "
                   "(the escaped ones by the mark in their environment)"),
    P = start_pool(Config, #{size => 1}),
    [OsPid] = erlpy_test:os_pids(P),
    {ok, Supervisor} = py:call(os, getppid, [], #{}, #{pool => P}),
    ?assertNotEqual(OsPid, Supervisor),
    Call = fun(F, A) -> py:call(?M, F, A, #{}, #{pool => P}) end,
    Children = make_children(Call, ?config(dir, Config)) ++ make_escaped(Call),
    kill9(Supervisor),
    wait_replaced(P, OsPid),
    Alive = wait_gone([OsPid | Children], now_ms() + 2000),
    ct:log("Python ~b, children ~p; alive 2 s after the worker restarted: ~p",
           [OsPid, Children, Alive]),
    ?assertEqual([], Alive).

stop_ends_python_stuck_in_c(Config) ->
    erlpy_test:doc("children, then a call that holds the GIL for hours (a regex in C), then "
                   "stop_pool: Python cannot act on STOP, so it is killed; stop_pool returns "
                   "within 5 s and Python and its children are gone"),
    P = start_pool(Config, #{size => 1}),
    [OsPid] = erlpy_test:os_pids(P),
    Call = fun(F, A) -> py:call(?M, F, A, #{}, #{pool => P}) end,
    Children = make_children(Call, ?config(dir, Config)) ++ make_escaped(Call),
    ok = py:exec(<<"import re\ndef stuck(): return re.match('(a+)+$', 'a' * 40 + 'b')">>,
                 #{pool => P}),
    Self = self(),
    spawn(fun() -> Self ! {stuck, py:eval(<<"stuck()">>, #{}, #{pool => P})} end),
    timer:sleep(300),  % the call is in the regex by now
    T0 = now_ms(),
    ok = py:stop_pool(P),
    Took = now_ms() - T0,
    Alive = wait_gone([OsPid | Children], now_ms() + 2000),
    ct:log("stop_pool took ~b ms; alive 2 s later: ~p", [Took, Alive]),
    ?assert(Took < 5000),
    ?assertEqual([], Alive),
    receive {stuck, Result} -> ?assertMatch({error, {worker_exited, _}}, Result)
    after 5000 -> ct:fail(no_answer_for_the_stuck_call)
    end.

children_end_with_vm(Config) ->
    erlpy_test:doc("the same children made by a pool on a peer node: when that node halts, "
                   "they are all gone within 5 s"),
    Started = ensure_distribution(),
    Ebin = filename:dirname(code:which(py)),
    {ok, Peer, Node} = peer:start(#{
        name => peer:random_name(?MODULE),
        args => ["-pa", Ebin, "-kernel", "logger_level", "notice"],
        env => [{"ERLPY_PYTHON", erlpy_test:python()}]
    }),
    try
        ok = erpc:call(Node, application, load, [erlpy]),
        ok = erpc:call(Node, application, set_env,
                       [erlpy, pools, #{default => pool_opts(Config, #{size => 1})}]),
        {ok, _} = erpc:call(Node, application, ensure_all_started, [erlpy], 30000),
        #{workers := [#{os_pid := OsPid}]} = erpc:call(Node, py, info, [default]),
        Call = fun(F, A) -> erpc:call(Node, py, call, [?M, F, A]) end,
        Children = make_children(Call, ?config(dir, Config)) ++ make_escaped(Call),
        ct:log("peer's Python ~b, its children ~p", [OsPid, Children]),
        T0 = now_ms(),
        erpc:cast(Node, erlang, halt, []),
        Alive = wait_gone([OsPid | Children], T0 + 5000),
        ct:log("alive 5 s after the node halted: ~p", [Alive]),
        ?assertEqual([], Alive)
    after
        catch peer:stop(Peer),
        Started andalso net_kernel:stop()
    end.

%% The children of items 10: a fork, a shell's background job, a Popen that ignores
%% SIGTERM. Returns their OS pids.
make_children(Call, Dir) ->
    PidFile = list_to_binary(filename:join(Dir, "system.pid")),
    {ok, Forked} = Call(fork_sleeper, [300]),
    {ok, Shelled} = Call(system_sleeper, [300, PidFile]),
    {ok, Stubborn} = Call(popen_stubborn, [300]),
    Children = [Forked, Shelled, Stubborn],
    ?assert(lists:all(fun erlpy_test:os_pid_alive/1, Children)),
    Children.

%% Children that left the worker's process group: a new session, and a daemon (setsid,
%% forked twice: nobody's child once its parent exited).
make_escaped(Call) ->
    {ok, Session} = Call(session_sleeper, [300]),
    {ok, Daemon} = Call(daemon_sleeper, [300]),
    Escaped = [Session, Daemon],
    ?assert(lists:all(fun erlpy_test:os_pid_alive/1, Escaped)),
    Escaped.

ensure_distribution() ->
    case node() of
        nonode@nohost ->
            _ = os:cmd("epmd -daemon"),
            {ok, _} = net_kernel:start([list_to_atom("erlpy_edges_" ++ os:getpid()), shortnames]),
            true;
        _ ->
            false
    end.

%%====================================================================
%% 11. exec state survives restarts
%%====================================================================

exec_survives_restart_during_exec(Config) ->
    erlpy_test:doc("pool of 2, one worker busy: the idle worker runs a py:exec and its Python "
                   "is killed before the exec is done on the busy one; afterwards both "
                   "workers have the definition"),
    P = start_pool(Config, #{size => 2}),
    Busy = job(fun() -> py:call(?M, sleep_return, [2, busy], #{}, #{pool => P}) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(P) =:= 1 end, 5000),
    [#{os_pid := Idle}] = [W || #{in_flight := 0} = W <- erlpy_test:workers(P)],
    Mark = filename:join(?config(dir, Config), "exec"),
    Code = iolist_to_binary(["import os\n",
                             "def defined(): return 'defined'\n",
                             "if not os.path.exists(", io_lib:format("~p", [Mark]), "):\n",
                             "    open(", io_lib:format("~p", [Mark]), ", 'w').write(str(os.getpid()))\n"]),
    Exec = job(fun() -> py:exec(Code, #{pool => P, timeout => 10000}) end),
    ok = erlpy_test:wait_until(fun() -> filelib:is_file(Mark) end, 5000),
    {ok, IdleBin} = file:read_file(Mark),
    ?assertEqual(Idle, binary_to_integer(IdleBin)),
    %% Once the idle worker has answered the exec, kill its Python.
    ok = erlpy_test:wait_until(fun() ->
        [0] =:= [F || #{os_pid := O, in_flight := F} <- erlpy_test:workers(P), O =:= Idle]
    end, 5000),
    kill9(Idle),
    ExecResult = await(Exec, 10000),
    BusyResult = await(Busy, 10000),
    ct:log("exec ~p, busy call ~p", [ExecResult, BusyResult]),
    ?assertMatch({ok, []}, ExecResult),
    ok = wait_ready(P, 2),
    assert_defined_everywhere(P).

exec_survives_pool_server_restart(Config) ->
    erlpy_test:doc("the pool's erlpy_pool process is killed: once the pool has recovered, "
                   "what py:exec defined is there on every worker"),
    P = start_pool(Config, #{size => 2}),
    ok = py:exec(<<"def defined(): return 'defined'">>, #{pool => P}),
    assert_defined_everywhere(P),
    #{pool := Server} = erlpy_pool:meta(P),
    Old = erlpy_test:os_pids(P),
    exit(Server, kill),
    ok = erlpy_test:wait_until(fun() ->
        case erlpy_pool:meta(P) of
            #{pool := New} when New =/= Server -> true;
            _ -> false
        end
    end, 10000),
    ok = wait_ready(P, 2),
    ct:log("Pythons before ~p, after ~p", [Old, erlpy_test:os_pids(P)]),
    assert_defined_everywhere(P).

wait_ready(P, N) ->
    erlpy_test:wait_until(fun() ->
        case catch erlpy_test:workers(P) of
            Ws when is_list(Ws), length(Ws) =:= N ->
                lists:all(fun(#{state := S}) -> S =:= ready end, Ws);
            _ ->
                false
        end
    end, 10000).

%% Every worker of P (reached by concurrent requests: each goes to the least busy worker)
%% has `defined' in __main__.
assert_defined_everywhere(P) ->
    Pids = erlpy_test:os_pids(P),
    Probe = <<"__import__('time').sleep(0.2) or (__import__('os').getpid(), "
              "'defined' in globals() and defined())">>,
    Answers = lists:append([erlpy_test:pmap(fun(_) -> py:eval(Probe, #{}, #{pool => P}) end,
                                            lists:seq(1, 2 * length(Pids)))
                            || _ <- [1, 2]]),
    ct:log("workers ~p; answers ~p", [Pids, Answers]),
    ?assertEqual(lists:sort(Pids), lists:usort([O || {ok, {O, _}} <- Answers])),
    ?assertEqual([{ok, <<"defined">>}], lists:usort([{ok, D} || {ok, {_, D}} <- Answers])),
    ?assertEqual([], [A || A <- Answers, element(1, A) =/= ok]).

%%====================================================================
%% 12. A caller timing out in erlpy.erlang.call() does not get another call killed
%%====================================================================

callback_timeout_does_not_kill_other_call(Config) ->
    erlpy_test:doc("caller A times out (500 ms) while its Python waits in erlpy.erlang.call(); "
                   "caller B's 1 s sync call on the same worker is answered, no restart"),
    Self = self(),
    ok = py:register_function(edges_block, fun(_) ->
        Self ! {blocking, self()},
        receive after 3000 -> ok end
    end),
    P = start_pool(Config, #{size => 1, cancel_grace => 300}),
    [OsPid] = erlpy_test:os_pids(P),
    A = job(fun() -> py:call(?M, call_erlang, [<<"edges_block">>], #{}, #{pool => P, timeout => 500}) end),
    receive {blocking, Callback} -> track(Callback) after 5000 -> ct:fail(no_callback) end,
    B = job(fun() -> py:call(?M, sleep_return, [1, b], #{}, #{pool => P, timeout => 5000}) end),
    RA = await(A, 5000),
    RB = await(B, 5000),
    After = erlpy_test:os_pids(P),
    ct:log("A ~p; B ~p; Python ~b before, ~p after", [RA, RB, OsPid, After]),
    ?assertMatch({{error, timeout}, []}, RA),
    ?assertEqual({{ok, b}, []}, RB),
    ?assertEqual([OsPid], After),
    ?assertEqual(0, erlpy_test:restarts(P)).

%%====================================================================
%% 13. Callback processes are stopped with their request
%%====================================================================

callback_processes_stop_with_request(Config) ->
    erlpy_test:doc("20 calls (10 sync, 10 async) time out (1 s) while Python waits in "
                   "erlpy.erlang.call() on a function that blocks 60 s: the 20 callback "
                   "processes are gone within 2 s of the timeouts"),
    Self = self(),
    ok = py:register_function(edges_record_block, fun(_) ->
        Self ! {callback, self()},
        receive after 60000 -> ok end
    end),
    P = start_pool(Config, #{size => 2}),
    Jobs = [job(fun() ->
                    F = case I rem 2 of 0 -> call_erlang; 1 -> acall_erlang end,
                    %% Long enough for every call to reach Erlang on a loaded machine.
                    py:call(?M, F, [<<"edges_record_block">>], #{}, #{pool => P, timeout => 1000})
                end) || I <- lists:seq(1, 20)],
    Callbacks = [receive {callback, C} -> track(C) after 5000 -> missing end || _ <- Jobs],
    Results = [await(J, 5000) || J <- Jobs],
    T0 = now_ms(),
    ct:log("results ~p", [Results]),
    ?assertEqual([], [C || C <- Callbacks, C =:= missing]),
    ?assertEqual([{{error, timeout}, []}], lists:usort(Results)),
    Alive = wait_dead(Callbacks, T0 + 2000),
    ct:log("callback processes alive 2 s after the timeouts: ~b of 20", [length(Alive)]),
    ok = py:stop_pool(P),
    AliveAfterStop = wait_dead(Callbacks, now_ms() + 1000),
    ct:log("alive after stop_pool: ~b", [length(AliveAfterStop)]),
    ?assertEqual([], Alive),
    ?assertEqual([], AliveAfterStop).

wait_dead(Pids, Deadline) ->
    Alive = [P || P <- Pids, is_process_alive(P)],
    case Alive =/= [] andalso now_ms() < Deadline of
        true -> timer:sleep(20), wait_dead(Alive, Deadline);
        false -> Alive
    end.

%%====================================================================
%% 14. py:info/0,1 never raise while pools start and stop
%%====================================================================

info_never_raises(Config) ->
    erlpy_test:doc("a process calls py:info() and py:info(Pool) in a loop during 20 "
                   "start_pool/stop_pool cycles: no exception"),
    P = ?config(pool, Config),
    Self = self(),
    Poller = track(spawn(fun() -> poll_info(Self, P, 0, []) end)),
    Cycles = [begin
                  {ok, _} = py:start_pool(P, pool_opts(Config, #{size => 1})),
                  ok = py:stop_pool(P)
              end || _ <- lists:seq(1, 20)],
    Poller ! stop,
    receive
        {Poller, Polls, Raised} ->
            ct:log("~b cycles, ~b polls, ~b exceptions; first: ~p",
                   [length(Cycles), Polls, length(Raised), lists:sublist(lists:reverse(Raised), 5)]),
            ?assert(Polls > 20),
            ?assertEqual([], Raised)
    after 10000 ->
        ct:fail(poller_stuck)
    end.

poll_info(Parent, P, N, Raised) ->
    receive
        stop -> Parent ! {self(), N, Raised}
    after 0 ->
        R1 = erlpy_test:catch_all(fun() -> py:info() end),
        R2 = erlpy_test:catch_all(fun() -> py:info(P) end),
        Bad = [{F, R} || {F, R} <- [{info0, R1}, {info1, R2}], element(1, R) =:= raised],
        poll_info(Parent, P, N + 1, lists:sublist(Bad ++ Raised, 50))
    end.

%%====================================================================
%% 15. A frame header written by user code does not freeze the worker
%%====================================================================

corrupt_frame_does_not_freeze_worker(Config) ->
    erlpy_test:doc("user code writes a 2 GB frame header to fd 4: a later call with timeout "
                   "infinity is answered (within 10 s)"),
    P = start_pool(Config, #{size => 1}),
    Corrupt = job(fun() -> py:call(?M, corrupt, [], #{}, #{pool => P, timeout => infinity}) end),
    %% A caller that dies would cancel its call and so get a frozen Python killed after
    %% cancel_grace: this one stays until the case ends.
    First = await(Corrupt, 1000, keep),
    Next = job(fun() -> py:call(math, sqrt, [4], #{}, #{pool => P, timeout => infinity}) end),
    Second = await(Next, 8000),
    ct:log("the corrupting call: ~p; the next call: ~p", [First, Second]),
    ?assertMatch({{ok, 2.0}, []}, Second).

%%====================================================================
%% 16. stream_send / stream_close to a stream without input
%%====================================================================

stream_send_without_input(Config) ->
    erlpy_test:doc("py:stream_send/2 to a stream started without input => true ends it with "
                   "{error, {badarg, no_input}}"),
    no_input(Config, fun(Ref) -> py:stream_send(Ref, 1) end).

stream_close_without_input(Config) ->
    erlpy_test:doc("py:stream_close/1 on a stream started without input => true ends it with "
                   "{error, {badarg, no_input}}"),
    no_input(Config, fun(Ref) -> py:stream_close(Ref) end).

no_input(Config, Command) ->
    P = start_pool(Config, #{size => 1}),
    {ok, Ref} = py:stream_start(itertools, count, [], #{pool => P, window => 10}),
    _ = erlpy_test:take(Ref, 10),
    ok = Command(Ref),
    {Terminal, Items} = erlpy_test:collect(Ref, 3000),
    ct:log("terminal ~p after ~b more items", [Terminal, length(Items)]),
    py:stream_cancel(Ref),
    ?assertEqual({error, {badarg, no_input}}, Terminal).

%%====================================================================
%% 17. Indented exec code
%%====================================================================

exec_indented_code(Config) ->
    erlpy_test:doc("py:exec of code indented as a whole (as in an Erlang binary literal) "
                   "works: ok, and the function is callable"),
    P = start_pool(Config, #{size => 1}),
    R1 = py:exec(<<"\n    def f():\n        return 1\n">>, #{pool => P}),
    R2 = py:call('__main__', f, [], #{}, #{pool => P}),
    ct:log("exec ~p; call ~p", [R1, R2]),
    ?assertEqual(ok, R1),
    ?assertEqual({ok, 1}, R2).

%%====================================================================
%% jobs: a request in a process of its own, reporting its result and any stray message
%%====================================================================

job(Fun) ->
    job(Fun, #{}).

job(Fun, Opts) ->
    Parent = self(),
    Tag = make_ref(),
    Linger = maps:get(linger, Opts, 100),
    Pid = spawn(fun() ->
        %% A request that runs away (a collect that never ends) must not take the machine's
        %% memory with it: the job is killed at 400 MB.
        process_flag(max_heap_size, #{size => 50000000, kill => true, error_logger => true,
                                      include_shared_binaries => true}),
        Result = try Fun() catch C:R:S -> {raised, C, R, S} end,
        timer:sleep(Linger),
        Parent ! {Tag, Result, drain(50)}
    end),
    track(Pid),
    {Tag, Pid}.

%% {Result, StrayMessages}, or no_answer after Timeout (the job is killed, unless `keep').
await(Job, Timeout) ->
    await(Job, Timeout, kill).

await({Tag, Pid}, Timeout, Then) ->
    receive
        {Tag, Result, Stray} -> {Result, Stray}
    after Timeout ->
        Then =:= kill andalso exit(Pid, kill),
        no_answer
    end.

%% What is in the mailbox, removed, up to N messages (a sender that does not stop must
%% not keep this going).
drain(0) ->
    [more];
drain(N) ->
    receive M -> [M | drain(N - 1)] after 0 -> [] end.

track(Pid) ->
    put(tracked, [Pid | tracked()]),
    Pid.

tracked() ->
    case get(tracked) of
        undefined -> [];
        L -> L
    end.

%%====================================================================
%% OS processes
%%====================================================================

now_ms() -> erlang:monotonic_time(millisecond).

kill9(OsPid) -> _ = os:cmd("kill -9 " ++ integer_to_list(OsPid)), ok.

%% Wait until pool P's only worker has a new Python (not OsPid).
wait_replaced(P, OsPid) ->
    ok = erlpy_test:wait_until(fun() ->
        case erlpy_test:os_pids(P) of
            [New] when is_integer(New), New =/= OsPid -> true;
            _ -> false
        end
    end, 10000).

%% The OS pids of Pids still alive at Deadline (waiting for them to go until then).
wait_gone(Pids, Deadline) ->
    Alive = [P || P <- Pids, erlpy_test:os_pid_alive(P)],
    case Alive =/= [] andalso now_ms() < Deadline of
        true -> timer:sleep(20), wait_gone(Alive, Deadline);
        false -> Alive
    end.


%%====================================================================
%% Python helpers
%%====================================================================

helpers() ->
    <<"
import asyncio
import itertools
import multiprocessing
import os
import re
import subprocess
import sys
import time


def _mark(path, text='1'):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


def ticks(delay=0.0):
    i = 0
    while True:
        yield i
        i += 1
        if delay:
            time.sleep(delay)


async def aticks(delay=0.0):
    i = 0
    while True:
        yield i
        i += 1
        await asyncio.sleep(delay)


# children that inherit the protocol fds (3 and 4)

def spawn_system_sleep(seconds):
    return os.system(f'sleep {seconds} &')


def spawn_popen_sleep(seconds):
    return subprocess.Popen(['sleep', str(seconds)], close_fds=False).pid


def spawn_mp_sleep(seconds):
    process = multiprocessing.get_context('fork').Process(target=time.sleep, args=(seconds,))
    process.start()
    return process.pid


# children that should end with the pool

def fork_sleeper(seconds):
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(seconds)
        finally:
            os._exit(0)
    return pid


def system_sleeper(seconds, pidfile):
    os.system(f'sleep {seconds} > /dev/null 2>&1 & echo $! > {pidfile}')
    with open(pidfile) as f:
        return int(f.read())


def session_sleeper(seconds):
    return subprocess.Popen(['sleep', str(seconds)], start_new_session=True).pid


def daemon_sleeper(seconds):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        pid = os.fork()
        if pid == 0:
            os.execvp('sleep', ['sleep', str(seconds)])
        os.write(w, str(pid).encode())
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 32))
    os.close(r)
    os.wait()
    return pid


def popen_stubborn(seconds):
    code = ('import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
            f'time.sleep({seconds})')
    return subprocess.Popen([sys.executable, '-c', code]).pid


# requests that leave a mark when they run

def mark_call(path):
    _mark(path)
    return 'ran'


def mark_gen(path, n=None):
    _mark(path)
    for i in itertools.count() if n is None else range(n):
        yield i
        time.sleep(0.01)


# the event loop dies

async def _raise(exc):
    raise exc


async def kill_loop(how):
    loop = asyncio.get_running_loop()
    if how == 'task_system_exit':
        loop.create_task(_raise(SystemExit(3)))
    elif how == 'call_soon_exit':
        loop.call_soon(sys.exit, 4)
    elif how == 'task_keyboard_interrupt':
        loop.create_task(_raise(KeyboardInterrupt()))
    elif how == 'stop':
        loop.stop()
    return how


# the GIL held in C

def catastrophic(path):
    _mark(path, str(os.getpid()))
    return bool(re.match('(a+)+$', 'a' * 40 + 'b'))


# callbacks into Erlang

def call_erlang(name):
    from erlpy import erlang
    return erlang.call(name)


async def acall_erlang(name):
    from erlpy import erlang
    return await erlang.acall(name)


# the protocol pipe written to by user code

def corrupt():
    os.write(4, (0x7fffffff).to_bytes(4, 'big'))
    return 'wrote'
">>.

%% State in Python with an owner and a lifetime (docs/state.md): handles (return => ref,
%% call_method, getattr, release), sessions (a private namespace on one worker) and
%% reload (new code on every worker, or none).
-module(erlpy_state_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(POOL, state).

all() ->
    [
        handle_keeps_state_and_is_an_argument,
        handle_of_eval_and_getattr,
        handle_stream_on_method,
        release_makes_stale,
        owner_death_releases,
        owner_option,
        python_killed_makes_stale,
        worker_killed_makes_stale,
        max_refs_cap,
        handles_of_two_workers_badarg,
        timed_out_ref_call_keeps_nothing,
        ref_call_answered_as_its_caller_gives_up,
        unhashable_handle_as_a_map_key,
        unhashable_handle_key_in_a_reply_or_an_input,
        slow_del_at_release_blocks_nothing,
        handles_under_chaos,
        sessions_do_not_see_each_other,
        session_calls_and_streams,
        stopped_session_is_ended,
        session_ends_with_owner,
        session_ends_with_python,
        sessions_under_chaos,
        reload_serves_new_code_everywhere,
        failed_reload_keeps_old_code_everywhere
    ].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_testcase(Case, Config) ->
    Size = case Case of
               handles_of_two_workers_badarg -> 2;
               handles_under_chaos -> 3;
               sessions_do_not_see_each_other -> 2;
               sessions_under_chaos -> 3;
               _ -> 1
           end,
    MaxRefs = case Case of max_refs_cap -> 3; _ -> infinity end,
    Dir = filename:join(?config(priv_dir, Config), atom_to_list(Case)),
    ok = filelib:ensure_path(Dir),
    Size1 = case Case of
                reload_serves_new_code_everywhere -> 3;
                failed_reload_keeps_old_code_everywhere -> 3;
                _ -> Size
            end,
    {ok, _} = py:start_pool(?POOL, #{size => Size1, max_refs => MaxRefs, init => init_code(),
                                     path => [Dir]}),
    [{dir, Dir} | Config].

end_per_testcase(_Case, _Config) ->
    _ = py:stop_pool(?POOL),
    ok.

init_code() ->
    <<"import weakref\n"
      "released = []\n"
      "class Acc:\n"
      "    def __init__(self, name, start=0):\n"
      "        self.name, self.total = name, start\n"
      "        weakref.finalize(self, released.append, name)\n"
      "    def add(self, n=1):\n"
      "        self.total += n\n"
      "        return self.total\n"
      "    def upto(self, n):\n"
      "        yield from range(self.total, self.total + n)\n"
      "    async def aadd(self, n):\n"
      "        self.total += n\n"
      "        return self.total\n"
      "def total_of(acc):\n"
      "    return acc.total\n"
      "def live():\n"
      "    import erlpy._handles\n"
      "    return len(erlpy._handles.objects)\n">>.

opts() -> #{pool => ?POOL}.

new_acc(Name) ->
    py:call('__main__', 'Acc', [Name], #{}, #{pool => ?POOL, return => ref}).

%% Every worker of the pool, as {Pid, Index}.
each_worker(Fun) ->
    [Fun(Pid, Index) || #{pid := Pid, index := Index} <- erlpy_test:workers(?POOL)].

%% Evaluate Code on one given worker.
eval_on(Pid, Index, Code) ->
    {ok, Pid, Index} = erlpy_pool:checkout_worker(?POOL, Pid, Index),
    Id = erlang:unique_integer([positive]),
    erlpy_worker:call(Pid, Id, erlpy_codec:message([2, Id, Code, #{}], none), 10000).

live_everywhere() ->
    lists:sum(each_worker(fun(P, I) -> {ok, N} = eval_on(P, I, <<"live()">>), N end)).

handle_keeps_state_and_is_an_argument(_Config) ->
    erlpy_test:doc("An object made with return => ref keeps its state across call_method, "
                   "async methods included, and arrives as itself when passed to a function."),
    {ok, Acc} = new_acc(<<"a">>),
    {ok, 1} = py:call_method(Acc, add, []),
    {ok, 11} = py:call_method(Acc, add, [], #{n => 10}),
    {ok, 16} = py:call_method(Acc, aadd, [5], #{}, #{timeout => 5000}),
    {ok, 16} = py:call('__main__', total_of, [Acc], #{}, opts()),
    {ok, 16} = py:call('__main__', total_of, [Acc]),
    {ok, [16, 16]} = py:eval(<<"[a.total, total_of(a)]">>, #{a => Acc}, opts()),
    {ok, true} = py:eval(<<"x[0] is x[1]">>, #{x => [Acc, Acc]}, opts()),
    {error, {python, <<"AttributeError">>, _, _}} = py:call_method(Acc, nope, []),
    ok = py:release(Acc).

handle_of_eval_and_getattr(_Config) ->
    erlpy_test:doc("eval with return => ref; getattr gives a value or, with return => ref, "
                   "another handle."),
    {ok, L} = py:eval(<<"[1, 2]">>, #{}, (opts())#{return => ref}),
    {ok, none} = py:call_method(L, append, [3]),
    {ok, [1, 2, 3]} = py:eval(<<"l">>, #{l => L}, opts()),
    {ok, Acc} = new_acc(<<"g">>),
    {ok, <<"g">>} = py:getattr(Acc, name),
    {ok, Add} = py:getattr(Acc, add, #{return => ref}),
    {ok, 1} = py:call_method(Add, '__call__', []),
    {ok, 1} = py:getattr(Acc, total),
    {error, {python, <<"AttributeError">>, _, _}} = py:getattr(Acc, missing),
    %% Any object, a str or bytes too, is a handle's object, never a module name.
    {ok, Str} = py:eval(<<"'os'">>, #{}, (opts())#{return => ref}),
    {ok, <<"OS">>} = py:call_method(Str, upper, []),
    {ok, Bytes} = py:eval(<<"b'\\xff'">>, #{}, (opts())#{return => ref}),
    {ok, <<"ff">>} = py:call_method(Bytes, hex, []),
    [ok = py:release(R) || R <- [L, Acc, Add, Str, Bytes]],
    ok.

handle_stream_on_method(_Config) ->
    erlpy_test:doc("py:stream and py:stream_start on a method of a handle's object."),
    {ok, Acc} = new_acc(<<"s">>),
    {ok, 5} = py:call_method(Acc, add, [5]),
    {ok, [5, 6, 7]} = py:stream(Acc, upto, [3]),
    {ok, [5, 6]} = py:stream(Acc, upto, [], #{n => 2}),
    {ok, Ref} = py:stream_start(Acc, upto, [4], #{}),
    {done, [5, 6, 7, 8]} = erlpy_test:collect(Ref),
    ok = py:release(Acc).

release_makes_stale(_Config) ->
    erlpy_test:doc("A released handle gives {error, {stale_ref, _}}, as argument too; "
                   "releasing twice is fine; the finalizer ran."),
    {ok, Acc} = new_acc(<<"r">>),
    {ok, 1} = py:call_method(Acc, add, []),
    ok = py:release(Acc),
    ok = py:release(Acc),
    {error, {stale_ref, _}} = py:call_method(Acc, add, []),
    {error, {stale_ref, _}} = py:call('__main__', total_of, [Acc]),
    {error, {stale_ref, _}} = py:eval(<<"a">>, #{a => Acc}, opts()),
    {error, {stale_ref, _}} = py:stream(Acc, upto, [3]),
    %% anywhere in the arguments: a map's key, deep down (it reached user code as a Stale
    %% marker there)
    {error, {stale_ref, _}} = py:eval(<<"m">>, #{m => #{Acc => 1}}, opts()),
    Deep = lists:foldl(fun(_, V) -> [V] end, Acc, lists:seq(1, 150)),
    {error, {stale_ref, _}} = py:eval(<<"m">>, #{m => Deep}, opts()),
    %% the object is let go on a thread of its own: its finalizer runs soon after
    ok = erlpy_test:wait_until(fun() -> {ok, [<<"r">>]} =:= py:eval(<<"released">>, #{}, opts()) end),
    {ok, 0} = py:call('__main__', live, [], #{}, opts()).

owner_death_releases(_Config) ->
    erlpy_test:doc("When the process that made a handle dies, the object is released: "
                   "its weakref.finalize runs in Python."),
    Self = self(),
    {Pid, Mon} = spawn_monitor(fun() ->
        {ok, Acc} = new_acc(<<"owned">>),
        {ok, 1} = py:call_method(Acc, add, []),
        Self ! {handle, Acc},
        receive stop -> ok end
    end),
    Acc = receive {handle, A} -> A after 10000 -> error(no_handle) end,
    {ok, 1} = py:call('__main__', total_of, [Acc]),
    {ok, []} = py:eval(<<"released">>, #{}, opts()),
    Pid ! stop,
    receive {'DOWN', Mon, process, Pid, normal} -> ok end,
    erlpy_test:wait_until(fun() ->
        {ok, [<<"owned">>]} =:= py:eval(<<"released">>, #{}, opts())
    end),
    {error, {stale_ref, _}} = py:call_method(Acc, add, []),
    {ok, 0} = py:call('__main__', live, [], #{}, opts()).

owner_option(_Config) ->
    erlpy_test:doc("owner => Pid gives the handle to another process: it lives as long as "
                   "that process, not as long as the caller."),
    Owner = spawn(fun() -> receive stop -> ok end end),
    Self = self(),
    spawn(fun() ->
        Self ! {handle, py:call('__main__', 'Acc', [<<"o">>], #{},
                                #{pool => ?POOL, return => ref, owner => Owner})}
    end),
    {ok, Acc} = receive {handle, H} -> H after 10000 -> error(no_handle) end,
    timer:sleep(100),
    {ok, 1} = py:call_method(Acc, add, []),
    Mon = monitor(process, Owner),
    Owner ! stop,
    receive {'DOWN', Mon, process, Owner, _} -> ok end,
    erlpy_test:wait_until(fun() ->
        {ok, [<<"o">>]} =:= py:eval(<<"released">>, #{}, opts())
    end),
    {error, {bad_option, {owner, nopid}}} =
        py:call('__main__', 'Acc', [<<"x">>], #{}, #{pool => ?POOL, return => ref, owner => nopid}),
    {error, {bad_option, {return, refs}}} =
        py:call('__main__', 'Acc', [<<"x">>], #{}, #{pool => ?POOL, return => refs}).

python_killed_makes_stale(_Config) ->
    erlpy_test:doc("After the worker's Python is killed, the handle gives {error, {stale_ref, _}} "
                   "(never another object), and the pool serves on."),
    {ok, Acc} = new_acc(<<"k">>),
    {ok, 1} = py:call_method(Acc, add, []),
    [OsPid] = erlpy_test:os_pids(?POOL),
    os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    wait_replaced(OsPid),
    {ok, Acc2} = new_acc(<<"k2">>),
    {error, {stale_ref, _}} = py:call_method(Acc, add, []),
    {error, {stale_ref, _}} = py:call('__main__', total_of, [Acc]),
    {ok, 1} = py:call_method(Acc2, add, []),
    {ok, 4.0} = py:call(math, sqrt, [16], #{}, opts()),
    ok = py:release(Acc).

worker_killed_makes_stale(_Config) ->
    erlpy_test:doc("When the worker process itself is gone, its handles are stale."),
    {ok, Acc} = new_acc(<<"w">>),
    [#{pid := Worker}] = erlpy_test:workers(?POOL),
    exit(Worker, kill),
    erlpy_test:wait_until(fun() ->
        case erlpy_test:workers(?POOL) of
            [#{pid := New, state := ready}] -> New =/= Worker;
            _ -> false
        end
    end),
    {error, {stale_ref, _}} = py:call_method(Acc, add, []),
    {error, {stale_ref, _}} = py:call('__main__', total_of, [Acc]),
    ok = py:release(Acc).

max_refs_cap(_Config) ->
    erlpy_test:doc("A worker holds at most max_refs handles: one more is {error, {max_refs, N}}; "
                   "a release makes room."),
    Accs = [begin {ok, A} = new_acc(N), A end || N <- [<<"1">>, <<"2">>, <<"3">>]],
    {error, {max_refs, 3}} = new_acc(<<"4">>),
    {ok, 3} = py:call('__main__', live, [], #{}, opts()),
    ok = py:release(hd(Accs)),
    erlpy_test:wait_until(fun() -> {ok, 2} =:= py:call('__main__', live, [], #{}, opts()) end),
    {ok, _} = new_acc(<<"5">>),
    {error, {bad_option, {max_refs, 0}}} = py:start_pool(bad_refs, #{max_refs => 0}).

handles_of_two_workers_badarg(_Config) ->
    erlpy_test:doc("One request cannot carry handles of two workers: {error, {badarg, _}}."),
    %% The first worker tried depends on the caller: handles made by several processes.
    Self = self(),
    Accs = erlpy_test:pmap(fun(N) ->
        {ok, A} = py:call('__main__', 'Acc', [integer_to_binary(N)], #{},
                          #{pool => ?POOL, return => ref, owner => Self}),
        A
    end, lists:seq(1, 16)),
    Workers = lists:usort([element(3, A) || A <- Accs]),
    ct:log("workers: ~p", [Workers]),
    case Workers of
        [_, _] ->
            [A | _] = Accs,
            [B | _] = [X || X <- Accs, element(3, X) =/= element(3, A)],
            {error, {badarg, {handles_of_two_workers, _, _}}} =
                py:eval(<<"a.total + b.total">>, #{a => A, b => B}, opts()),
            %% Nothing was left behind for the next request to be routed by.
            undefined = get('$erlpy_handle_worker'),
            {ok, 0} = py:eval(<<"a.total + a.total">>, #{a => A}, opts());
        [_] ->
            {skip, all_on_one_worker}
    end.

timed_out_ref_call_keeps_nothing(_Config) ->
    erlpy_test:doc("A return => ref call that times out leaves no object behind."),
    {error, timeout} = py:eval(<<"__import__('time').sleep(0.3) or Acc('slow')">>, #{},
                               (opts())#{return => ref, timeout => 100}),
    {error, timeout} = py:call(time, sleep, [0.3], #{}, (opts())#{return => ref, timeout => 100}),
    timer:sleep(500),
    {ok, 0} = py:call('__main__', live, [], #{}, opts()).

ref_call_answered_as_its_caller_gives_up(_Config) ->
    erlpy_test:doc("return => ref calls whose timeout is about their duration, every handle "
                   "obtained released, the caller still alive: no object is left. One "
                   "answered just as its caller gave up was kept for the caller's lifetime "
                   "(a tenth of the timed-out calls), counting against max_refs"),
    P = erlpy_state_timing,
    {ok, _} = py:start_pool(P, #{size => 1}),
    try
        ok = py:exec(<<"import time\ndef mk():\n    time.sleep(0.002)\n    return object()\n"
                       "def live():\n    import erlpy._handles\n    return len(erlpy._handles.objects)\n">>,
                     #{pool => P}),
        Results = [py:call('__main__', mk, [], #{}, #{pool => P, return => ref, timeout => 1 + rand:uniform(3)})
                   || _ <- lists:seq(1, 600)],
        [ok = py:release(H) || {ok, H} <- Results],
        TimedOut = length([x || {error, timeout} <- Results]),
        ct:log("~b of ~b timed out", [TimedOut, length(Results)]),
        ?assert(TimedOut > 0),
        ?assertEqual([], [R || R <- Results, element(1, R) =/= ok, R =/= {error, timeout}]),
        ok = erlpy_test:wait_until(fun() -> py:call('__main__', live, [], #{}, #{pool => P}) =:= {ok, 0} end, 2000)
    after
        py:stop_pool(P)
    end.

handles_under_chaos(_Config) ->
    erlpy_test:doc("Clients make handles and use them while Pythons are killed: every answer "
                   "is right or an allowed error, and once the clients are gone no object is "
                   "left in any worker."),
    Deadline = erlang:monotonic_time(millisecond) + 6000,
    Self = self(),
    Clients = [spawn_link(fun() -> Self ! {self(), client(N, Deadline, 0, 0)} end)
               || N <- lists:seq(1, 6)],
    Killer = spawn_link(fun() -> killer(Deadline) end),
    Results = [receive {C, R} -> R after 60000 -> error({client_lost, C}) end || C <- Clients],
    ct:log("ok/errors per client: ~p", [Results]),
    stop_killer(Killer),
    [{Oks, _} | _] = Results,
    true = lists:sum([O || {O, _} <- Results]) > 0,
    _ = Oks,
    erlpy_test:wait_until(fun() -> live_everywhere() =:= 0 end).

client(N, Deadline, Oks, Errors) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true ->
            {Oks, Errors};
        false ->
            Name = integer_to_binary(N),
            Result =
                case new_acc(Name) of
                    {ok, Acc} ->
                        R = case {py:call_method(Acc, add, [N]), py:call('__main__', total_of, [Acc])} of
                                {{ok, N}, {ok, N}} -> ok;
                                {A, B} -> check_errors([A, B])
                            end,
                        %% Half are released, the other half are left to the client's death.
                        _ = rand:uniform(2) =:= 1 andalso py:release(Acc),
                        R;
                    Error ->
                        check_errors([Error])
                end,
            case Result of
                ok -> client(N, Deadline, Oks + 1, Errors);
                error -> client(N, Deadline, Oks, Errors + 1)
            end
    end.

check_errors(Results) ->
    lists:foreach(fun
        ({ok, _}) -> ok;
        ({error, {stale_ref, _}}) -> ok;
        ({error, {worker_exited, _}}) -> ok;
        ({error, {python_start_failed, _}}) -> ok;
        (Other) -> error({wrong_answer, Other})
    end, Results),
    error.

%% Kills a random Python every 300-800 ms until Deadline, or until told to stop: it stops
%% between two kills, so that no kill is still on its way once it has stopped.
killer(Deadline) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true ->
            ok;
        false ->
            receive
                stop -> ok
            after 300 + rand:uniform(500) ->
                case [P || P <- erlpy_test:os_pids(?POOL), is_integer(P)] of
                    [] -> ok;
                    Pids -> os:cmd("kill -9 " ++ integer_to_list(lists:nth(rand:uniform(length(Pids)), Pids)))
                end,
                killer(Deadline)
            end
    end.

sessions_do_not_see_each_other(_Config) ->
    erlpy_test:doc("Two sessions on one pool do not see each other's globals, and plain "
                   "calls see neither."),
    {ok, S1} = py:session_start(#{pool => ?POOL}),
    {ok, S2} = py:session_start(#{pool => ?POOL}),
    ok = py:exec(<<"x = 1">>, #{session => S1}),
    ok = py:exec(<<"x = 2\ny = 'two'">>, #{session => S2}),
    {ok, 1} = py:eval(<<"x">>, #{}, #{session => S1}),
    {ok, 2} = py:eval(<<"x">>, #{}, #{session => S2}),
    {error, {python, <<"NameError">>, _, _}} = py:eval(<<"y">>, #{}, #{session => S1}),
    [{error, {python, <<"NameError">>, _, _}} = py:eval(<<"x">>, #{}, opts()) || _ <- [1, 2, 3, 4]],
    %% A pool-wide exec is in __main__, not in the sessions.
    ok = py:exec(<<"z = 'main'">>, opts()),
    {error, {python, <<"NameError">>, _, _}} = py:eval(<<"z">>, #{}, #{session => S1}),
    {ok, 11} = py:eval(<<"x + n">>, #{n => 10}, #{session => S1}),
    ok = py:session_stop(S1),
    ok = py:session_stop(S2).

session_calls_and_streams(_Config) ->
    erlpy_test:doc("In a session, '__main__' functions are the session's (sync, async, "
                   "generators); other modules are the worker's; return => ref works."),
    {ok, S} = py:session_start(#{pool => ?POOL}),
    ok = py:exec(<<"seen = []\n"
                   "def note(x):\n    seen.append(x)\n    return len(seen)\n"
                   "async def anote(x):\n    return note(x)\n"
                   "def upto(n):\n    yield from range(n)\n">>, #{session => S}),
    {ok, 1} = py:call('__main__', note, [a], #{}, #{session => S}),
    {ok, 2} = py:call(<<"__main__">>, anote, [b], #{}, #{session => S}),
    {ok, [a, b]} = py:eval(<<"seen">>, #{}, #{session => S}),
    {ok, 3.0} = py:call(math, sqrt, [9], #{}, #{session => S}),
    {ok, [0, 1, 2]} = py:stream('__main__', upto, [3], #{}, #{session => S}),
    {ok, [0, 1]} = py:stream_eval(<<"upto(2)">>, #{}, #{session => S}),
    {ok, Ref} = py:stream_start('__main__', upto, [2], #{session => S}),
    {done, [0, 1]} = erlpy_test:collect(Ref),
    {ok, Seen} = py:eval(<<"seen">>, #{}, #{session => S, return => ref}),
    {ok, none} = py:call_method(Seen, append, [c]),
    {ok, [a, b, c]} = py:eval(<<"seen">>, #{}, [{session, S}]),
    {error, {python, <<"NameError">>, _, _}} = py:call('__main__', nope, [], #{}, #{session => S}),
    {error, {bad_option, {session, nope}}} = py:eval(<<"1">>, #{}, #{session => nope}),
    ok = py:session_stop(S).

stopped_session_is_ended(_Config) ->
    erlpy_test:doc("Every use of a stopped session is {error, session_ended}; stopping twice is fine."),
    {ok, S} = py:session_start(#{pool => ?POOL}),
    ok = py:exec(<<"x = 1">>, #{session => S}),
    ok = py:session_stop(S),
    ok = py:session_stop(S),
    {error, session_ended} = py:eval(<<"x">>, #{}, #{session => S}),
    {error, session_ended} = py:exec(<<"x = 2">>, #{session => S}),
    {error, session_ended} = py:call('__main__', f, [], #{}, #{session => S}),
    {error, session_ended} = py:stream_eval(<<"[x]">>, #{}, #{session => S}),
    {error, session_ended} = py:stream('__main__', f, [], #{}, #{session => S}),
    %% A stream starts at once, and ends as soon as Python sees the session is gone.
    {ok, Ref} = py:stream_start('__main__', f, [], #{session => S}),
    {{error, session_ended}, []} = erlpy_test:collect(Ref, 10000),
    %% Other modules too: they are the worker's, but the session has ended (they ran as
    %% plain calls).
    {error, session_ended} = py:call(math, sqrt, [4], #{}, #{session => S}),
    {error, session_ended} = py:stream(builtins, range, [3], #{}, #{session => S}),
    {error, session_ended} = py:call(builtins, list, [[1]], #{}, #{session => S, return => ref}),
    {ok, Ref2} = py:stream_start(builtins, range, [3], #{session => S}),
    {{error, session_ended}, []} = erlpy_test:collect(Ref2, 10000),
    {ok, 0} = py:call('__main__', live, [], #{}, opts()).

session_ends_with_owner(_Config) ->
    erlpy_test:doc("A session ends when its owner dies: its namespace is dropped in Python."),
    Self = self(),
    {Pid, Mon} = spawn_monitor(fun() ->
        {ok, S} = py:session_start(#{pool => ?POOL}),
        ok = py:exec(<<"import __main__\na = __main__.Acc('in-session')">>, #{session => S}),
        Self ! {session, S},
        receive stop -> ok end
    end),
    S = receive {session, X} -> X after 10000 -> error(no_session) end,
    {ok, 0} = py:eval(<<"a.total">>, #{}, #{session => S}),
    Pid ! stop,
    receive {'DOWN', Mon, process, Pid, normal} -> ok end,
    erlpy_test:wait_until(fun() ->
        {ok, [<<"in-session">>]} =:= py:eval(<<"released">>, #{}, opts())
    end),
    {error, session_ended} = py:eval(<<"a">>, #{}, #{session => S}).

session_ends_with_python(_Config) ->
    erlpy_test:doc("When the session's Python dies, the session has ended, for every later "
                   "use; the pool serves on and new sessions work."),
    {ok, S} = py:session_start(#{pool => ?POOL}),
    ok = py:exec(<<"x = 1">>, #{session => S}),
    [OsPid] = erlpy_test:os_pids(?POOL),
    {error, {worker_exited, _}} =
        py:eval(<<"__import__('os')._exit(3)">>, #{}, #{session => S}),
    wait_replaced(OsPid),
    {error, session_ended} = py:eval(<<"x">>, #{}, #{session => S}),
    {error, session_ended} = py:exec(<<"x = 2">>, #{session => S}),
    {ok, Ref} = py:stream_start('__main__', f, [], #{session => S}),
    {{error, session_ended}, []} = erlpy_test:collect(Ref, 10000),
    {ok, S2} = py:session_start(#{pool => ?POOL}),
    ok = py:exec(<<"x = 2">>, #{session => S2}),
    {ok, 2} = py:eval(<<"x">>, #{}, #{session => S2}),
    ok = py:session_stop(S2).

sessions_under_chaos(_Config) ->
    erlpy_test:doc("Clients keep a session each and use it while Pythons are killed: each "
                   "answer is right or the session has ended (then a new one starts); "
                   "once the clients are gone nothing is left in any worker."),
    Deadline = erlang:monotonic_time(millisecond) + 6000,
    Self = self(),
    Clients = [spawn_link(fun() -> Self ! {self(), session_client(N, Deadline, none, 0, 0)} end)
               || N <- lists:seq(1, 6)],
    Killer = spawn_link(fun() -> killer(Deadline) end),
    Results = [receive {C, R} -> R after 60000 -> error({client_lost, C}) end || C <- Clients],
    ct:log("ok/ended per client: ~p", [Results]),
    stop_killer(Killer),
    true = lists:sum([O || {O, _} <- Results]) > 0,
    erlpy_test:wait_until(fun() -> live_everywhere() =:= 0 end).

session_client(N, Deadline, Session, Oks, Ended) ->
    case erlang:monotonic_time(millisecond) > Deadline of
        true ->
            {Oks, Ended};
        false when Session =:= none ->
            case py:session_start(#{pool => ?POOL}) of
                {ok, S} ->
                    case py:exec(<<"n = 0">>, #{session => S}) of
                        ok -> session_client(N, Deadline, {S, 0}, Oks, Ended);
                        Error -> allowed(Error), session_client(N, Deadline, none, Oks, Ended + 1)
                    end;
                Error ->
                    allowed(Error),
                    session_client(N, Deadline, none, Oks, Ended)
            end;
        false ->
            {S, Count} = Session,
            Next = Count + 1,
            case py:eval(<<"globals().__setitem__('n', n + 1) or n">>, #{}, #{session => S}) of
                {ok, Next} ->
                    session_client(N, Deadline, {S, Next}, Oks + 1, Ended);
                {ok, Other} ->
                    error({wrong_count, Other, Next});
                Error ->
                    allowed(Error),
                    _ = rand:uniform(2) =:= 1 andalso py:session_stop(S),
                    session_client(N, Deadline, none, Oks, Ended + 1)
            end
    end.

allowed({error, session_ended}) -> ok;
allowed({error, {worker_exited, _}}) -> ok;
allowed({error, {python_start_failed, _}}) -> ok;
allowed(Other) -> error({wrong_answer, Other}).

%% The killer must not outlive its test: the next one starts a pool of the same name.
%% Stop the killer, then wait until every worker has a live Python again: one killed just
%% before may not have been noticed yet (its supervisor is still ending its tree).
stop_killer(Killer) ->
    Mon = monitor(process, Killer),
    Killer ! stop,
    receive {'DOWN', Mon, process, Killer, _} -> ok end,
    erlpy_test:wait_until(fun() ->
        lists:all(fun(#{state := S, os_pid := P}) -> S =:= ready andalso erlpy_test:os_pid_alive(P) end,
                  erlpy_test:workers(?POOL))
    end).

reload_serves_new_code_everywhere(Config) ->
    erlpy_test:doc("py:reload after editing a module's file serves the new code from every "
                   "worker, to code that imported the module before too; a Python started "
                   "later has it as well."),
    File = filename:join(?config(dir, Config), "reloaded.py"),
    ok = file:write_file(File, <<"def version():\n    return 1\n">>),
    each_worker(fun(P, I) ->
        {ok, 1} = eval_on(P, I, <<"(globals().__setitem__('reloaded', __import__('reloaded'))"
                                   " or reloaded.version())">>)
    end),
    ok = file:write_file(File, <<"def version():\n    return 2\n">>),
    ok = py:reload(reloaded, #{pool => ?POOL}),
    [{ok, 2}, {ok, 2}, {ok, 2}] = each_worker(fun(P, I) -> eval_on(P, I, <<"__import__('reloaded').version()">>) end),
    [{ok, 2}, {ok, 2}, {ok, 2}] = each_worker(fun(P, I) -> eval_on(P, I, <<"reloaded.version()">>) end),
    [{ok, 2}] = lists:usort(erlpy_test:pmap(fun(_) -> py:call(reloaded, version, [], #{}, opts()) end,
                                            lists:seq(1, 30))),
    [OsPid | _] = erlpy_test:os_pids(?POOL),
    os:cmd("kill -9 " ++ integer_to_list(OsPid)),
    erlpy_test:wait_until(fun() ->
        lists:all(fun(#{state := S, os_pid := O}) -> S =:= ready andalso O =/= OsPid end,
                  erlpy_test:workers(?POOL))
    end),
    [{ok, 2}, {ok, 2}, {ok, 2}] = each_worker(fun(P, I) -> eval_on(P, I, <<"__import__('reloaded').version()">>) end),
    ok = py:reload(<<"reloaded">>, [{pool, ?POOL}]).

failed_reload_keeps_old_code_everywhere(Config) ->
    erlpy_test:doc("A reload that fails on a worker returns the Python error, and every worker "
                   "keeps the old code."),
    File = filename:join(?config(dir, Config), "fragile.py"),
    ok = file:write_file(File, <<"def version():\n    return 1\n">>),
    [{ok, 1}, {ok, 1}, {ok, 1}] =
        each_worker(fun(P, I) -> eval_on(P, I, <<"__import__('fragile').version()">>) end),
    %% Fails on one worker only: the one whose Python has the marker.
    ok = file:write_file(File, <<"import builtins\n"
                                 "if getattr(builtins, 'fragile_marker', False):\n"
                                 "    raise RuntimeError('not here')\n"
                                 "def version():\n    return 2\n">>),
    [{P1, I1} | _] = each_worker(fun(P, I) -> {P, I} end),
    {ok, none} = eval_on(P1, I1, <<"setattr(__import__('builtins'), 'fragile_marker', True)">>),
    {error, {python, <<"RuntimeError">>, <<"not here">>, _}} = py:reload(fragile, #{pool => ?POOL}),
    [{ok, 1}, {ok, 1}, {ok, 1}] =
        each_worker(fun(P, I) -> eval_on(P, I, <<"__import__('fragile').version()">>) end),
    [{ok, 1}] = lists:usort(erlpy_test:pmap(fun(_) -> py:call(fragile, version, [], #{}, opts()) end,
                                            lists:seq(1, 30))),
    {error, {python, <<"SyntaxError">>, _, _}} =
        begin
            ok = file:write_file(File, <<"def version(:\n">>),
            py:reload(fragile, #{pool => ?POOL})
        end,
    {error, {python, <<"ModuleNotFoundError">>, _, _}} = py:reload(no_such_module, #{pool => ?POOL}),
    {error, {badarg, _}} = py:reload(42, #{pool => ?POOL}),
    {error, {no_pool, nopool}} = py:reload(json, #{pool => nopool}).

%% Wait until the pool's one worker runs a Python other than OsPid.
wait_replaced(OsPid) ->
    erlpy_test:wait_until(fun() ->
        case erlpy_test:os_pids(?POOL) of
            [New] when is_integer(New), New =/= OsPid -> true;
            _ -> false
        end
    end).

unhashable_handle_as_a_map_key(_) ->
    erlpy_test:doc("a handle to a list used as a map key is Python's TypeError, and the other "
                   "requests that came in the same frame are answered: Python dropped the "
                   "whole frame, so that request was never answered (timeout => infinity hung) "
                   "and other callers' requests with it timed out"),
    {ok, L} = py:eval(<<"[1, 2]">>, #{}, #{pool => ?POOL, return => ref}),
    ?assertMatch({error, {python, <<"TypeError">>, <<"unhashable type: 'list'">>, _}},
                 py:eval(<<"m">>, #{m => #{L => 1}}, #{pool => ?POOL, timeout => infinity})),
    Self = self(),
    Good = fun(I) ->
        spawn_link(fun() -> Self ! {good, I, py:eval(<<"i">>, #{i => I}, #{pool => ?POOL, timeout => 10000})} end)
    end,
    [Good(I) || I <- lists:seq(1, 100)],
    spawn_link(fun() -> Self ! {bad, py:eval(<<"m">>, #{m => #{L => 1}}, #{pool => ?POOL, timeout => 10000})} end),
    [Good(I) || I <- lists:seq(101, 200)],
    ?assertEqual([{ok, I} || I <- lists:seq(1, 200)],
                 [receive {good, I, R} -> R after 20000 -> no_answer end || I <- lists:seq(1, 200)]),
    ?assertMatch({error, {python, <<"TypeError">>, _, _}}, receive {bad, R} -> R after 20000 -> no_answer end),
    %% the handle itself is fine
    ?assertEqual({ok, 2}, py:eval(<<"len(x)">>, #{x => L}, #{pool => ?POOL})).

slow_del_at_release_blocks_nothing(_) ->
    erlpy_test:doc("an object whose __del__ takes seconds, released: requests go on meanwhile; "
                   "its __del__ ran on the loop thread, so an async request timed out, its "
                   "cancel went unread and the worker was killed at the end of cancel_grace"),
    ok = py:exec(<<"import time\nclass SlowDel:\n    def __del__(self):\n        time.sleep(3)\n">>,
                 #{pool => ?POOL}),
    {ok, H} = py:eval(<<"SlowDel()">>, #{}, #{pool => ?POOL, return => ref}),
    Restarts = erlpy_test:restarts(?POOL),
    ok = py:release(H),
    timer:sleep(100),
    ?assertEqual({ok, <<"async">>}, py:eval(<<"asyncio.sleep(0, 'async')">>, #{}, #{pool => ?POOL, timeout => 1000})),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, #{pool => ?POOL, timeout => 1000})),
    timer:sleep(3500),
    ?assertEqual(Restarts, erlpy_test:restarts(?POOL)).

unhashable_handle_key_in_a_reply_or_an_input(_) ->
    erlpy_test:doc("a registered function's reply, or a stream's input, that Python cannot "
                   "decode: the awaiting acall raises (it hung when the main thread read the "
                   "reply during a sync call), and the stream ends with the error (the item was "
                   "dropped, the stream went on)"),
    {ok, L} = py:eval(<<"[1, 2]">>, #{}, #{pool => ?POOL, return => ref}),
    ok = py:register_function(undecodable_reply, fun(_) -> timer:sleep(300), #{L => 1} end),
    ok = py:exec(<<"async def acalls():\n"
                   "    try:\n"
                   "        return await erlang.acall('undecodable_reply')\n"
                   "    except erlang.ErlangError:\n"
                   "        return 'raised'\n"
                   "async def echo(inp):\n"
                   "    async for x in inp:\n"
                   "        yield x\n">>, #{pool => ?POOL}),
    Self = self(),
    spawn_link(fun() -> Self ! {acall, py:call('__main__', acalls, [], #{}, #{pool => ?POOL, timeout => infinity})} end),
    timer:sleep(100),
    {ok, 2} = py:eval(<<"1 + 1">>, #{}, #{pool => ?POOL}),  % the main thread reads the pipe now
    ?assertEqual({ok, <<"raised">>}, receive {acall, R} -> R after 10000 -> no_answer end),
    ok = py:unregister_function(undecodable_reply),
    {ok, S} = py:stream_start('__main__', echo, [], #{pool => ?POOL, input => true}),
    ok = py:stream_send(S, #{L => 1}),
    ok = py:stream_send(S, 3),
    ?assertMatch({{error, {python, <<"TypeError">>, _, _}}, _}, erlpy_test:collect(S, 10000)),
    ?assertEqual({ok, 2}, py:eval(<<"len(x)">>, #{x => L}, #{pool => ?POOL})).


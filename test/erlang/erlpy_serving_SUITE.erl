%% Serving features (docs/serving.md): erlpy.batched functions, whose calls from many
%% callers are gathered into batches (on one worker of the pool while it keeps up), and
%% the caller's deadline inside Python (erlpy.time_left(), erlpy.deadline()).
%%
%% Real workers over real ports. No test asserts a timing from above: a test that needs
%% callers to be waiting waits for them (in-flight counts), and a batch that must not end
%% before the test says so waits for a release file.
-module(erlpy_serving_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(POOL, serving).
-define(MOD, serving_mod).

all() ->
    [
        {group, batching},
        {group, deadlines}
    ].

groups() ->
    [
        {batching, [], [
            batches_form_across_callers_on_one_worker,
            overflow_spills_to_a_second_worker,
            raised_exception_reaches_every_caller_of_the_batch,
            returned_exception_reaches_its_caller_only,
            wrong_number_of_results_is_every_callers_error,
            results_that_are_not_a_list_are_every_callers_error,
            call_with_other_than_one_item_is_refused,
            timed_out_caller_leaves_the_queue,
            timed_out_caller_in_a_running_batch_leaves_the_others_alone,
            dead_caller_in_a_running_batch_leaves_the_others_alone,
            batch_with_no_caller_left_is_interrupted,
            lone_caller_waits_max_wait_then_runs,
            async_batched_function,
            async_batch_with_no_caller_left_is_cancelled,
            batched_function_called_from_python_is_a_batch_of_one
        ]},
        {deadlines, [], [
            time_left_in_sync_code,
            time_left_is_none_for_infinity,
            time_left_in_async_code,
            time_left_in_sync_generator,
            time_left_in_async_generator,
            time_left_in_threads,
            time_left_in_eval_and_exec,
            deadline_is_monotonic_plus_time_left,
            stream_start_has_no_deadline,
            time_left_in_a_batch_is_its_latest_callers
        ]}
    ].

suite() ->
    [{timetrap, {minutes, 2}}].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    Dir = filename:join(?config(priv_dir, Config), "python"),
    ok = filelib:ensure_path(Dir),
    ok = file:write_file(filename:join(Dir, atom_to_list(?MOD) ++ ".py"), module()),
    [{dir, Dir} | Config].

end_per_suite(_Config) ->
    ok.

init_per_group(_, Config) ->
    Config.

end_per_group(_, _) ->
    ok.

init_per_testcase(Case, Config) ->
    Size = case Case of
               batches_form_across_callers_on_one_worker -> 2;
               overflow_spills_to_a_second_worker -> 2;
               _ -> 1
           end,
    Release = filename:join(?config(priv_dir, Config), atom_to_list(Case) ++ ".release"),
    _ = file:delete(Release),
    %% A short cancel_grace: a batch that kept a cancelled caller unanswered would get its
    %% Python killed, which the tests would see.
    {ok, _} = py:start_pool(?POOL, #{size => Size, path => [?config(dir, Config)],
                                     cancel_grace => 300,
                                     env => [{"SERVING_RELEASE", Release}]}),
    [{release, Release} | Config].

end_per_testcase(_Case, Config) ->
    _ = file:write_file(?config(release, Config), <<>>),
    _ = py:stop_pool(?POOL),
    _ = erlpy_test:flush(),
    ok.

%%====================================================================
%% The Python module
%%====================================================================

module() ->
    <<"import asyncio, contextvars, os, threading, time\n"
      "from concurrent.futures import ThreadPoolExecutor\n"
      "import erlpy\n"
      "\n"
      "INTERRUPTED = []\n"
      "\n"
      "def released():\n"
      "    return os.path.exists(os.environ['SERVING_RELEASE'])\n"
      "\n"
      "def wait_release():\n"
      "    end = time.monotonic() + 60\n"
      "    while not released() and time.monotonic() < end:\n"
      "        time.sleep(0.005)\n"
      "\n"
      "@erlpy.batched(max_size=16, max_wait=1.0)\n"
      "def double(items):\n"
      "    time.sleep(0.02)\n"
      "    return [(x * 2, len(items), os.getpid()) for x in items]\n"
      "\n"
      "@erlpy.batched(max_size=4, max_wait=0.05)\n"
      "def held(items):\n"
      "    if items != ['warm']:\n"
      "        wait_release()\n"
      "    return [(x, len(items), os.getpid()) for x in items]\n"
      "\n"
      "@erlpy.batched(max_size=5, max_wait=30)\n"
      "def fails(items):\n"
      "    raise ValueError(f'batch of {len(items)}')\n"
      "\n"
      "@erlpy.batched(max_size=4, max_wait=30)\n"
      "def upper(items):\n"
      "    return [ValueError(f'bad item {x}') if x == 'bad' else x.upper() for x in items]\n"
      "\n"
      "@erlpy.batched(max_size=3, max_wait=30)\n"
      "def short(items):\n"
      "    return items[1:]\n"
      "\n"
      "def _raising(items):\n"
      "    yield items[0]\n"
      "    raise ValueError('half way')\n"
      "\n"
      "@erlpy.batched(max_size=3, max_wait=30)\n"
      "def gen_results(items):\n"
      "    return _raising(items)\n"
      "\n"
      "@erlpy.batched(max_size=3, max_wait=30)\n"
      "async def agen_results(items):\n"
      "    return _raising(items)\n"
      "\n"
      "@erlpy.batched(max_size=3, max_wait=30)\n"
      "def text_results(items):\n"
      "    return 'xyz'\n"
      "\n"
      "@erlpy.batched(max_size=3, max_wait=30)\n"
      "def set_results(items):\n"
      "    return set(items)\n"
      "\n"
      "@erlpy.batched(max_size=3, max_wait=30)\n"
      "def members(items):\n"
      "    return [sorted(items)] * len(items)\n"
      "\n"
      "@erlpy.batched(max_size=3, max_wait=30)\n"
      "def held_members(items):\n"
      "    wait_release()\n"
      "    return [sorted(items)] * len(items)\n"
      "\n"
      "@erlpy.batched(max_size=2, max_wait=30)\n"
      "def stuck(items):\n"
      "    try:\n"
      "        wait_release()\n"
      "    except erlpy.Interrupted:\n"
      "        INTERRUPTED.append(sorted(items))\n"
      "        raise\n"
      "    return items\n"
      "\n"
      "def interrupted():\n"
      "    return INTERRUPTED\n"
      "\n"
      "@erlpy.batched(max_size=16, max_wait=0.3)\n"
      "def lone(items):\n"
      "    return [len(items)] * len(items)\n"
      "\n"
      "@erlpy.batched(max_size=6, max_wait=30)\n"
      "async def adouble(items):\n"
      "    await asyncio.sleep(0.01)\n"
      "    return [(x * 2, len(items)) for x in items]\n"
      "\n"
      "CANCELLED = []\n"
      "\n"
      "@erlpy.batched(max_size=2, max_wait=30)\n"
      "async def astuck(items):\n"
      "    try:\n"
      "        await asyncio.sleep(60)\n"
      "    except asyncio.CancelledError:\n"
      "        CANCELLED.append(sorted(items))\n"
      "        raise\n"
      "    return items\n"
      "\n"
      "def cancelled():\n"
      "    return CANCELLED\n"
      "\n"
      "@erlpy.batched(max_size=2, max_wait=30)\n"
      "def batch_left(items):\n"
      "    return [erlpy.time_left()] * len(items)\n"
      "\n"
      "def direct(x):\n"
      "    return [double(x)[0], lone(x)]\n"
      "\n"
      "async def adirect(x):\n"
      "    return await adouble(x)\n"
      "\n"
      "def left():\n"
      "    return erlpy.time_left()\n"
      "\n"
      "async def aleft():\n"
      "    await asyncio.sleep(0)\n"
      "    return erlpy.time_left()\n"
      "\n"
      "def gen_left(n):\n"
      "    for _ in range(n):\n"
      "        yield erlpy.time_left()\n"
      "\n"
      "async def agen_left(n):\n"
      "    for _ in range(n):\n"
      "        await asyncio.sleep(0)\n"
      "        yield erlpy.time_left()\n"
      "\n"
      "async def to_thread_left():\n"
      "    return await asyncio.to_thread(erlpy.time_left)\n"
      "\n"
      "def threads_left():\n"
      "    found = {}\n"
      "    ctx = contextvars.copy_context()\n"
      "    t = threading.Thread(target=ctx.run, args=(lambda: found.update(ctx=erlpy.time_left()),))\n"
      "    t.start(); t.join()\n"
      "    with ThreadPoolExecutor(1) as pool:\n"
      "        found['pool'] = pool.submit(contextvars.copy_context().run, erlpy.time_left).result()\n"
      "    return [found['ctx'], found['pool']]\n"
      "\n"
      "def deadline_now():\n"
      "    return [erlpy.deadline(), time.monotonic() + erlpy.time_left(), time.monotonic()]\n">>.

%%====================================================================
%% Batching
%%====================================================================

batches_form_across_callers_on_one_worker(_Config) ->
    erlpy_test:doc("calls of 24 callers meet in one worker of a pool of 2 and form batches "
                   "of up to 16; each caller gets its own result"),
    {ok, {2, 1, _}} = call(double, [1]),
    wait_batched(double),
    Results = erlpy_test:pmap(fun(X) -> call(double, [X]) end, lists:seq(1, 24)),
    ?assertEqual([{ok, X * 2} || X <- lists:seq(1, 24)], [{ok, D} || {ok, {D, _, _}} <- Results]),
    Sizes = [S || {ok, {_, S, _}} <- Results],
    ?assert(lists:max(Sizes) > 1),
    ?assert(lists:max(Sizes) =< 16),
    %% All on the function's home worker (24 < 2 x 16 in flight).
    ?assertMatch([_], lists:usort([P || {ok, {_, _, P}} <- Results])),
    ct:log("batch sizes seen: ~p", [lists:usort(Sizes)]).

overflow_spills_to_a_second_worker(Config) ->
    erlpy_test:doc("beyond 2 x max_size calls in flight on the home worker, calls go to the "
                   "other worker, which batches them too; each caller gets its own result"),
    {ok, {<<"warm">>, 1, _}} = call(held, [<<"warm">>]),
    wait_batched(held),
    Self = self(),
    N = 20,
    [spawn_link(fun() -> Self ! {X, call(held, [X])} end) || X <- lists:seq(1, N)],
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(?POOL) =:= N end, 30000),
    ok = file:write_file(?config(release, Config), <<>>),
    Results = [receive {X, R} -> R after 30000 -> error({no_answer, X}) end || X <- lists:seq(1, N)],
    ?assertEqual(lists:seq(1, N), [X || {ok, {X, _, _}} <- Results]),
    ?assert(lists:all(fun({ok, {_, S, _}}) -> S =< 4 end, Results)),
    ?assert(lists:max([S || {ok, {_, S, _}} <- Results]) > 1),
    Pids = [P || {ok, {_, _, P}} <- Results],
    ?assertEqual(lists:sort(erlpy_test:os_pids(?POOL)), lists:usort(Pids)),
    %% The home worker took its 2 x max_size before any call went elsewhere; then the
    %% least busy of the two took each call.
    [_, HomeCount] = lists:sort([length([P || P <- Pids, P =:= O]) || O <- lists:usort(Pids)]),
    ?assert(HomeCount >= 8).

raised_exception_reaches_every_caller_of_the_batch(_Config) ->
    erlpy_test:doc("an exception the function raises goes to every caller of the batch"),
    Results = erlpy_test:pmap(fun(X) -> call(fails, [X]) end, lists:seq(1, 5)),
    [?assertMatch({error, {python, <<"ValueError">>, <<"batch of 5">>, _}}, R) || R <- Results],
    {error, {python, _, _, Traceback}} = hd(Results),
    ?assertNotEqual(nomatch, binary:match(Traceback, <<"in fails">>)),
    ?assertEqual(nomatch, binary:match(Traceback, <<"_batch.py">>)).

returned_exception_reaches_its_caller_only(_Config) ->
    erlpy_test:doc("an exception instance in the returned list is that item's caller's "
                   "error, as a normal Python error; the others get their results"),
    Items = [<<"a">>, <<"bad">>, <<"c">>, <<"d">>],
    Results = erlpy_test:pmap(fun(X) -> call(upper, [X]) end, Items),
    ?assertMatch([{ok, <<"A">>}, {error, {python, <<"ValueError">>, <<"bad item bad">>, _}},
                  {ok, <<"C">>}, {ok, <<"D">>}], Results).

wrong_number_of_results_is_every_callers_error(_Config) ->
    erlpy_test:doc("a batch that returns fewer results than items fails every caller"),
    Results = erlpy_test:pmap(fun(X) -> call(short, [X]) end, [1, 2, 3]),
    [?assertMatch({error, {python, <<"TypeError">>, _, _}}, R) || R <- Results],
    {error, {python, _, Message, _}} = hd(Results),
    ?assertNotEqual(nomatch, binary:match(Message, <<"2 results for 3 items">>)).

results_that_are_not_a_list_are_every_callers_error(_Config) ->
    erlpy_test:doc("a batch that returns no list is every caller's TypeError, the worker "
                   "serving on: a generator that raised half way killed the worker's Python "
                   "(and an async function's callers got cancelled); a str, dict or set was "
                   "handed out item by item, a set's in any order"),
    Handle = {ok, _} = py:eval(<<"[1]">>, #{}, #{pool => ?POOL, return => ref}),
    [begin
         Results = erlpy_test:pmap(fun(X) -> call(F, [X]) end, [1, 2, 3]),
         [?assertMatch({error, {python, <<"TypeError">>, <<"an erlpy.batched function must return a list", _/binary>>, _}}, R)
          || R <- Results]
     end || F <- [gen_results, agen_results, text_results, set_results]],
    ?assertEqual(0, erlpy_test:restarts(?POOL)),
    {ok, Ref} = Handle,
    ?assertEqual({ok, 1}, py:eval(<<"len(h)">>, #{h => Ref}, #{pool => ?POOL})).

call_with_other_than_one_item_is_refused(_Config) ->
    erlpy_test:doc("a batched function takes one item per call: other calls are a TypeError"),
    ?assertMatch({error, {python, <<"TypeError">>, _, _}}, call(lone, [1, 2])),
    ?assertMatch({error, {python, <<"TypeError">>, _, _}}, call(lone, [])),
    ?assertMatch({error, {python, <<"TypeError">>, _, _}}, call(lone, [1], #{k => 1}, 30000)),
    ?assertEqual({ok, 1}, call(lone, [1])).

timed_out_caller_leaves_the_queue(_Config) ->
    erlpy_test:doc("a caller that times out before its batch starts is dropped from it; the "
                   "batch forms from the others"),
    ?assertEqual({error, timeout}, call(members, [0], #{}, 200)),
    Results = erlpy_test:pmap(fun(X) -> call(members, [X]) end, [1, 2, 3]),
    ?assertEqual([{ok, [1, 2, 3]} || _ <- [1, 2, 3]], Results),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(?POOL) =:= 0 end),
    ?assertEqual(0, erlpy_test:restarts(?POOL)).

timed_out_caller_in_a_running_batch_leaves_the_others_alone(Config) ->
    erlpy_test:doc("a caller that times out once its batch runs gets {error, timeout} at "
                   "once; the batch goes on and the others get their results"),
    [OsPid] = erlpy_test:os_pids(?POOL),
    Self = self(),
    [spawn_link(fun() -> Self ! {X, call(held_members, [X])} end) || X <- [1, 2]],
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(?POOL) =:= 2 end),
    ?assertEqual({error, timeout}, call(held_members, [3], #{}, 500)),
    %% Longer than cancel_grace (300 ms): a cancel left unanswered would kill Python.
    timer:sleep(1000),
    ok = file:write_file(?config(release, Config), <<>>),
    [?assertEqual({ok, [1, 2, 3]}, receive {X, R} -> R after 30000 -> no_answer end) || X <- [1, 2]],
    ?assertEqual([OsPid], erlpy_test:os_pids(?POOL)),
    ?assertEqual(0, erlpy_test:restarts(?POOL)).

dead_caller_in_a_running_batch_leaves_the_others_alone(Config) ->
    erlpy_test:doc("a caller that dies while its batch runs does not disturb the others"),
    Self = self(),
    Callers = [spawn(fun() -> Self ! {X, call(held_members, [X])} end) || X <- [1, 2, 3]],
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(?POOL) =:= 3 end),
    exit(hd(Callers), kill),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight(?POOL) =:= 2 end),
    ok = file:write_file(?config(release, Config), <<>>),
    [?assertEqual({ok, [1, 2, 3]}, receive {X, R} -> R after 30000 -> no_answer end) || X <- [2, 3]],
    ?assertEqual(0, erlpy_test:restarts(?POOL)).

batch_with_no_caller_left_is_interrupted(_Config) ->
    erlpy_test:doc("a running sync batch whose callers have all timed out is interrupted; "
                   "the worker goes on"),
    [OsPid] = erlpy_test:os_pids(?POOL),
    Results = erlpy_test:pmap(fun(X) -> call(stuck, [X], #{}, 500) end, [1, 2]),
    ?assertEqual([{error, timeout}, {error, timeout}], Results),
    ok = erlpy_test:wait_until(fun() -> call(interrupted, []) =:= {ok, [[1, 2]]} end),
    ?assertEqual([OsPid], erlpy_test:os_pids(?POOL)),
    ?assertEqual(0, erlpy_test:restarts(?POOL)).

lone_caller_waits_max_wait_then_runs(_Config) ->
    erlpy_test:doc("a lone caller's batch of one runs once max_wait (0.3 s) has passed"),
    T0 = erlang:monotonic_time(millisecond),
    ?assertEqual({ok, 1}, call(lone, [1])),
    Elapsed = erlang:monotonic_time(millisecond) - T0,
    ct:log("a lone call took ~b ms", [Elapsed]),
    %% A bound from below only: it cannot be faster than max_wait.
    ?assert(Elapsed >= 290).

async_batched_function(_Config) ->
    erlpy_test:doc("an async def batched function: one task per batch, each caller its result"),
    Results = erlpy_test:pmap(fun(X) -> call(adouble, [X]) end, lists:seq(1, 6)),
    ?assertEqual([{ok, {X * 2, 6}} || X <- lists:seq(1, 6)], Results).

async_batch_with_no_caller_left_is_cancelled(_Config) ->
    erlpy_test:doc("a running async batch whose callers have all timed out is cancelled"),
    Results = erlpy_test:pmap(fun(X) -> call(astuck, [X], #{}, 300) end, [1, 2]),
    ?assertEqual([{error, timeout}, {error, timeout}], Results),
    ok = erlpy_test:wait_until(fun() -> call(cancelled, []) =:= {ok, [[1, 2]]} end),
    ?assertEqual(0, erlpy_test:restarts(?POOL)).

batched_function_called_from_python_is_a_batch_of_one(_Config) ->
    erlpy_test:doc("Python code calling a batched function with one item gets its result"),
    ?assertEqual({ok, [42, 1]}, call(direct, [21])),
    ?assertEqual({ok, {42, 1}}, call(adirect, [21])).

%%====================================================================
%% Deadlines
%%====================================================================

time_left_in_sync_code(_Config) ->
    erlpy_test:doc("erlpy.time_left() in sync code: the seconds left of the caller's timeout"),
    {ok, Short} = call(left, [], #{}, 5000),
    ?assert(Short > 0 andalso Short =< 5.0),
    {ok, Long} = call(left, [], #{}, 60000),
    ?assert(Long > 5.0 andalso Long =< 60.0),
    {ok, Default} = call(left, []),
    ?assert(Default > 5.0 andalso Default =< 30.0).

time_left_is_none_for_infinity(_Config) ->
    erlpy_test:doc("erlpy.time_left() and erlpy.deadline() are None for timeout infinity"),
    ?assertEqual({ok, none}, call(left, [], #{}, infinity)),
    ?assertEqual({ok, none}, call(aleft, [], #{}, infinity)),
    ?assertEqual({ok, none}, py:eval(<<"__import__('erlpy').deadline()">>, #{}, #{pool => ?POOL, timeout => infinity})).

time_left_in_async_code(_Config) ->
    erlpy_test:doc("erlpy.time_left() in an async function, after an await"),
    {ok, L} = call(aleft, [], #{}, 5000),
    ?assert(L > 0 andalso L =< 5.0).

time_left_in_sync_generator(_Config) ->
    erlpy_test:doc("erlpy.time_left() inside a sync generator collected with py:stream"),
    {ok, Ls} = py:stream(?MOD, gen_left, [3], #{}, #{pool => ?POOL, timeout => 5000}),
    ?assertMatch([_, _, _], Ls),
    ?assert(lists:all(fun(L) -> L > 0 andalso L =< 5.0 end, Ls)).

time_left_in_async_generator(_Config) ->
    erlpy_test:doc("erlpy.time_left() inside an async generator collected with py:stream"),
    {ok, Ls} = py:stream(?MOD, agen_left, [3], #{}, #{pool => ?POOL, timeout => 5000}),
    ?assertMatch([_, _, _], Ls),
    ?assert(lists:all(fun(L) -> L > 0 andalso L =< 5.0 end, Ls)).

time_left_in_threads(_Config) ->
    erlpy_test:doc("asyncio.to_thread and contextvars.copy_context().run carry the deadline "
                   "into other threads"),
    {ok, L} = call(to_thread_left, [], #{}, 5000),
    ?assert(L > 0 andalso L =< 5.0),
    {ok, [Ctx, Pool]} = call(threads_left, [], #{}, 5000),
    ?assert(Ctx > 0 andalso Ctx =< 5.0),
    ?assert(Pool > 0 andalso Pool =< 5.0).

time_left_in_eval_and_exec(_Config) ->
    erlpy_test:doc("py:eval and py:stream_eval code sees its caller's deadline"),
    {ok, L} = py:eval(<<"__import__('erlpy').time_left()">>, #{}, #{pool => ?POOL, timeout => 5000}),
    ?assert(L > 0 andalso L =< 5.0),
    {ok, [L2]} = py:stream_eval(<<"(__import__('erlpy').time_left() for _ in [1])">>, #{},
                                #{timeout => 5000}),
    ?assert(L2 > 0 andalso L2 =< 5.0),
    ok = py:exec(<<"import erlpy\nexec_left = erlpy.time_left()">>, #{pool => ?POOL, timeout => 5000}),
    {ok, L3} = py:eval(<<"exec_left">>, #{}, #{pool => ?POOL}),
    ?assert(L3 > 0 andalso L3 =< 5.0).

deadline_is_monotonic_plus_time_left(_Config) ->
    erlpy_test:doc("erlpy.deadline() is time.monotonic() + erlpy.time_left(), at most the "
                   "timeout ahead"),
    {ok, [Deadline, Sum, Now]} = call(deadline_now, [], #{}, 5000),
    ?assert(abs(Deadline - Sum) < 0.05),
    ?assert(Deadline > Now andalso Deadline - Now =< 5.0).

stream_start_has_no_deadline(_Config) ->
    erlpy_test:doc("a stream started with stream_start has no deadline (its timeout is for "
                   "starting only): erlpy.time_left() is None"),
    {ok, Ref} = py:stream_start(?MOD, gen_left, [2], #{pool => ?POOL, timeout => 5000}),
    ?assertEqual({done, [none, none]}, erlpy_test:collect(Ref)),
    {ok, ARef} = py:stream_start(?MOD, agen_left, [2], #{pool => ?POOL, timeout => 5000}),
    ?assertEqual({done, [none, none]}, erlpy_test:collect(ARef)).

time_left_in_a_batch_is_its_latest_callers(_Config) ->
    erlpy_test:doc("a batch's code sees the latest deadline of its callers; None if one has "
                   "none"),
    [{ok, A}, {ok, B}] = erlpy_test:pmap(fun(T) -> call(batch_left, [T], #{}, T) end,
                                         [5000, 60000]),
    ?assertEqual(A, B),
    ?assert(A > 5.0 andalso A =< 60.0),
    ?assertEqual([{ok, none}, {ok, none}],
                 erlpy_test:pmap(fun(T) -> call(batch_left, [T], #{}, T) end,
                                 [5000, infinity])).

%%====================================================================
%% Helpers
%%====================================================================

%% The pool knows Fun is batched (its first call told it).
wait_batched(Fun) ->
    Key = {atom_to_binary(?MOD), atom_to_binary(Fun)},
    ok = erlpy_test:wait_until(fun() ->
        #{batched := Batched} = py:info(?POOL),
        is_map_key(Key, Batched)
    end).

call(Function, Args) ->
    py:call(?MOD, Function, Args, #{}, #{pool => ?POOL}).

call(Function, Args, Kwargs, Timeout) ->
    py:call(?MOD, Function, Args, Kwargs, #{pool => ?POOL, timeout => Timeout}).

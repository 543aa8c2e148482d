%% Pools: exec on every worker (also after restarts), starting and stopping pools, child
%% specs in a user's own supervision tree, pools from the application env, pool options
%% (env, cd, path, init, none_atom), start failures, and Python processes never
%% outliving their pool or the VM.
-module(erlpy_pool_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

all() ->
    [
        exec_on_every_worker_of_4,
        start_stop_pool_kills_python,
        start_pool_already_started,
        child_spec_map_own_supervisor,
        nomsgpack_start_failed_detail,
        max_memory_below_use_fails_start,
        nomsgpack_error_shape,
        bad_option_error_shape,
        python_not_found_detail,
        init_failure_fails_start,
        pool_options_env_cd_path_init,
        none_atom_option,
        info_pool_shape,
        pools_from_app_env,
        app_defaults_every_pool,
        app_defaults_checked,
        unknown_app_env_warned,
        path_and_cd_forms,
        pool_sup_killed_python_gone,
        vm_killed_python_gone,
        poll_us_option,
        idle_polling_pool_costs_no_cpu,
     {group, regressions}].

groups() ->
    %% Run by all/0: product bugs these tests found, all fixed since; each case's doc names the bug.
    [{regressions, [], [
        start_pool_proplist_options,
        child_spec_proplist_own_supervisor,
        no_pool_after_stop_pool,
        no_pool_after_failed_start,
        bad_option_types_are_bad_option,
        init_list_of_strings,
        exec_while_the_pool_stops,
        slow_start_holds_no_other_pool,
        failed_start_of_a_killed_caller,
        nomsgpack_system_python_advice
    ]}].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(erlpy).

init_per_testcase(Case, Config) when Case =:= nomsgpack_start_failed_detail;
                                     Case =:= nomsgpack_error_shape ->
    Dir = "/tmp/erlpy_nomsgpack_" ++ integer_to_list(erlang:unique_integer([positive])),
    Out = os:cmd("python3 -m venv --without-pip " ++ Dir ++ " 2>&1; echo rc=$?"),
    ct:log("venv: ~ts", [Out]),
    Python = filename:join([Dir, "bin", "python"]),
    true = filelib:is_regular(Python),
    %% make sure this interpreter really lacks msgpack
    Check = os:cmd(Python ++ " -c 'import msgpack' >/dev/null 2>&1; echo $?"),
    ?assertNotEqual("0\n", Check),
    [{venv, Dir}, {venv_python, Python} | Config];
init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(Case, Config) ->
    [py:stop_pool(P) || P <- [Case, mypool, mypool2, nomsgpack, app_env_extra]],
    case ?config(venv, Config) of
        undefined -> ok;
        Dir -> os:cmd("rm -rf " ++ Dir)
    end,
    ok.

max_memory_below_use_fails_start(_) ->
    erlpy_test:doc("max_memory below what Python already uses: the pool does not start, "
                   "and the error says so"),
    Result = py:start_pool(max_memory_below_use_fails_start, #{size => 1, max_memory => 1 bsl 20}),
    ?assertMatch({error, {python_start_failed, {setup, {python, <<"MemoryError">>, _, _}}}}, Result),
    {error, {_, {setup, {python, _, Message, _}}}} = Result,
    ?assertMatch({match, _}, re:run(Message, "already uses")),
    ?assertEqual({error, {no_pool, max_memory_below_use_fails_start, element(2, Result)}},
                 py:eval(<<"1">>, #{}, #{pool => max_memory_below_use_fails_start})).


%% supervisor callback, for pools in the test's own supervision tree
init(Specs) ->
    {ok, {#{strategy => one_for_one, intensity => 5, period => 10}, Specs}}.

%%====================================================================
%% exec on every worker
%%====================================================================

exec_on_every_worker_of_4(_) ->
    erlpy_test:doc("an exec'd function answers from all 4 workers, also after a restart"),
    P = exec_on_every_worker_of_4,
    {ok, _} = py:start_pool(P, #{size => 4}),
    ok = py:exec(<<"import os, time\ndef whoami(tag):\n    time.sleep(0.2)\n"
                   "    return (tag, os.getpid())\n">>, #{pool => P}),
    Before = erlpy_test:os_pids(P),
    ?assertEqual(4, length(lists:usort(Before))),
    ?assertEqual(lists:sort(Before), answering_pids(P)),
    %% kill one Python; the worker restarts it and replays the exec log
    [Victim | _] = Before,
    os:cmd("kill -9 " ++ integer_to_list(Victim)),
    ok = erlpy_test:wait_until(fun() ->
        Ws = erlpy_test:workers(P),
        lists:all(fun(#{state := S}) -> S =:= ready end, Ws) andalso
            not lists:member(Victim, [O || #{os_pid := O} <- Ws]) andalso
            lists:sum([R || #{restarts := R} <- Ws]) =:= 1
    end),
    ?assertNot(erlpy_test:os_pid_alive(Victim)),
    After = erlpy_test:os_pids(P),
    ?assertEqual(3, length(Before -- (Before -- After))),
    ?assertEqual(lists:sort(After), answering_pids(P)).

%% Many concurrent calls of whoami: the set of OS pids that answered.
answering_pids(P) ->
    Results = erlpy_test:pmap(fun(I) -> py:call('__main__', whoami, [I], #{}, #{pool => P}) end,
                   lists:seq(1, 24)),
    ?assertEqual([{ok, {I, O}} || {I, {ok, {_, O}}} <- lists:zip(lists:seq(1, 24), Results)],
                 Results),
    lists:usort([O || {ok, {_, O}} <- Results]).

%%====================================================================
%% start / stop / child_spec
%%====================================================================

start_stop_pool_kills_python(_) ->
    erlpy_test:doc("start_pool/stop_pool: a working pool, and stop_pool kills its Pythons"),
    P = start_stop_pool_kills_python,
    {ok, Sup} = py:start_pool(P, #{size => 2}),
    ?assert(is_pid(Sup)),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, #{pool => P})),
    OsPids = erlpy_test:os_pids(P),
    ?assertEqual(2, length(OsPids)),
    ?assert(lists:all(fun erlpy_test:os_pid_alive/1, OsPids)),
    ?assertEqual(ok, py:stop_pool(P)),
    ok = erlpy_test:wait_until(fun() -> not lists:any(fun erlpy_test:os_pid_alive/1, OsPids) end),
    ?assertNot(is_process_alive(Sup)),
    ?assertEqual({error, {no_pool, P}}, py:stop_pool(P)),
    %% the name can be reused
    {ok, _} = py:start_pool(P, #{size => 1}),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, #{pool => P})).

start_pool_already_started(_) ->
    erlpy_test:doc("starting a pool twice is {error, {already_started, Name}}"),
    P = start_pool_already_started,
    {ok, _} = py:start_pool(P, #{size => 1}),
    ?assertEqual({error, {already_started, P}}, py:start_pool(P, #{size => 1})),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, #{pool => P})).

start_pool_proplist_options(_) ->
    erlpy_test:doc("start_pool accepts a proplist of options (BUG: proplists:unfold/1 misuse)"),
    P = start_pool_proplist_options,
    {ok, _} = py:start_pool(P, [{size, 3}, {python, erlpy_test:python()}]),
    ?assertMatch(#{size := 3, workers := [_, _, _]}, py:info(P)).

child_spec_proplist_own_supervisor(Config) ->
    erlpy_test:doc("py:child_spec([{name, mypool}, {size, 2}]) in own supervisor (BUG: crashes)"),
    own_supervisor(py:child_spec([{name, mypool}, {size, 2}]), mypool, 2, Config).

child_spec_map_own_supervisor(Config) ->
    erlpy_test:doc("py:child_spec(#{name => mypool2, size => 1}) in the test's own supervisor"),
    own_supervisor(py:child_spec(#{name => mypool2, size => 1}), mypool2, 1, Config).

own_supervisor(Spec, Name, Size, _Config) ->
    {ok, Sup} = supervisor:start_link(?MODULE, [Spec]),
    unlink(Sup),
    try
        ?assertMatch(#{size := Size}, py:info(Name)),
        ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, #{pool => Name})),
        ok = py:exec(<<"own = 'yes'">>, #{pool => Name}),
        ?assertEqual({ok, <<"yes">>}, py:eval(<<"own">>, #{}, #{pool => Name})),
        OsPids = erlpy_test:os_pids(Name),
        ?assertEqual(Size, length(OsPids)),
        %% it is not a child of erlpy's supervisor
        ?assertEqual({error, {no_pool, Name}}, py:stop_pool(Name)),
        Ref = monitor(process, Sup),
        exit(Sup, shutdown),
        receive {'DOWN', Ref, process, Sup, _} -> ok after 15000 -> error(sup_not_down) end,
        ok = erlpy_test:wait_until(fun() -> not lists:any(fun erlpy_test:os_pid_alive/1, OsPids) end)
    after
        exit(Sup, kill)
    end.

%%====================================================================
%% start failures
%%====================================================================

nomsgpack_start_failed_detail(Config) ->
    erlpy_test:doc("a Python without msgpack: python_start_failed naming msgpack and the interpreter"),
    Python = ?config(venv_python, Config),
    Result = py:start_pool(nomsgpack, #{python => Python, size => 1}),
    ct:log("~p", [Result]),
    Detail = start_failed_detail(Result),
    Text = iolist_to_binary(io_lib:format("~0p", [Detail])),
    ?assertNotEqual(nomatch, binary:match(Text, <<"msgpack">>)),
    ?assertNotEqual(nomatch, binary:match(Text, list_to_binary(Python))),
    %% nothing is left running, and trying again fails the same way
    ok = erlpy_test:wait_until(fun() ->
        nomatch =:= binary:match(list_to_binary(os:cmd("ps -eo args")), list_to_binary(Python))
    end),
    _ = start_failed_detail(py:start_pool(nomsgpack, #{python => Python, size => 1})),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

nomsgpack_system_python_advice(_) ->
    erlpy_test:doc("a distribution's Python without msgpack (PEP 668, Debian's python3): the "
                   "message says what works there; it said to run pip, which refuses"),
    Python = "/usr/bin/python3",
    Managed = filelib:wildcard("/usr/lib/python3*/EXTERNALLY-MANAGED") =/= [],
    Lacks = filelib:is_regular(Python) andalso
        os:cmd(Python ++ " -c 'import msgpack' >/dev/null 2>&1; echo $?") =/= "0\n",
    case Managed andalso Lacks of
        false ->
            {skip, "no externally managed /usr/bin/python3 without msgpack here"};
        true ->
            #{message := Message} = Detail =
                start_failed_detail(py:start_pool(nomsgpack, #{python => Python, size => 1})),
            ct:log("~p", [Detail]),
            ?assertMatch(#{externally_managed := true}, Detail),
            ?assertNotEqual(nomatch, binary:match(Message, <<"apt install python3-msgpack">>)),
            ?assertNotEqual(nomatch, binary:match(Message, <<"requirements => [\"msgpack\"]">>)),
            ?assertEqual(nomatch, binary:match(Message, <<"pip install">>))
    end.

python_not_found_detail(_) ->
    erlpy_test:doc("a missing interpreter: python_start_failed naming the path"),
    Path = "/nonexistent/erlpy/python3",
    Detail = start_failed_detail(py:start_pool(python_not_found_detail, #{python => Path})),
    Text = iolist_to_binary(io_lib:format("~0p", [Detail])),
    ?assertNotEqual(nomatch, binary:match(Text, list_to_binary(Path))).

init_failure_fails_start(_) ->
    erlpy_test:doc("init code that raises makes start_pool fail with the Python error"),
    Result = py:start_pool(init_failure_fails_start, #{size => 1, init => <<"raise ValueError('bad init')">>}),
    ct:log("~p", [Result]),
    Detail = start_failed_detail(Result),
    Text = iolist_to_binary(io_lib:format("~0p", [Detail])),
    ?assertNotEqual(nomatch, binary:match(Text, <<"bad init">>)).

start_failed_detail({error, {python_start_failed, Detail}}) -> Detail;
start_failed_detail(Other) -> error({unexpected, Other}).

%%====================================================================
%% options
%%====================================================================

pool_options_env_cd_path_init(Config) ->
    erlpy_test:doc("env, cd, path and init pool options reach every worker"),
    P = pool_options_env_cd_path_init,
    Priv = ?config(priv_dir, Config),
    Cd = filename:join(Priv, "cwd"),
    Lib = filename:join(Priv, "lib"),
    ok = filelib:ensure_path(Cd),
    ok = filelib:ensure_path(Lib),
    ok = file:write_file(filename:join(Lib, "erlpy_pool_test_mod.py"),
                         <<"def hello(name):\n    return 'hello ' + name\n">>),
    {ok, _} = py:start_pool(P, #{
        size => 2,
        env => #{"ERLPY_POOL_TEST_VAR" => "from-erlang"},
        cd => Cd,
        path => [Lib],
        init => <<"init_defined = 7\nimport os\n">>
    }),
    O = #{pool => P},
    Each = fun(F) -> erlpy_test:pmap(fun(_) -> F() end, lists:seq(1, 6)) end,
    ?assertEqual(lists:duplicate(6, {ok, <<"from-erlang">>}),
                 Each(fun() -> py:call(os, getenv, [<<"ERLPY_POOL_TEST_VAR">>], #{}, O) end)),
    {ok, CdBin} = py:call('os.path', realpath, [list_to_binary(Cd)], #{}, O),
    ?assertEqual(lists:duplicate(6, {ok, CdBin}), Each(fun() -> py:call(os, getcwd, [], #{}, O) end)),
    ?assertEqual(lists:duplicate(6, {ok, <<"hello erlang">>}),
                 Each(fun() -> py:call(erlpy_pool_test_mod, hello, [<<"erlang">>], #{}, O) end)),
    ?assertEqual(lists:duplicate(6, {ok, 7}), Each(fun() -> py:eval(<<"init_defined">>, #{}, O) end)),
    %% init code runs again on a restarted worker, before the exec log
    ok = py:exec(<<"from_exec = init_defined * 2">>, O),
    [Victim | _] = erlpy_test:os_pids(P),
    os:cmd("kill -9 " ++ integer_to_list(Victim)),
    ok = erlpy_test:wait_until(fun() ->
        Ws = erlpy_test:workers(P),
        not lists:member(Victim, [X || #{os_pid := X} <- Ws]) andalso
            lists:all(fun(#{state := S}) -> S =:= ready end, Ws)
    end),
    ?assertEqual(lists:duplicate(6, {ok, 14}), Each(fun() -> py:eval(<<"from_exec">>, #{}, O) end)),
    ?assertEqual(lists:duplicate(6, {ok, <<"from-erlang">>}),
                 Each(fun() -> py:call(os, getenv, [<<"ERLPY_POOL_TEST_VAR">>], #{}, O) end)).

none_atom_option(_) ->
    erlpy_test:doc("none_atom => nil: Python None maps to nil both ways"),
    P = none_atom_option,
    {ok, _} = py:start_pool(P, #{size => 1, none_atom => nil}),
    ?assertEqual({ok, nil}, py:eval(<<"None">>, #{}, #{pool => P})),
    ?assertEqual({ok, true}, py:eval(<<"x is None">>, #{x => nil}, #{pool => P})),
    ?assertEqual({ok, none}, py:eval(<<"None">>)).

info_pool_shape(_) ->
    erlpy_test:doc("py:info(Pool) for a started pool, and py:info/0 lists it"),
    P = info_pool_shape,
    {ok, _} = py:start_pool(P, #{size => 3}),
    #{workers := Ws, queued := 0, python := Version} = py:info(P),
    ?assert(is_binary(Version)),
    ?assertEqual(3, length(Ws)),
    [?assertMatch(#{os_pid := O, in_flight := 0, restarts := 0} when is_integer(O), W) || W <- Ws],
    ?assertEqual(3, length(lists:usort([O || #{os_pid := O} <- Ws]))),
    All = py:info(),
    ?assertMatch(#{P := #{workers := [_, _, _]}, default := #{workers := [_, _]}}, All).

pools_from_app_env(_) ->
    erlpy_test:doc("pools named in the application env are started with the application"),
    {ok, Saved} = application:get_env(erlpy, pools),
    ok = application:stop(erlpy),
    try
        application:set_env(erlpy, pools, #{default => #{size => 1},
                                            app_env_extra => #{size => 2, init => <<"extra = 1">>}}),
        ok = erlpy_test:start_app(),
        ?assertMatch(#{workers := [_]}, py:info(default)),
        ?assertMatch(#{workers := [_, _]}, py:info(app_env_extra)),
        ?assertEqual({ok, 1}, py:eval(<<"extra">>, #{}, #{pool => app_env_extra})),
        ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16]))
    after
        _ = application:stop(erlpy),
        application:set_env(erlpy, pools, Saved),
        ok = erlpy_test:start_app()
    end,
    ?assertMatch(#{workers := [_, _]}, py:info(default)).

app_defaults_every_pool(Config) ->
    erlpy_test:doc("the application's defaults reach the application's pools, start_pool/2 "
                   "and child_spec/1 pools alike; a pool's own options win, key by key"),
    Priv = ?config(priv_dir, Config),
    Lib = filename:join(Priv, "defaults_lib"),
    ok = filelib:ensure_path(Lib),
    ok = file:write_file(filename:join(Lib, "erlpy_defaults_mod.py"), <<"def where():\n    return 'lib'\n">>),
    {ok, Saved} = application:get_env(erlpy, pools),
    ok = application:stop(erlpy),
    try
        ok = application:set_env(erlpy, defaults, [{none_atom, nil}, {path, [Lib]}, {size, 1}]),
        ok = application:set_env(erlpy, pools, #{default => #{size => 2}}),
        ok = erlpy_test:start_app(),
        %% the application's default pool: its own size, the default none_atom and path
        ?assertMatch(#{workers := [_, _]}, py:info(default)),
        ?assertEqual({ok, nil}, py:eval(<<"None">>)),
        ?assertEqual({ok, <<"lib">>}, py:call(erlpy_defaults_mod, where, [])),
        %% start_pool/2
        {ok, _} = py:start_pool(mypool, #{none_atom => undefined}),
        ?assertMatch(#{workers := [_]}, py:info(mypool)),
        ?assertEqual({ok, undefined}, py:eval(<<"None">>, #{}, #{pool => mypool})),
        ?assertEqual({ok, <<"lib">>}, py:call(erlpy_defaults_mod, where, [], #{}, #{pool => mypool})),
        %% child_spec/1 in a supervisor of the user's
        {ok, Sup} = supervisor:start_link(?MODULE, [py:child_spec([{name, mypool2}])]),
        ?assertEqual({ok, nil}, py:eval(<<"None">>, #{}, #{pool => mypool2})),
        ?assertEqual({ok, <<"lib">>}, py:call(erlpy_defaults_mod, where, [], #{}, #{pool => mypool2})),
        unlink(Sup),
        exit(Sup, shutdown),
        ok = erlpy_test:wait_until(fun() -> not is_process_alive(Sup) end)
    after
        _ = application:stop(erlpy),
        application:unset_env(erlpy, defaults),
        application:set_env(erlpy, pools, Saved),
        ok = erlpy_test:start_app()
    end,
    ?assertEqual({ok, none}, py:eval(<<"None">>)).

unknown_app_env_warned(_) ->
    erlpy_test:doc("a key of erlpy's application environment that erlpy does not read (a "
                   "pool option put beside `defaults' instead of in it) is warned about when "
                   "the application starts, with where it goes"),
    ok = application:stop(erlpy),
    ok = logger:add_handler(?MODULE, ?MODULE, #{config => #{pid => self()}}),
    try
        ok = application:set_env(erlpy, python, "/somewhere/bin/python"),
        ok = application:set_env(erlpy, colour, blue),
        ok = erlpy_test:start_app(),
        Warnings = warnings(),
        ct:log("~p", [Warnings]),
        ?assertMatch([_, _], Warnings),
        [Colour] = [W || W <- Warnings, string:find(W, "colour") =/= nomatch],
        [Python] = [W || W <- Warnings, string:find(W, "python") =/= nomatch],
        ?assertNotEqual(nomatch, string:find(Colour, "erlpy reads `pools' and `defaults'")),
        ?assertNotEqual(nomatch, string:find(Python, "{erlpy, [{defaults, #{python => ...}}]}")),
        ?assertNotEqual(nomatch, string:find(Python, "config :erlpy, defaults: %{python: ...}")),
        %% the pools start as before: the key is not read
        ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16]))
    after
        _ = logger:remove_handler(?MODULE),
        _ = application:stop(erlpy),
        application:unset_env(erlpy, python),
        application:unset_env(erlpy, colour),
        ok = erlpy_test:start_app()
    end.

%% The warnings logged so far (by the handler of unknown_app_env_warned/1).
warnings() ->
    receive
        {?MODULE, warning, Text} -> [Text | warnings()]
    after 0 -> []
    end.

log(#{level := warning, msg := {Format, Args}}, #{config := #{pid := Pid}}) ->
    Pid ! {?MODULE, warning, lists:flatten(io_lib:format(Format, Args))};
log(_, _) ->
    ok.

app_defaults_checked(_) ->
    erlpy_test:doc("bad application defaults fail a pool's start as its own options would"),
    try
        ok = application:set_env(erlpy, defaults, #{size => zero}),
        ?assertEqual({error, {bad_option, {size, zero}}}, py:start_pool(mypool, #{})),
        %% a pool that sets the key itself does not see the bad default
        {ok, _} = py:start_pool(mypool, #{size => 1}),
        ok = application:set_env(erlpy, defaults, not_options),
        ?assertEqual({error, {bad_option, {options, not_options}}}, py:start_pool(mypool2, #{}))
    after
        application:unset_env(erlpy, defaults)
    end.

path_and_cd_forms(Config) ->
    erlpy_test:doc("path entries: {priv, App, Dir}, absolute, relative to cd when given, else "
                   "to the VM's directory; cd may be {priv, App, Dir}; all resolved to "
                   "absolute directories that must exist"),
    Priv = ?config(priv_dir, Config),
    Base = filename:join(Priv, "base"),
    ok = filelib:ensure_path(filename:join(Base, "lib")),
    ok = file:write_file(filename:join([Base, "lib", "erlpy_rel_mod.py"]), <<"X = 'relative to cd'\n">>),
    {ok, _} = py:start_pool(mypool, #{size => 1, cd => Base, path => ["lib"]}),
    ?assertEqual({ok, <<"relative to cd">>}, py:eval(<<"__import__('erlpy_rel_mod').X">>, #{}, #{pool => mypool})),
    #{path := [Resolved]} = erlpy_pool:meta(mypool),
    ?assertEqual(filename:join(Base, "lib"), Resolved),
    ok = py:stop_pool(mypool),
    {ok, Cwd} = file:get_cwd(),
    ?assertEqual({error, {bad_option, {path, filename:join(Cwd, "no_such_lib")}}},
                 py:start_pool(mypool, #{size => 1, path => ["no_such_lib"]})),
    ?assertEqual({error, {bad_option, {path, filename:join(Base, "no_such_lib")}}},
                 py:start_pool(mypool, #{size => 1, cd => Base, path => [<<"no_such_lib">>]})),
    PrivPython = filename:join(code:priv_dir(erlpy), "python"),
    {ok, _} = py:start_pool(mypool, #{size => 1, cd => {priv, erlpy, "python"}}),
    {ok, Cd} = py:call(os, getcwd, [], #{}, #{pool => mypool}),
    {ok, Real} = py:call('os.path', realpath, [list_to_binary(PrivPython)], #{}, #{pool => mypool}),
    ?assertEqual(Real, Cd),
    ok = py:stop_pool(mypool),
    ?assertEqual({error, {bad_option, {cd, {priv, no_such_app, "x"}}}},
                 py:start_pool(mypool, #{cd => {priv, no_such_app, "x"}})),
    ?assertEqual({error, {bad_option, {python, {priv, no_such_app, "bin/python"}}}},
                 py:start_pool(mypool, #{python => {priv, no_such_app, "bin/python"}})),
    ?assertEqual({error, {bad_option, {path, {priv, erlpy, 42}}}},
                 py:start_pool(mypool, #{path => [{priv, erlpy, 42}]})).

%%====================================================================
%% Python never outlives its pool or the VM
%%====================================================================

pool_sup_killed_python_gone(_) ->
    erlpy_test:doc("killing a pool's supervisor brutally stops its Pythons; erlpy_sup restarts it"),
    P = pool_sup_killed_python_gone,
    {ok, Sup} = py:start_pool(P, #{size => 2}),
    Old = erlpy_test:os_pids(P),
    exit(Sup, kill),
    ok = erlpy_test:wait_until(fun() -> not lists:any(fun erlpy_test:os_pid_alive/1, Old) end),
    ok = erlpy_test:wait_until(fun() ->
        try py:info(P) of
            #{workers := [#{state := ready, os_pid := A}, #{state := ready, os_pid := B}]} ->
                not lists:member(A, Old) andalso not lists:member(B, Old);
            _ -> false
        catch _:_ -> false
        end
    end),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, #{pool => P})).

vm_killed_python_gone(_) ->
    erlpy_test:doc("when the VM is killed (kill -9), its Python workers die too"),
    {ok, Peer, _Node} = peer:start_link(#{
        connection => standard_io,
        args => lists:append([["-pa", D] || D <- code:get_path(),
                                            not lists:prefix(code:lib_dir(), D)])
    }),
    unlink(Peer),
    try
        ok = peer:call(Peer, application, set_env, [erlpy, pools, #{default => #{size => 2}}]),
        {ok, _} = peer:call(Peer, application, ensure_all_started, [erlpy], 30000),
        #{workers := Ws} = peer:call(Peer, py, info, [default]),
        OsPids = [O || #{os_pid := O} <- Ws],
        ?assertEqual(2, length(OsPids)),
        ?assert(lists:all(fun erlpy_test:os_pid_alive/1, OsPids)),
        BeamPid = peer:call(Peer, os, getpid, []),
        os:cmd("kill -9 " ++ BeamPid),
        ok = erlpy_test:wait_until(fun() -> not lists:any(fun erlpy_test:os_pid_alive/1, OsPids) end)
    after
        catch peer:stop(Peer)
    end.

%%====================================================================
%% exact error shapes
%%====================================================================

nomsgpack_error_shape(Config) ->
    erlpy_test:doc("start_pool without msgpack is exactly {error, {python_start_failed, Detail}}"),
    Python = ?config(venv_python, Config),
    Result = py:start_pool(nomsgpack, #{python => Python, size => 1}),
    ?assertMatch({error, {python_start_failed, #{missing_module := <<"msgpack">>}}}, Result),
    {error, {python_start_failed, #{python := Tried}}} = Result,
    ?assertNotEqual(nomatch, binary:match(Tried, list_to_binary(?config(venv, Config)))).

bad_option_error_shape(_) ->
    erlpy_test:doc("start_pool with a bad option is exactly {error, {bad_option, {Key, Value}}}"),
    ?assertEqual({error, {bad_option, {size, 0}}}, py:start_pool(bad_option_error_shape, #{size => 0})),
    ?assertEqual({error, {bad_option, {bogus, 1}}}, py:start_pool(bad_option_error_shape, #{bogus => 1})),
    ?assertEqual({error, {bad_option, {max_queue, -1}}},
                 py:start_pool(bad_option_error_shape, #{max_queue => -1})),
    ?assertEqual({error, {bad_option, {options, not_options}}},
                 py:start_pool(bad_option_error_shape, not_options)).

%%====================================================================
%% regressions: bugs these tests found (fixed)
%%====================================================================

no_pool_after_stop_pool(_) ->
    erlpy_test:doc("after stop_pool the pool is unknown: {error, {no_pool, P}}, info/0 works"),
    P = no_pool_after_stop_pool,
    {ok, _} = py:start_pool(P, #{size => 1}),
    ok = py:stop_pool(P),
    ?assertEqual({error, {no_pool, P}}, erlpy_test:catch_all(fun() -> py:call(math, sqrt, [4], #{}, #{pool => P}) end)),
    ?assertEqual({error, {no_pool, P}}, erlpy_test:catch_all(fun() -> py:info(P) end)),
    ?assertMatch(#{default := _}, erlpy_test:catch_all(fun() -> py:info() end)),
    ?assertNot(maps:is_key(P, erlpy_test:catch_all(fun() -> py:info() end))).

no_pool_after_failed_start(_) ->
    erlpy_test:doc("a pool whose start failed is unknown afterwards, and says why: "
                   "{error, {no_pool, P, Reason}} with start_pool's Reason, until it starts"),
    P = no_pool_after_failed_start,
    {error, Reason} = py:start_pool(P, #{size => 1, init => <<"1/0">>}),
    ?assertMatch({python_start_failed, {init, {python, <<"ZeroDivisionError">>, _, _}}}, Reason),
    ?assertEqual({error, {no_pool, P, Reason}}, erlpy_test:catch_all(fun() -> py:info(P) end)),
    ?assertEqual({error, {no_pool, P, Reason}},
                 erlpy_test:catch_all(fun() -> py:eval(<<"1">>, #{}, #{pool => P}) end)),
    {ok, _} = py:start_pool(P, #{size => 1}),
    ok = py:stop_pool(P),
    ?assertEqual({error, {no_pool, P}}, py:eval(<<"1">>, #{}, #{pool => P})).

bad_option_types_are_bad_option(_) ->
    erlpy_test:doc("ill-typed path/env/cd values are {error, {bad_option, {Key, Value}}} "
                   "(BUG: {error, {'EXIT', {badarg, _}}})"),
    P = bad_option_types_are_bad_option,
    ?assertEqual({error, {bad_option, {path, "/tmp"}}}, py:start_pool(P, #{size => 1, path => "/tmp"})),
    ?assertEqual({error, {bad_option, {env, [{"A", 1}]}}},
                 py:start_pool(P, #{size => 1, env => [{"A", 1}]})),
    ?assertEqual({error, {bad_option, {cd, 42}}}, py:start_pool(P, #{size => 1, cd => 42})).

init_list_of_strings(_) ->
    erlpy_test:doc("init => [\"import os\", \"x = 1\"] runs both statements "
                   "(BUG: the strings are concatenated into \"import osx = 1\")"),
    P = init_list_of_strings,
    ?assertMatch({ok, _}, py:start_pool(P, #{size => 1, init => ["import os", "x = 1"]})),
    ?assertEqual({ok, 1}, py:eval(<<"x">>, #{}, #{pool => P})).

poll_us_option(_) ->
    erlpy_test:doc("poll_us: 0 (never poll) and a poll both serve sync and async calls; "
                   "a value out of range or of another type is bad_option"),
    [?assertEqual({error, {bad_option, {poll_us, Bad}}}, py:start_pool(bad_poll, #{poll_us => Bad}))
     || Bad <- [-1, 100001, 1.5, <<"200">>]],
    [begin
         Pool = list_to_atom("poll_" ++ integer_to_list(Us)),
         {ok, _} = py:start_pool(Pool, #{size => 1, poll_us => Us}),
         ok = py:exec(<<"async def aadd(a, b): return a + b\n">>, #{pool => Pool}),
         [{ok, 4.0} = py:call(math, sqrt, [16], #{}, #{pool => Pool}) || _ <- lists:seq(1, 200)],
         [{ok, 3} = py:call('__main__', aadd, [1, 2], #{}, #{pool => Pool}) || _ <- lists:seq(1, 200)],
         ok = py:stop_pool(Pool)
     end || Us <- [0, 1, 200, 100000]].

idle_polling_pool_costs_no_cpu(_) ->
    erlpy_test:doc("the poll for the next request is bounded: after a run of calls, a worker "
                   "that polls 100 ms at most then sleeps, and an idle second costs it next "
                   "to no CPU (a poll that never ended would cost the whole second)"),
    {ok, _} = py:start_pool(idle_poll, #{size => 1, poll_us => 100000}),
    [{ok, _} = py:call(math, sqrt, [2], #{}, #{pool => idle_poll}) || _ <- lists:seq(1, 100)],
    #{workers := [#{os_pid := OsPid}]} = py:info(idle_poll),
    timer:sleep(300),  % the poll after the last call ends within 100 ms
    Before = cpu_ticks(OsPid),
    timer:sleep(1000),
    Used = cpu_ticks(OsPid) - Before,
    ct:log("CPU ticks used in an idle second: ~p", [Used]),
    ?assert(Used < 20),  % of 100 a second
    ok = py:stop_pool(idle_poll).

%%====================================================================
%% helpers
%%====================================================================

%% utime + stime of an OS process, in clock ticks (1/100 s).
cpu_ticks(OsPid) ->
    {ok, Stat} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat"),
    [_, AfterName] = binary:split(Stat, <<") ">>),
    Fields = binary:split(AfterName, <<" ">>, [global]),
    binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields)).


exec_while_the_pool_stops(_) ->
    erlpy_test:doc("py:exec in a loop while its pool is stopped returns errors, never raises: "
                   "it raised exit({shutdown, {gen_server, call, _}}) when the pool's server "
                   "stopped during the call"),
    Self = self(),
    Results = lists:append([begin
        {ok, _} = py:start_pool(exec_stops, #{size => 1}),
        Loopers = [spawn_link(fun() -> exec_loop(Self, #{}) end) || _ <- lists:seq(1, 20)],
        timer:sleep(100),
        ok = py:stop_pool(exec_stops),
        timer:sleep(100),
        lists:append([begin L ! stop, receive {L, Seen} -> maps:to_list(Seen) end end || L <- Loopers])
    end || _ <- lists:seq(1, 3)]),
    Kinds = lists:usort([K || {K, _} <- Results]),
    ct:log("~p", [Results]),
    ?assert(lists:member(ok, Kinds)),
    ?assertEqual([], [K || {raised, _, _} = K <- Kinds]),
    ?assert(lists:member({error, {no_pool, exec_stops}}, Kinds)).

%% py:exec on exec_stops until told to stop; what it got, by kind: a result, or what it raised.
exec_loop(Parent, Seen) ->
    Got = try py:exec(<<"x = 1">>, #{pool => exec_stops}) of
        R -> R
    catch
        C:E -> {raised, C, element(1, E)}
    end,
    Seen1 = maps:update_with(Got, fun(N) -> N + 1 end, 1, Seen),
    receive
        stop -> Parent ! {self(), Seen1}
    after 0 ->
        exec_loop(Parent, Seen1)
    end.

slow_start_holds_no_other_pool(_) ->
    erlpy_test:doc("while a pool with slow init code starts, other pools start and stop at "
                   "once: its Pythons started inside erlpy's supervisor, which every start "
                   "and stop waited for (up to start_timeout)"),
    Self = self(),
    spawn_link(fun() ->
        Self ! {slow, py:start_pool(slow_starting, #{size => 1, init => <<"import time; time.sleep(3)">>})}
    end),
    ok = erlpy_test:wait_until(fun() -> erlpy_pool:meta(slow_starting) =/= undefined end),
    T0 = erlang:monotonic_time(millisecond),
    {ok, _} = py:start_pool(quick_one, #{size => 1}),
    ok = py:stop_pool(quick_one),
    Took = erlang:monotonic_time(millisecond) - T0,
    ct:log("another pool started and stopped in ~b ms", [Took]),
    ?assert(Took < 2000),
    %% the slow one starts all the same, and serves
    {slow, {ok, _}} = receive {slow, _} = M -> M after 30000 -> timeout end,
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, #{pool => slow_starting})),
    ok = py:stop_pool(slow_starting).

failed_start_of_a_killed_caller(_) ->
    erlpy_test:doc("a start that fails after its caller was killed is cleaned up: the "
                   "caller waited for the Pythons itself, and with it gone the pool stayed "
                   "registered, its worker starting Python again and again"),
    Name = failed_start_of_a_killed_caller,
    Init = <<"import time; time.sleep(0.5); raise RuntimeError('no model')">>,
    Caller = spawn(fun() -> py:start_pool(Name, #{size => 1, init => Init}) end),
    ok = erlpy_test:wait_until(fun() -> erlpy_pool:meta(Name) =/= undefined end),
    exit(Caller, kill),
    ok = erlpy_test:wait_until(fun() -> erlpy_pool:meta(Name) =:= undefined end, 10000),
    ?assertEqual(false, lists:keymember({erlpy_pool, Name}, 1, supervisor:which_children(erlpy_sup))),
    ?assertMatch({error, {no_pool, Name, {python_start_failed, _}}}, py:eval(<<"1">>, #{}, #{pool => Name})).

%% Python environments managed by pools: the options `venv' and `requirements'
%% (erlpy_venv, docs/python-environments.md).
%%
%% Every environment is built from /usr/bin/python3, Debian's Python, which has no
%% msgpack, with the packages of test/venv (greeter, counter, and broken, whose build
%% fails). Builds are offline: the pools' `env' points pip's configuration
%% (PIP_CONFIG_FILE) at a wheel directory holding msgpack, downloaded once by the suite
%% with the project's pip, with `no-index', and proxies at a closed port; so they also
%% show that pip's configuration is what decides where packages come from, for uv too.
%%
%%   uv, pip   the same cases with `uv' on the VM's PATH (the project virtualenv's) and
%%             with a PATH without it (python -m venv + pip): a pool built from the bare
%%             interpreter calls into its package; the same spec reuses the environment
%%             without installing anything; a changed requirement list updates it; three
%%             pools started at once on a fresh directory build it once and share it; a
%%             requirement that cannot be installed is named in the error, and no pool
%%             starts on the half-built environment.
%%   misc      `venv' alone, a directory erlpy did not build, bad options, building ahead
%%             (py:build_venv/1, the release hook of priv/release run by hand and as the
%%             pre_start hook of a relx release), application defaults,
%%             and the examples of docs/python-environments.md marked norun.
-module(erlpy_venv_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(BARE, "/usr/bin/python3").

suite() ->
    [{timetrap, {minutes, 5}}].

all() ->
    [{group, uv}, {group, pip}, {group, misc}].

groups() ->
    Cases = [build_from_bare_python, same_spec_reuses, changed_requirements_update,
             three_pools_fresh_dir, failing_requirement_named],
    [{uv, [sequence], Cases},
     {pip, [sequence], Cases ++ [killed_build_recovers]},
     {misc, [sequence], [venv_alone, not_managed_dir, bad_options, requirements_file_offline,
                         build_ahead, release_hook, relx_release, application_defaults]}].

init_per_suite(Config) ->
    filelib:is_regular(?BARE) orelse ct:fail({no_bare_python, ?BARE}),
    %% The premise: the interpreter the environments are built from lacks msgpack.
    {1, _} = run(?BARE, ["-c", "import msgpack"]),
    VenvBin = filename:dirname(os:find_executable(erlpy_test:python())),
    Uv = filename:join(VenvBin, "uv"),
    filelib:is_regular(Uv) orelse ct:fail({no_uv, Uv, "make test installs it into .venv"}),
    Priv = ?config(priv_dir, Config),
    Wheels = filename:join(Priv, "wheels"),
    {0, Out} = run(filename:join(VenvBin, "pip"),
                   ["download", "--only-binary=:all:", "--no-deps", "-q", "-d", Wheels, "msgpack>=1.0.5"]),
    ct:log("msgpack for the wheel directory: ~ts", [Out]),
    PipConf = filename:join(Priv, "pip.conf"),
    ok = file:write_file(PipConf, ["[global]\nno-index = true\nfind-links = ", Wheels, "\n"]),
    Offline = [{"PIP_CONFIG_FILE", PipConf}, {"PIP_INDEX_URL", false}, {"PIP_EXTRA_INDEX_URL", false},
               {"PIP_FIND_LINKS", false}, {"PIP_NO_INDEX", false},
               {"UV_CACHE_DIR", filename:join(Priv, "uv-cache")},
               {"HTTP_PROXY", "http://127.0.0.1:9"}, {"HTTPS_PROXY", "http://127.0.0.1:9"},
               {"http_proxy", "http://127.0.0.1:9"}, {"https_proxy", "http://127.0.0.1:9"}],
    ok = erlpy_test:start_app(),
    ok = logger:add_handler(venv_capture, ?MODULE, #{level => all, config => #{pid => self()}}),
    [{offline, Offline}, {venv_bin, VenvBin}, {path, os:getenv("PATH")} | Config].

end_per_suite(Config) ->
    _ = logger:remove_handler(venv_capture),
    os:putenv("PATH", ?config(path, Config)),
    ok.

init_per_group(Group, Config) ->
    Path = ?config(path, Config),
    NoUv = [D || D <- string:split(Path, ":", all), not filelib:is_regular(filename:join(D, "uv"))],
    case Group of
        pip -> os:putenv("PATH", lists:join(":", NoUv));
        _ -> os:putenv("PATH", lists:join(":", [?config(venv_bin, Config) | NoUv]))
    end,
    Tool = case Group of pip -> <<"pip">>; _ -> <<"uv">> end,
    ?assertEqual(Tool =:= <<"uv">>, os:find_executable("uv") =/= false),
    Dir = filename:join([?config(priv_dir, Config), atom_to_list(Group)]),
    ok = filelib:ensure_path(Dir),
    [{tool, Tool}, {dir, Dir} | Config].

end_per_group(_, Config) ->
    os:putenv("PATH", ?config(path, Config)),
    ok.

init_per_testcase(_, Config) ->
    %% The handler sends to the process of the case.
    ok = logger:update_handler_config(venv_capture, config, #{pid => self()}),
    _ = flush_logs(),
    Config.

end_per_testcase(_, _Config) ->
    _ = [py:stop_pool(P) || P <- maps:keys(py:info()), P =/= default],
    ok.

%%====================================================================
%% uv and pip
%%====================================================================

build_from_bare_python(Config) ->
    erlpy_test:doc("a pool with venv and requirements, from a bare interpreter without "
                   "msgpack: the environment is built, the workers run it and call into "
                   "the test package"),
    Env = env_dir(Config, "shared"),
    {ok, _} = py:start_pool(built, opts(Config, Env, [pkg("greeter")])),
    ?assertEqual({ok, <<"Hello, Ada!">>}, py:call(erlpy_greeter, greet, [<<"Ada">>], #{}, #{pool => built})),
    ?assertEqual({ok, list_to_binary(Env)}, prefix(built)),
    %% progress in the log: what is built, with which tool, what was installed, how long
    Logs = flush_logs(),
    Tool = ?config(tool, Config),
    ?assertMatch([_], [L || {notice, <<"erlpy: building virtualenv ", _/binary>> = L, _} <- Logs,
                            binary:match(L, <<"with ", Tool/binary>>) =/= nomatch]),
    [Installed] = [I || {notice, <<"erlpy: virtualenv ", _/binary>>, #{installed := I, ms := _}} <- Logs],
    ?assert(lists:any(fun(P) -> binary:match(P, <<"greeter">>) =/= nomatch end, Installed)),
    ?assert(lists:any(fun(P) -> binary:match(P, <<"msgpack">>) =/= nomatch end, Installed)),
    #{state := <<"ready">>} = state(Env).

same_spec_reuses(Config) ->
    erlpy_test:doc("a second pool with the same spec starts on the environment as it is: "
                   "nothing is installed, its state file is untouched"),
    Env = env_dir(Config, "shared"),
    Before = file:read_file(filename:join(Env, ".erlpy-venv")),
    {ok, _} = py:start_pool(again, opts(Config, Env, [pkg("greeter")])),
    ?assertEqual({ok, <<"Hello, Bob!">>}, py:call(erlpy_greeter, greet, [<<"Bob">>], #{}, #{pool => again})),
    ?assertEqual([], flush_logs()),
    ?assertEqual(Before, file:read_file(filename:join(Env, ".erlpy-venv"))).

changed_requirements_update(Config) ->
    erlpy_test:doc("a changed requirement list updates the environment in place: the new "
                   "package is installed, the old one stays"),
    Env = env_dir(Config, "shared"),
    #{fingerprint := Old} = state(Env),
    {ok, _} = py:start_pool(updated, opts(Config, Env, [pkg("greeter"), pkg("counter")])),
    ?assertEqual({ok, 3}, py:call(erlpy_counter, count, [[a, b, c]], #{}, #{pool => updated})),
    ?assertEqual({ok, <<"Hello, Cy!">>}, py:call(erlpy_greeter, greet, [<<"Cy">>], #{}, #{pool => updated})),
    Logs = flush_logs(),
    ?assertMatch([_], [L || {notice, <<"erlpy: updating virtualenv ", _/binary>> = L, _} <- Logs]),
    [Installed] = [I || {notice, _, #{installed := I}} <- Logs],
    ?assert(lists:any(fun(P) -> binary:match(P, <<"counter">>) =/= nomatch end, Installed)),
    #{state := <<"ready">>, fingerprint := New} = state(Env),
    ?assertNotEqual(Old, New).

three_pools_fresh_dir(Config) ->
    erlpy_test:doc("three pools started at once on a fresh directory: all start, on one "
                   "environment built once (the others wait for the lock)"),
    Env = env_dir(Config, "fresh"),
    Opts = opts(Config, Env, [pkg("greeter")]),
    Results = erlpy_test:pmap(fun(Name) -> py:start_pool(Name, Opts) end, [p1, p2, p3]),
    ?assertMatch([{ok, _}, {ok, _}, {ok, _}], Results),
    [?assertEqual({ok, list_to_binary(Env)}, prefix(P)) || P <- [p1, p2, p3]],
    [?assertEqual({ok, <<"Hello, X!">>}, py:call(erlpy_greeter, greet, [<<"X">>], #{}, #{pool => P}))
     || P <- [p1, p2, p3]],
    Logs = flush_logs(),
    ct:log("~p", [Logs]),
    ?assertMatch([_], [L || {notice, <<"erlpy: building virtualenv ", _/binary>> = L, _} <- Logs]),
    ?assertMatch([_], [L || {notice, <<"erlpy: virtualenv ", _/binary>> = L, #{installed := _}} <- Logs]).

failing_requirement_named(Config) ->
    erlpy_test:doc("a requirement that cannot be installed: python_start_failed with "
                   "{venv, Detail} naming it, with the tool's own message; the environment "
                   "is left marked as building and no pool starts on it"),
    Env = env_dir(Config, "failing"),
    Broken = pkg("broken"),
    {error, {python_start_failed, {venv, Detail}}} =
        py:start_pool(failing, opts(Config, Env, [pkg("greeter"), Broken])),
    ct:log("~p", [Detail]),
    Tool = ?config(tool, Config),
    #{reason := install_failed, requirement := Req, tool := Tool, message := Message,
      output := Output, venv := EnvBin} = Detail,
    ?assertEqual(list_to_binary(Broken), Req),
    ?assertEqual(list_to_binary(Env), EnvBin),
    ?assertMatch(<<"cannot install ", _/binary>>, Message),
    ?assertNotEqual(nomatch, binary:match(Message, Req)),
    ?assertNotEqual(nomatch, binary:match(Output, <<"erlpy_broken cannot be built">>)),
    %% the shape docs/python-environments.md shows
    Tool =:= <<"uv">> andalso
        ?assertMatch(<<"cannot install ", Req:(byte_size(Req))/binary, " into ", EnvBin:(byte_size(EnvBin))/binary,
                       " with uv: error: Failed to build ", _/binary>>, Message),
    ?assertMatch({error, {no_pool, failing, {python_start_failed, {venv, _}}}},
                 py:eval(<<"1">>, #{}, #{pool => failing})),
    #{state := <<"building">>} = state(Env),
    %% the half-built environment is refused to `venv' alone too
    ?assertMatch({error, {python_start_failed, {venv, #{reason := incomplete}}}},
                 py:start_pool(half, #{size => 1, venv => Env})),
    %% and the spec without the broken package finishes it
    {ok, _} = py:start_pool(fixed, opts(Config, Env, [pkg("greeter")])),
    #{state := <<"ready">>} = state(Env).

killed_build_recovers(Config) ->
    erlpy_test:doc("the process building an environment is killed halfway: its installer "
                   "dies with it, the lock goes with it, and the next start finishes the "
                   "environment"),
    Env = env_dir(Config, "killed"),
    Opts = opts(Config, Env, [pkg("greeter")]),
    Builder = spawn(fun() -> py:start_pool(killed, Opts) end),
    receive
        {venv_log, {notice, <<"erlpy: building virtualenv ", _/binary>>, _}} -> ok
    after 30000 -> ct:fail(no_build_started)
    end,
    %% Killed while the virtualenv is being created: the directory has files, and no
    %% state file yet (Env.creating says it is erlpy's).
    ok = erlpy_test:wait_until(fun() -> filelib:is_dir(filename:join(Env, "bin")) end, 30000),
    exit(Builder, kill),
    ct:log("killed with state file: ~p, creating mark: ~p",
           [filelib:is_regular(filename:join(Env, ".erlpy-venv")), filelib:is_regular(Env ++ ".creating")]),
    ok = erlpy_test:wait_until(fun() -> processes_on(Env) =:= [] end, 10000),
    {ok, _} = py:start_pool(killed, Opts),
    ?assertEqual({ok, <<"Hello, Ki!">>}, py:call(erlpy_greeter, greet, [<<"Ki">>], #{}, #{pool => killed})),
    #{state := <<"ready">>} = state(Env),
    ?assertNot(filelib:is_regular(Env ++ ".creating")).

%% OS processes whose command line names Dir (the installer, the lock helper).
processes_on(Dir) ->
    Needle = list_to_binary(Dir),
    [P || P <- filelib:wildcard("/proc/[0-9]*/cmdline"),
          {ok, Cmd} <- [file:read_file(P)], binary:match(Cmd, Needle) =/= nomatch].

%%====================================================================
%% misc
%%====================================================================

venv_alone(Config) ->
    erlpy_test:doc("venv alone uses an existing environment as it is; one that does not "
                   "exist, or lacks msgpack, fails the start and says so"),
    Env = env_dir(Config, "alone"),
    {ok, _} = erlpy_venv:build(opts(Config, Env, [pkg("greeter")])),
    _ = flush_logs(),
    {ok, _} = py:start_pool(alone, #{size => 1, venv => Env}),
    ?assertEqual({ok, list_to_binary(Env)}, prefix(alone)),
    ?assertEqual({ok, <<"Hello, Al!">>}, py:call(erlpy_greeter, greet, [<<"Al">>], #{}, #{pool => alone})),
    ?assertEqual([], flush_logs()),
    Missing = env_dir(Config, "no_such_env"),
    {error, {python_start_failed, {venv, #{reason := no_venv, message := M}}}} =
        py:start_pool(missing, #{size => 1, venv => Missing}),
    ?assertMatch(<<"no virtualenv at ", _/binary>>, M),
    ?assertNotEqual(nomatch, binary:match(M, <<"requirements => [\"msgpack\"]">>)),
    Bare = env_dir(Config, "without_msgpack"),
    {0, _} = run(?BARE, ["-m", "venv", "--without-pip", Bare]),
    ?assertMatch({error, {python_start_failed, #{reason := missing_module, missing_module := <<"msgpack">>}}},
                 py:start_pool(bare, #{size => 1, venv => Bare})).

not_managed_dir(Config) ->
    erlpy_test:doc("requirements for a directory that exists and was not built by erlpy: "
                   "refused, the directory left alone"),
    Dir = env_dir(Config, "mine"),
    ok = filelib:ensure_path(Dir),
    ok = file:write_file(filename:join(Dir, "notes.txt"), <<"mine">>),
    {error, {python_start_failed, {venv, #{reason := not_managed, message := M}}}} =
        py:start_pool(mine, opts(Config, Dir, [pkg("greeter")])),
    ct:log("~ts", [M]),
    ?assertEqual({ok, [<<"notes.txt">>]}, list_dir(Dir)).

bad_options(Config) ->
    erlpy_test:doc("bad venv and requirements options: bad_option with the key and value"),
    Env = env_dir(Config, "bad"),
    Nowhere = filename:join(?config(priv_dir, Config), "no_such_package"),
    ?assertEqual({error, {bad_option, {requirements, [<<"x">>]}}},
                 py:start_pool(b1, #{requirements => ["x"]})),
    ?assertEqual({error, {bad_option, {requirements, "erlpy-greeter"}}},
                 py:start_pool(b2, #{venv => Env, requirements => "erlpy-greeter"})),
    ?assertEqual({error, {bad_option, {requirements, Nowhere}}},
                 py:start_pool(b3, #{venv => Env, requirements => [Nowhere]})),
    ?assertEqual({error, {bad_option, {requirements, ["--index-url=x"]}}},
                 py:start_pool(b4, #{venv => Env, requirements => ["--index-url=x"]})),
    ?assertEqual({error, {bad_option, {venv, 42}}}, py:start_pool(b5, #{venv => 42})),
    ?assertEqual({error, {bad_option, {requirements, {priv, no_such_app, "x"}}}},
                 py:start_pool(b6, #{venv => Env, requirements => [{priv, no_such_app, "x"}]})),
    ?assertEqual(false, filelib:is_dir(Env)).

requirements_file_offline(Config) ->
    erlpy_test:doc("docs/python-environments.md, offline: a requirements file (-r), pip's "
                   "configuration named by PIP_CONFIG_FILE in the pool's env (a map); a "
                   "change of the file's content updates the environment"),
    Env = env_dir(Config, "from_file"),
    ReqFile = filename:join(?config(dir, Config), "requirements.txt"),
    ok = file:write_file(ReqFile, [pkg("greeter"), "\n"]),
    Offline = maps:from_list(?config(offline, Config)),
    Opts = #{venv => Env, requirements => ["-r " ++ ReqFile], env => Offline, python => ?BARE, size => 1},
    {ok, _} = py:start_pool(offline, Opts),
    ?assertEqual({ok, <<"Hello, Di!">>}, py:call(erlpy_greeter, greet, [<<"Di">>], #{}, #{pool => offline})),
    ok = py:stop_pool(offline),
    ok = file:write_file(ReqFile, [pkg("greeter"), "\n", pkg("counter"), "\n"]),
    _ = flush_logs(),
    {ok, _} = py:start_pool(offline, Opts),
    ?assertEqual({ok, 1}, py:call(erlpy_counter, count, [[x]], #{}, #{pool => offline})),
    ?assertMatch([_], [L || {notice, <<"erlpy: updating virtualenv ", _/binary>> = L, _} <- flush_logs()]).

build_ahead(Config) ->
    erlpy_test:doc("py:build_venv/1 builds a pool's environment ahead of time (by options, "
                   "or by the name of a pool of the application's environment); the pool "
                   "then starts without building"),
    Env = env_dir(Config, "ahead"),
    Opts = opts(Config, Env, [pkg("greeter")]),
    Python = list_to_binary(filename:join(Env, "bin/python")),
    ?assertEqual({ok, Python}, py:build_venv(Opts)),
    ?assertMatch([_ | _], flush_logs()),
    Saved = application:get_env(erlpy, pools, #{}),
    ok = application:set_env(erlpy, pools, #{default => #{size => 2}, ahead => Opts}),
    try
        ?assertEqual({ok, Python}, py:build_venv(ahead)),
        ?assertEqual({ok, [{ahead, Python}]}, py:build_venvs()),
        ?assertEqual({error, {no_pool, nope}}, py:build_venv(nope))
    after
        application:set_env(erlpy, pools, Saved)
    end,
    {ok, _} = py:start_pool(ahead, Opts),
    ?assertEqual({ok, list_to_binary(Env)}, prefix(ahead)),
    ?assertEqual([], flush_logs()).

release_hook(Config) ->
    erlpy_test:doc("priv/release/erlpy_venv_hook, run as a relx pre_start hook would with "
                   "a release's layout: builds the environments of the pools of its "
                   "sys.config (exit 0), and exits 1 naming a pool whose environment fails"),
    Root = filename:join(?config(priv_dir, Config), "release"),
    ok = filelib:ensure_path(filename:join(Root, "lib")),
    ok = filelib:ensure_path(filename:join(Root, "releases/0.1.0")),
    _ = file:make_symlink(code:lib_dir(erlpy), filename:join(Root, "lib/erlpy-0.1.0")),
    Env = env_dir(Config, "released"),
    SysConfig = filename:join(Root, "releases/0.1.0/sys.config"),
    Write = fun(Pools) ->
        ok = file:write_file(SysConfig, io_lib:format("~p.~n", [[{erlpy, [{pools, Pools}]}]]))
    end,
    Write(#{default => disabled, released => opts(Config, Env, [pkg("greeter")])}),
    Hook = filename:join(code:priv_dir(erlpy), "release/erlpy_venv_hook"),
    HookEnv = [{"RELEASE_ROOT_DIR", Root}, {"REL_VSN", "0.1.0"}],
    {0, Out} = run("/bin/sh", [Hook], HookEnv),
    ct:log("~ts", [Out]),
    ?assertNotEqual(nomatch, binary:match(Out, iolist_to_binary(["erlpy: pool released runs ", Env, "/bin/python"]))),
    %% what the build logged is written before the hook's VM halts
    ?assertNotEqual(nomatch, binary:match(Out, iolist_to_binary(["erlpy: virtualenv ", Env, " ready in "]))),
    #{state := <<"ready">>} = state(Env),
    Write(#{default => disabled, broken => opts(Config, env_dir(Config, "released_broken"), [pkg("broken")])}),
    {1, Out2} = run("/bin/sh", [Hook], HookEnv),
    ct:log("~ts", [Out2]),
    ?assertNotEqual(nomatch, binary:match(Out2, <<"the environment of pool broken cannot be built: cannot install ">>)).

relx_release(Config) ->
    erlpy_test:doc("a relx release with erlpy's hook as its pre_start hook "
                   "(docs/python-environments.md#releases), built offline with erlpy as a "
                   "_checkouts link: `bin/relapp daemon` builds the environment of the pool "
                   "of its sys.config before the node starts, and the pool runs it"),
    Rebar3 = os:find_executable("rebar3"),
    is_list(Rebar3) orelse ct:fail(no_rebar3),
    App = filename:join(?config(priv_dir, Config), "relapp"),
    Env = env_dir(Config, "relx"),
    ok = filelib:ensure_path(filename:join(App, "_checkouts")),
    ok = filelib:ensure_path(filename:join(App, "src")),
    ok = filelib:ensure_path(filename:join(App, "config")),
    ok = filelib:ensure_path(filename:join(App, "home")),
    ok = file:make_symlink(root(), filename:join(App, "_checkouts/erlpy")),
    Files = [{"rebar.config",
              "{erl_opts, [debug_info]}.\n"
              "{deps, [{erlpy, {git, \"file:///nonexistent/erlpy.git\", {branch, \"main\"}}}]}.\n"
              "{relx, [{release, {relapp, \"0.1.0\"}, [relapp]},\n"
              "        {mode, prod},\n"
              "        {sys_config, \"config/sys.config\"},\n"
              "        {vm_args_src, \"config/vm.args.src\"},\n"
              "        {overlay, [{copy, \"_checkouts/erlpy/priv/release/erlpy_venv_hook\",\n"
              "                    \"bin/hooks/erlpy_venv\"}]},\n"
              "        {extended_start_script_hooks, [{pre_start, [{custom, \"hooks/erlpy_venv\"}]}]}]}.\n"},
             {"src/relapp.app.src",
              "{application, relapp, [{description, \"relx + erlpy venv\"}, {vsn, \"0.1.0\"},\n"
              "                       {applications, [kernel, stdlib, erlpy]}, {env, []}]}.\n"},
             {"config/vm.args.src", "-sname ${RELEASE_NODE}\n-setcookie relapp\n"},
             {"config/sys.config",
              io_lib:format("~p.~n", [[{erlpy, [{pools, #{default => disabled,
                                                          relpool => opts(Config, Env, [pkg("greeter")])}}]}]])}],
    _ = [ok = file:write_file(filename:join(App, F), Text) || {F, Text} <- Files],
    Offline = [{"HOME", filename:join(App, "home")}, {"HEX_OFFLINE", "1"}, {"ERL_LIBS", false},
               {"REBAR_CONFIG", false}],
    {0, Built} = run("/bin/sh", ["-c", "cd " ++ App ++ " && exec rebar3 release"], Offline),
    ct:log("~ts", [Built]),
    Bin = filename:join(App, "_build/default/rel/relapp/bin/relapp"),
    Node = [{"RELEASE_NODE", "erlpy_relx_" ++ integer_to_list(erlang:unique_integer([positive]))}],
    try
        {0, Started} = run(Bin, ["daemon"], Node),
        ct:log("daemon: ~ts", [Started]),
        ?assertNotEqual(nomatch, binary:match(Started, iolist_to_binary(["erlpy: pool relpool runs ", Env, "/bin/python"]))),
        #{state := <<"ready">>} = state(Env),
        ok = erlpy_test:wait_until(fun() -> element(1, run(Bin, ["ping"], Node)) =:= 0 end, 30000),
        %% eval prints what the expression returns
        Eval = "{ok, P} = py:eval(<<\"__import__('sys').prefix\">>, #{}, #{pool => relpool}), "
               "P =:= <<\"" ++ Env ++ "\">>.",
        ?assertEqual({0, <<"true\n">>}, run(Bin, ["eval", Eval], Node))
    after
        ct:log("stop: ~p", [run(Bin, ["stop"], Node)])
    end.

application_defaults(Config) ->
    erlpy_test:doc("venv and requirements as application-wide defaults: every pool runs the "
                   "environment; a pool's own venv wins"),
    Env = env_dir(Config, "defaults"),
    Other = env_dir(Config, "defaults_other"),
    ok = application:set_env(erlpy, defaults, maps:remove(size, opts(Config, Env, [pkg("greeter")]))),
    try
        {ok, _} = py:start_pool(d1, #{size => 1}),
        ?assertEqual({ok, list_to_binary(Env)}, prefix(d1)),
        {ok, _} = py:start_pool(d2, #{size => 1, venv => Other}),
        ?assertEqual({ok, list_to_binary(Other)}, prefix(d2))
    after
        application:unset_env(erlpy, defaults)
    end.

%%====================================================================
%% Helpers
%%====================================================================

opts(Config, Dir, Reqs) ->
    #{size => 1, python => ?BARE, venv => Dir, requirements => Reqs, env => ?config(offline, Config)}.

env_dir(Config, Name) ->
    filename:join(?config(dir, Config), Name).

%% A package of test/venv.
pkg(Name) ->
    filename:join([root(), "test", "venv", Name]).

root() ->
    Source = proplists:get_value(source, py:module_info(compile)),
    filename:dirname(filename:dirname(filename:dirname(Source))).

prefix(Pool) ->
    py:eval(<<"__import__('sys').prefix">>, #{}, #{pool => Pool}).

state(Dir) ->
    {ok, Bin} = file:read_file(filename:join(Dir, ".erlpy-venv")),
    maps:from_list([{binary_to_atom(K), V} || L <- binary:split(Bin, <<"\n">>, [global]),
                                              [K, V] <- [binary:split(L, <<": ">>)]]).

list_dir(Dir) ->
    {ok, Files} = file:list_dir(Dir),
    {ok, lists:sort([list_to_binary(F) || F <- Files])}.

%% {ExitStatus, Output} of a program (stderr too), with extra environment.
run(Exe, Args) -> run(Exe, Args, []).
run(Exe, Args, Env) ->
    Port = open_port({spawn_executable, Exe},
                     [{args, Args}, {env, Env}, exit_status, stderr_to_stdout, binary, hide]),
    output(Port, []).

output(Port, Acc) ->
    receive
        {Port, {data, D}} -> output(Port, [D | Acc]);
        {Port, {exit_status, S}} -> {S, iolist_to_binary(lists:reverse(Acc))}
    after 180000 -> ct:fail({timeout, iolist_to_binary(lists:reverse(Acc))})
    end.

%% The logger handler: erlpy_venv's events (notice and above; info is below the test
%% configuration's level) go to the suite's process.
log(#{level := Level, msg := Msg, meta := #{erlpy := venv} = Meta}, #{config := #{pid := Pid}}) ->
    Text = case Msg of
        {string, S} -> unicode:characters_to_binary(S);
        {report, R} -> iolist_to_binary(io_lib:format("~p", [R]));
        {Format, Args} -> unicode:characters_to_binary(io_lib:format(Format, Args))
    end,
    Pid ! {venv_log, {Level, Text, Meta}};
log(_, _) ->
    ok.

flush_logs() ->
    receive {venv_log, L} -> [L | flush_logs()] after 0 -> [] end.

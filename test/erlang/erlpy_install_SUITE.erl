%% erlpy as others adopt it (docs/install.md), built from scratch in a temporary directory,
%% offline (HOME is fresh, so rebar3 has no cache, no plugins, no global config; proxies
%% point at a closed port):
%%
%%   rebar3      test/install/rebar_app, a rebar3 application with its own priv/python,
%%               depending on erlpy as a git dependency (a file:// snapshot of this
%%               checkout, by tag, branch and ref) and as a _checkouts link to this
%%               checkout's root; then `rebar3 release` of it, started as a daemon, and
%%               `rebar3 tar`.
%%   scripts     erl -eval and escripts: a call before erlpy is started, a default pool
%%               that cannot start (non-zero exit, the line that says what to do),
%%               examples/batch.escript run from another directory.
%%   messages    what a pool that cannot start says: no interpreter, not Python, Python
%%               too old, msgpack missing.
%%
%% Every tool these need (rebar3, git, erl, escript, bash) must be there: a missing one
%% fails the suite, nothing is skipped. The Mix side (path dependency, mix release,
%% Mix.install) is in test/elixir/mix_app_test.exs and scripts_test.exs.
-module(erlpy_install_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("kernel/include/file.hrl").
-compile([export_all, nowarn_export_all]).

-define(URL_IN_FIXTURE, "https://git.example.com/erlpy.git").

suite() ->
    [{timetrap, {minutes, 10}}].

all() ->
    [{group, rebar3}, {group, scripts}, {group, messages}].

groups() ->
    [{rebar3, [sequence], [git_dependency, git_dependency_tag_and_ref, checkouts_link,
                           release_daemon_and_tar]},
     {scripts, [], [call_before_start, script_default_pool_fails, erl_eval_recipe,
                    batch_escript_from_elsewhere]},
     {messages, [], [message_python_not_found, message_python_is_a_directory,
                     message_relative_python_resolved, message_not_python, message_python_too_old,
                     message_missing_msgpack, message_bad_options]}].

init_per_suite(Config) ->
    Missing = [T || T <- ["rebar3", "git", "erl", "escript", "bash", "tar"],
                    os:find_executable(T) =:= false],
    Missing =:= [] orelse ct:fail({tools_missing, Missing}),
    Tmp = filename:join(?config(priv_dir, Config), "install"),
    ok = filelib:ensure_path(filename:join(Tmp, "home")),
    [{tmp, Tmp}, {root, root()} | Config].

end_per_suite(_Config) ->
    ok.

init_per_group(rebar3, Config) ->
    Tmp = ?config(tmp, Config),
    Repo = filename:join(Tmp, "erlpy"),
    {0, Out} = sh(snapshot_script(?config(root, Config), Repo), Tmp, Config),
    ct:log("snapshot of the checkout: ~ts", [Out]),
    [{repo, Repo} | Config];
init_per_group(_, Config) ->
    Config.

end_per_group(_, _Config) ->
    ok.

%%====================================================================
%% rebar3
%%====================================================================

git_dependency(Config) ->
    erlpy_test:doc("a rebar3 application with erlpy as a git dependency (branch) compiles "
                   "offline and calls its own priv/python through {priv, App, \"python\"}"),
    App = fixture(Config, "git_app", "file://" ++ ?config(repo, Config)),
    {0, Out} = sh("rebar3 compile", App, Config),
    ct:log("~ts", [Out]),
    %% rebar3 built erlpy as a rebar3 application (not "type mix"), priv included
    Lib = filename:join(App, "_build/default/lib/erlpy"),
    ?assert(filelib:is_regular(filename:join(Lib, "ebin/py.beam"))),
    ?assert(filelib:is_regular(filename:join(Lib, "priv/python/erlpy/_boot.py"))),
    ?assertEqual(expected_check(), run_check(App, "_build/default/lib/*/ebin", Config)).

git_dependency_tag_and_ref(Config) ->
    erlpy_test:doc("the same git dependency by tag and by ref"),
    Repo = ?config(repo, Config),
    {0, Sha} = sh("git rev-parse HEAD", Repo, Config),
    lists:foreach(
        fun({Name, Spec}) ->
            App = fixture(Config, Name, "file://" ++ Repo),
            ok = replace_in(filename:join(App, "rebar.config"), "{branch, \"main\"}", Spec),
            {0, Out} = sh("rebar3 compile", App, Config),
            ct:log("~s: ~ts", [Name, Out]),
            ?assert(filelib:is_regular(filename:join(App, "_build/default/lib/erlpy/ebin/py.beam")))
        end,
        [{"tag_app", "{tag, \"v0.1.0\"}"},
         {"ref_app", "{ref, \"" ++ string:trim(binary_to_list(Sha)) ++ "\"}"}]).

checkouts_link(Config) ->
    erlpy_test:doc("a _checkouts link to the root of this checkout: rebar3 builds it, "
                   "fetches nothing (the git URL leads nowhere), and the application runs"),
    App = fixture(Config, "checkouts_app", "file:///nonexistent/erlpy.git"),
    ok = file:make_dir(filename:join(App, "_checkouts")),
    ok = file:make_symlink(?config(root, Config), filename:join(App, "_checkouts/erlpy")),
    {0, Out} = sh("rebar3 compile", App, Config),
    ct:log("~ts", [Out]),
    ?assertEqual(expected_check(),
                 run_check(App, "_build/default/checkouts/*/ebin _build/default/lib/*/ebin", Config)).

release_daemon_and_tar(Config) ->
    erlpy_test:doc("rebar3 release of the git-dependency application: the Python package "
                   "is copied into the release (and into rebar3 tar); the release, started "
                   "as a daemon from another directory, calls Python and streams"),
    App = filename:join(?config(tmp, Config), "git_app"),
    {0, Out} = sh("rebar3 release && rebar3 tar", App, Config),
    ct:log("~ts", [Out]),
    Rel = filename:join(App, "_build/default/rel/rebar_app"),
    Boot = "lib/erlpy-0.1.0/priv/python/erlpy/_boot.py",
    {ok, #file_info{type = directory}} =
        file:read_link_info(filename:join(Rel, "lib/erlpy-0.1.0/priv/python")),
    ?assert(filelib:is_regular(filename:join(Rel, Boot))),
    {ok, Files} = erl_tar:table(filename:join(Rel, "rebar_app-0.1.0.tar.gz"), [compressed]),
    ?assert(lists:member(Boot, Files)),
    Node = "erlpy_install_" ++ integer_to_list(erlang:unique_integer([positive])),
    Env = [{"RELEASE_NODE", Node}],
    Bin = filename:join(Rel, "bin/rebar_app"),
    Result = filename:join(?config(tmp, Config), "release_check"),
    Elsewhere = ?config(tmp, Config),
    try
        {0, _} = sh(Bin ++ " daemon", Elsewhere, Config, Env),
        ok = erlpy_test:wait_until(
               fun() -> element(1, sh(Bin ++ " ping", Elsewhere, Config, Env)) =:= 0 end, 30000),
        Eval = io_lib:format("file:write_file(~p, term_to_binary(rebar_app:check())).", [Result]),
        {0, EvalOut} = sh(Bin ++ " eval " ++ shq(lists:flatten(Eval)), Elsewhere, Config, Env),
        ct:log("eval: ~ts", [EvalOut]),
        {ok, Bin1} = file:read_file(Result),
        ?assertEqual(expected_check(), binary_to_term(Bin1))
    after
        ct:log("stop: ~p", [sh(Bin ++ " stop", Elsewhere, Config, Env)])
    end.

%%====================================================================
%% scripts
%%====================================================================

call_before_start(Config) ->
    erlpy_test:doc("a call made before erlpy is started says so: {error, {not_started, erlpy}}"),
    {0, Out} = erl_eval_cmd("io:format(\"~p~n\", [py:eval(<<\"1\">>)]), halt().", Config, []),
    ?assertEqual(<<"{error,{not_started,erlpy}}\n">>, Out).

script_default_pool_fails(Config) ->
    erlpy_test:doc("a script whose default pool cannot start exits non-zero, with the line "
                   "that says what to do; calls after it say why there is no pool"),
    Script = "case application:ensure_all_started(erlpy) of"
             "  {ok, _} -> halt(0);"
             "  {error, _} -> io:format(\"call: ~w~n\", [py:eval(<<\"1\">>)]), halt(3)"
             " end.",
    {3, Out} = erl_eval_cmd(Script, Config, [{"ERLPY_PYTHON", "/nonexistent/python3"}]),
    ct:log("~ts", [Out]),
    Line = <<"no Python interpreter at /nonexistent/python3: install Python 3.11+ with msgpack, "
             "or set the pool option python (or $ERLPY_PYTHON) to such an interpreter">>,
    ?assertNotEqual(nomatch, binary:match(Out, <<"erlpy: pool default cannot start: ", Line/binary>>)),
    ?assertNotEqual(nomatch, binary:match(Out, <<"call: {error,{no_pool,default,">>)),
    %% and the escript of examples/ exits non-zero, saying the same
    {Status, EOut} = sh("escript " ++ filename:join(?config(root, Config), "examples/batch.escript") ++ " 1",
                        ?config(tmp, Config), Config,
                        [{"ERLPY_PYTHON", "/nonexistent/python3"}, {"ERL_LIBS", lib_dir()}]),
    ct:log("~ts", [EOut]),
    ?assertNotEqual(0, Status),
    ?assertNotEqual(nomatch, binary:match(EOut, Line)).

erl_eval_recipe(Config) ->
    erlpy_test:doc("docs/install.md: erl -eval with erlpy on ERL_LIBS"),
    {0, Out} = sh("erl -noshell -eval " ++ shq(install_md_erl_eval()), ?config(tmp, Config), Config,
                  [{"ERL_LIBS", lib_dir()}]),
    ?assertEqual(<<"{ok,42}\n">>, Out).

batch_escript_from_elsewhere(Config) ->
    erlpy_test:doc("examples/batch.escript run from another directory, without ERLPY_PYTHON: "
                   "it finds the checkout's build and its .venv"),
    Root = ?config(root, Config),
    Venv = filename:join(Root, ".venv/bin/python"),
    filelib:is_regular(Venv) orelse ct:fail({no_project_venv, Venv, "run make test"}),
    {0, Out} = sh("escript " ++ filename:join(Root, "examples/batch.escript")
                  ++ " 'iter([__import__(\"sys\").prefix])'",
                  ?config(tmp, Config), Config, [{"ERLPY_PYTHON", false}, {"ERL_LIBS", lib_dir()}]),
    ?assertEqual(iolist_to_binary(["iter([__import__(\"sys\").prefix]) => [<<\"",
                                   filename:join(Root, ".venv"), "\">>]\n",
                                   "-- 1 items: 1 ok, 0 failed\n"]), Out).

%%====================================================================
%% messages
%%====================================================================

message_python_not_found(_Config) ->
    erlpy_test:doc("no interpreter: the message names it and the fix"),
    ?assertEqual(<<"nopython3 is not on PATH: install Python 3.11+ with msgpack, or set the pool "
                   "option python (or $ERLPY_PYTHON) to such an interpreter">>,
                 start_message(#{python => "nopython3"})).

message_python_is_a_directory(Config) ->
    erlpy_test:doc("a directory given as the interpreter (a virtualenv, most likely): the "
                   "message says it is one and names its interpreter when it has one"),
    Venv = filename:join(?config(priv_dir, Config), "a_venv"),
    Python = script(Config, "a_venv/bin/python", "#!/bin/sh\nexit 1\n"),
    ?assertEqual(<<(list_to_binary(Venv))/binary, " is a directory, not an interpreter: set the pool "
                   "option python (or $ERLPY_PYTHON) to its ", (list_to_binary(Python))/binary,
                   ", or the pool option venv to the directory">>,
                 start_message(#{python => Venv})),
    Dir = ?config(priv_dir, Config),
    ?assertEqual(<<(list_to_binary(Dir))/binary, " is a directory, not an interpreter: set the pool "
                   "option python (or $ERLPY_PYTHON) to a Python 3.11+ interpreter">>,
                 start_message(#{python => Dir})).

message_relative_python_resolved(_Config) ->
    erlpy_test:doc("a relative interpreter path that names nothing: the message shows where it "
                   "was looked for (a release's start script changes the working directory)"),
    {ok, Cwd} = file:get_cwd(),
    ?assertEqual(<<"no Python interpreter at venv/bin/python (", (list_to_binary(Cwd))/binary,
                   "/venv/bin/python): install Python 3.11+ with msgpack, or set the pool option "
                   "python (or $ERLPY_PYTHON) to such an interpreter">>,
                 start_message(#{python => "venv/bin/python"})).

message_not_python(Config) ->
    erlpy_test:doc("an executable that is not Python"),
    Fake = script(Config, "not_python", "#!/bin/sh\necho 'hello from sh'\nexit 2\n"),
    Message = start_message(#{python => Fake}),
    %% The exit status is known unless erlpy's first write found the pipe closed already
    %% (the port then ends with epipe, before the status comes): both say what to do.
    Expected = fun(How) ->
        <<(list_to_binary(Fake))/binary, " is not a Python interpreter (it ", How/binary,
          "): set the pool option python (or $ERLPY_PYTHON) to a Python 3.11+ interpreter">>
    end,
    ?assert(lists:member(Message, [Expected(<<"exited with status 2">>), Expected(<<"exited">>)]),
            Message).

message_python_too_old(Config) ->
    erlpy_test:doc("a Python older than 3.11 (here a stand-in that says it is 3.8 and fails "
                   "on erlpy's code as Python 3.8 does)"),
    Fake = script(Config, "python3.8",
                  "#!/bin/sh\n"
                  "if [ \"$1\" = --version ]; then echo 'Python 3.8.18'; exit 0; fi\n"
                  "echo \"TypeError: 'type' object is not subscriptable\" >&2; exit 1\n"),
    ?assertEqual(<<(list_to_binary(Fake))/binary, " is Python 3.8; erlpy needs Python 3.11 or "
                   "newer: set the pool option python (or $ERLPY_PYTHON) to a newer interpreter">>,
                 start_message(#{python => Fake})).

message_missing_msgpack(Config) ->
    erlpy_test:doc("a Python without msgpack: the message is the pip command for that "
                   "interpreter"),
    Dir = filename:join(?config(priv_dir, Config), "nomsgpack"),
    {0, _} = sh("python3 -m venv --without-pip " ++ Dir, ?config(priv_dir, Config), Config),
    Python = list_to_binary(filename:join(Dir, "bin/python")),
    {error, {python_start_failed, #{reason := missing_module, python := Tried} = D}} =
        start(#{python => Python}),
    ct:log("~p", [D]),
    ?assertEqual(<<Tried/binary, " cannot import msgpack: run `", Tried/binary,
                   " -m pip install msgpack`, or set the pool option python (or $ERLPY_PYTHON) "
                   "to a Python that has it">>, maps:get(message, D)).

message_bad_options(Config) ->
    erlpy_test:doc("bad_option names the key and the value, also for a path that does not "
                   "exist and a priv directory of an application that does not"),
    Missing = filename:join(?config(priv_dir, Config), "no_such_dir"),
    ?assertEqual({error, {bad_option, {size, 0}}}, start(#{size => 0})),
    ?assertEqual({error, {bad_option, {path, Missing}}}, start(#{path => [Missing]})),
    ?assertEqual({error, {bad_option, {path, {priv, no_such_app, "python"}}}},
                 start(#{path => [{priv, no_such_app, "python"}]})),
    ?assertEqual({error, {bad_option, {cd, Missing}}}, start(#{cd => Missing})).

%%====================================================================
%% Helpers
%%====================================================================

%% The checkout: two levels above the directory py.erl was compiled from.
root() ->
    Source = proplists:get_value(source, py:module_info(compile)),
    filename:dirname(filename:dirname(filename:dirname(Source))).

%% The directory of this build's erlpy (for ERL_LIBS).
lib_dir() ->
    filename:dirname(code:lib_dir(erlpy)).

%% The application of test/install/rebar_app, copied to Name with its erlpy URL replaced.
fixture(Config, Name, Url) ->
    Dir = filename:join(?config(tmp, Config), Name),
    Src = filename:join(?config(root, Config), "test/install/rebar_app"),
    {0, _} = sh("rm -rf " ++ shq(Dir) ++ " && cp -r " ++ shq(Src) ++ " " ++ shq(Dir), "/", Config),
    ok = replace_in(filename:join(Dir, "rebar.config"), ?URL_IN_FIXTURE, Url),
    Dir.

replace_in(File, From, To) ->
    {ok, Bin} = file:read_file(File),
    New = string:replace(Bin, From, To),
    ?assertNotEqual(Bin, iolist_to_binary(New)),
    file:write_file(File, New).

expected_check() ->
    #{greet => {ok, <<"Hello, Ada!">>},
      words => {ok, [<<"streamed">>, <<"from">>, <<"Python">>]},
      erlpy_priv => true}.

%% Start the application with its sys.config, run rebar_app:check/0, return its result.
run_check(App, EbinGlobs, Config) ->
    Out = filename:join(App, "check.result"),
    Eval = io_lib:format("{ok, _} = application:ensure_all_started(rebar_app), "
                         "ok = file:write_file(~p, term_to_binary(rebar_app:check())), halt().",
                         [Out]),
    Cmd = "erl -noshell -config config/sys -pa " ++ EbinGlobs ++ " -eval " ++ shq(lists:flatten(Eval)),
    {Status, Output} = sh(Cmd, App, Config),
    ct:log("~ts: ~p~n~ts", [Cmd, Status, Output]),
    0 = Status,
    {ok, Bin} = file:read_file(Out),
    binary_to_term(Bin).

erl_eval_cmd(Script, Config, Env) ->
    sh("erl -noshell -pa " ++ shq(filename:dirname(code:which(py))) ++ " -eval " ++ shq(Script),
       ?config(tmp, Config), Config, Env).

%% The erl -eval line of docs/install.md.
install_md_erl_eval() ->
    {ok, Bin} = file:read_file(filename:join(root(), "docs/install.md")),
    {match, [Expr]} = re:run(Bin, "\\$ erl -noshell -eval '([^']+)'", [{capture, all_but_first, list}]),
    Expr.

start(Opts) ->
    Name = list_to_atom("install_" ++ integer_to_list(erlang:unique_integer([positive]))),
    {ok, _} = application:ensure_all_started(erlpy),
    case py:start_pool(Name, maps:merge(#{size => 1}, Opts)) of
        {ok, _} -> ok = py:stop_pool(Name), error(started);
        Error -> Error
    end.

start_message(Opts) ->
    {error, {python_start_failed, #{message := Message} = D}} = start(Opts),
    ct:log("~p", [D]),
    Message.

script(Config, Name, Text) ->
    File = filename:join(?config(priv_dir, Config), Name),
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Text),
    ok = file:change_mode(File, 8#755),
    File.

snapshot_script(Root, Repo) ->
    "set -e\n"
    "rm -rf " ++ shq(Repo) ++ " && mkdir -p " ++ shq(Repo) ++ "\n"
    "cd " ++ shq(Root) ++ "\n"
    "(git ls-files; git ls-files --others --exclude-standard) | "
    "while read -r f; do if [ -e \"$f\" ] || [ -L \"$f\" ]; then echo \"$f\"; fi; done "
    "| tar cf - -T - | tar xf - -C " ++ shq(Repo) ++ "\n"
    "cd " ++ shq(Repo) ++ "\n"
    "git init -q -b main && git add -A && git -c user.name=t -c user.email=t@t commit -qm snapshot "
    "&& git tag v0.1.0\n".

%% Run a bash script in Dir, offline: {ExitStatus, Output (stdout and stderr)}.
sh(Script, Dir, Config) ->
    sh(Script, Dir, Config, []).

sh(Script, Dir, Config, Env) ->
    Home = filename:join(?config(tmp, Config), "home"),
    Unset = [{K, false} || KV <- os:getenv(), [K | _] <- [string:split(KV, "=")],
                           lists:prefix("REBAR_", K) orelse lists:prefix("MIX_", K) orelse
                           lists:member(K, ["ERL_LIBS", "ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS",
                                            "ERL_COMPILER_OPTIONS"])],
    Offline = [{"HOME", Home}, {"HEX_OFFLINE", "1"},
               {"HTTP_PROXY", "http://127.0.0.1:9"}, {"HTTPS_PROXY", "http://127.0.0.1:9"},
               {"http_proxy", "http://127.0.0.1:9"}, {"https_proxy", "http://127.0.0.1:9"},
               {"ERLPY_PYTHON", erlpy_test:python()}],
    AllEnv = maps:to_list(maps:merge(maps:from_list(Unset ++ Offline), maps:from_list(Env))),
    Port = open_port({spawn_executable, os:find_executable("bash")},
                     [{args, ["-c", "exec </dev/null\n" ++ Script]}, {cd, Dir}, {env, AllEnv},
                      exit_status, stderr_to_stdout, binary, hide]),
    output(Port, [], erlang:monotonic_time(millisecond) + 300000).

output(Port, Acc, Deadline) ->
    receive
        {Port, {data, Data}} -> output(Port, [Data | Acc], Deadline);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(lists:reverse(Acc))}
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
        port_close(Port),
        ct:fail({timeout, iolist_to_binary(lists:reverse(Acc))})
    end.

shq(Text) ->
    "'" ++ lists:flatten(string:replace(Text, "'", "'\\''", all)) ++ "'".

%% @doc Python environments managed by pools: the `venv' and `requirements' options.
%%
%% A pool with `venv => Dir' and `requirements => [Spec]' runs its workers with
%% `Dir/bin/python', a virtualenv built from the pool's `python' (or the default
%% interpreter) holding `msgpack' and the requirements. The environment is built once:
%%
%%   - `Dir/.erlpy-venv' holds a fingerprint of the interpreter (path and version) and
%%     of the requirements (with the content of local requirement files and of the
%%     build files of local projects). It says `state: ready' only once everything is
%%     installed; an environment being built or updated says `state: building', and no
%%     pool starts on it. An unchanged spec finds it ready and starts at once.
%%   - Builds take an exclusive lock: a `flock' on `Dir ++ ".lock"' held by a small
%%     Python process (`erlpy/venvtool.py lock') for as long as the builder lives, so
%%     pools of one node, or of several nodes sharing the directory, build it once:
%%     the others wait, then find it ready. The kernel drops the lock with its holder;
%%     no stale lock survives a crash.
%%   - A changed requirement list updates the environment in place (what is installed
%%     already stays); another interpreter, or a Python version change, rebuilds it.
%%
%% `uv' is used when it is on the `PATH' of the VM, else `python -m venv' and pip. pip's
%% own configuration (its files and `PIP_*' variables, with the pool's `env' applied)
%% decides where packages come from, for uv too: its index, extra indexes, find-links,
%% no-index, trusted hosts and certificate are passed on to uv.
%%
%% `venv' alone uses the environment as it is: its `bin/python' must exist (and have
%% `msgpack', which the workers' start checks).
-module(erlpy_venv).

-export([ensure/1, prepare/2, build/1, build_all/0, release_hook/1]).

-include_lib("kernel/include/logger.hrl").

-define(STATE_FILE, ".erlpy-venv").
-define(FORMAT, 1).

%%====================================================================
%% Making sure of the environment
%%====================================================================

%% @doc For a validated pool configuration: nothing to do without `venv'; with `venv'
%% alone, checks the environment is there and complete; with requirements, makes sure
%% the environment is built from the current spec (building or updating it under the
%% lock) and returns the configuration with `python' set to the environment's.
-spec ensure(map()) -> {ok, map()} | {error, {python_start_failed, {venv, erlpy_venv_spec:detail()}}}.
ensure(#{venv := undefined} = Config) ->
    {ok, Config};
ensure(#{venv := Dir, requirements := []} = Config) ->
    Python = erlpy_venv_spec:venv_python(Dir),
    case {filelib:is_regular(Python), read_state(Dir)} of
        {false, _} ->
            erlpy_venv_spec:failed(Dir, no_venv, <<"no virtualenv at ", (erlpy_venv_spec:bin(Dir))/binary, " (no bin/python): "
                                   "create it, or give the pool requirements so that erlpy "
                                   "builds it (requirements => [\"msgpack\"] for nothing "
                                   "more than erlpy needs)">>, #{});
        {true, #{state := <<"building">>}} ->
            incomplete(Dir);
        {true, _} ->
            {ok, Config#{python := Python}}
    end;
ensure(#{venv := Dir, python := Base, requirements := Reqs} = Config) ->
    Env = maps:get(env, Config, []),
    case erlpy_venv_tool:probe(Base, Dir, Env) of
        {ok, Version, PipConf} ->
            Fingerprint = fingerprint(Base, Version, Reqs),
            case is_ready(Dir, Fingerprint) of
                true ->
                    {ok, Config#{python := erlpy_venv_spec:venv_python(Dir)}};
                false ->
                    Build = #{dir => Dir, base => Base, version => Version, reqs => Reqs,
                              env => Env, pip => PipConf, fingerprint => Fingerprint},
                    case locked(Build, fun() -> build_locked(Build) end) of
                        ok -> {ok, Config#{python := erlpy_venv_spec:venv_python(Dir)}};
                        {error, _} = Error -> Error
                    end
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc Before a pool is started under erlpy's supervisor: builds its environment in the
%% caller's process, so that a long build does not hold the supervisor. A failure is
%% remembered as the pool's start failure and returned; anything else (bad options, a
%% running pool) is left to the start itself.
-spec prepare(atom(), term()) -> ok | {error, term()}.
prepare(Name, Opts) ->
    case whereis(erlpy_sup) =/= undefined andalso erlpy_pool:meta(Name) =:= undefined andalso
         erlpy_pool:validate(Opts) of
        {ok, #{venv := Dir, requirements := [_ | _]} = Config} when Dir =/= undefined ->
            case ensure(Config) of
                {ok, _} -> ok;
                {error, _} = Error -> erlpy_pool_sup:failed(Name, Error)
            end;
        _ ->
            ok
    end.

%% @doc Build (or check) the environment of a pool ahead of time: `Pool' is the name of
%% a pool in the application's `pools' (with its `defaults'), or pool options. Returns
%% the interpreter the pool will run. For releases: run it when the release is built or
%% installed (see release_hook/1), so that the first start installs nothing.
-spec build(atom() | map() | list()) -> {ok, binary()} | {error, term()}.
build(Pool) when is_atom(Pool) ->
    _ = application:load(erlpy),
    case maps:find(Pool, configured_pools()) of
        {ok, Opts} -> build(Opts);
        error -> {error, {no_pool, Pool}}
    end;
build(Opts) ->
    _ = application:load(erlpy),
    case erlpy_pool:validate(Opts) of
        {ok, Config} ->
            case ensure(Config) of
                {ok, #{python := Python}} -> {ok, erlpy_venv_spec:bin(Python)};
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc build/1 for every pool of the application's `pools' (and `default') that has a
%% `venv': `{ok, [{Pool, Python}]}', or the first error as `{error, {Pool, Reason}}'.
-spec build_all() -> {ok, [{atom(), binary()}]} | {error, {atom(), term()}}.
build_all() ->
    _ = application:load(erlpy),
    Defaults = options(application:get_env(erlpy, defaults, #{})),
    Pools = [{Name, Opts} || {Name, Opts} <- lists:sort(maps:to_list(configured_pools())),
                             Opts =/= disabled,
                             maps:get(venv, maps:merge(Defaults, options(Opts)), undefined) =/= undefined],
    lists:foldl(
        fun({Name, Opts}, {ok, Acc}) ->
                case build(Opts) of
                    {ok, Python} -> {ok, Acc ++ [{Name, Python}]};
                    {error, Reason} -> {error, {Name, Reason}}
                end;
           (_, Error) ->
                Error
        end,
        {ok, []}, Pools).

%% @doc The release hook: loads a release's `sys.config' (the path given) into the
%% application environment, then build_all/0. Called by `priv/release/erlpy_venv'
%% (a relx `pre_start' hook) through `erl -eval'; halts with status 0, or 1 after
%% printing why.
-spec release_hook([string()]) -> no_return().
release_hook(Args) ->
    Result =
        try
            _ = [begin
                     {ok, [Terms]} = file:consult(Config),
                     _ = [application:load(App) || {App, _} <- Terms],
                     [application:set_env(App, K, V, [{persistent, true}])
                      || {App, Env} <- Terms, {K, V} <- Env]
                 end || Config <- Args, filelib:is_regular(Config)],
            build_all()
        catch
            C:R -> {error, {hook, {C, R}}}
        end,
    %% What the build logged (the "ready" notice) is written before the VM halts.
    _ = [logger_std_h:filesync(Id) || #{id := Id, module := logger_std_h} <- logger:get_handler_config()],
    case Result of
        {ok, Built} ->
            _ = [io:format("erlpy: pool ~ts runs ~ts~n", [N, P]) || {N, P} <- Built],
            erlang:halt(0);
        {error, {Name, {python_start_failed, {venv, #{message := M}}}}} ->
            io:format(standard_error, "erlpy: the environment of pool ~p cannot be built: ~ts~n", [Name, M]),
            erlang:halt(1);
        {error, Reason} ->
            io:format(standard_error, "erlpy: ~tp~n", [Reason]),
            erlang:halt(1)
    end.

-spec configured_pools() -> map().
configured_pools() ->
    maps:merge(#{default => #{}}, options(application:get_env(erlpy, pools, #{}))).

-spec options(term()) -> map().
options(M) when is_map(M) -> M;
options(L) when is_list(L) -> maps:from_list([{K, V} || {K, V} <- L]);
options(_) -> #{}.

%%====================================================================
%% Building
%%====================================================================

-spec is_ready(string(), binary()) -> boolean().
is_ready(Dir, Fingerprint) ->
    case read_state(Dir) of
        #{state := <<"ready">>, fingerprint := Fingerprint} -> filelib:is_regular(erlpy_venv_spec:venv_python(Dir));
        _ -> false
    end.

%% Under the lock: ready by now (another builder), or create / update / rebuild.
-spec build_locked(map()) -> ok | {error, term()}.
build_locked(#{dir := Dir, fingerprint := Fingerprint} = B) ->
    case is_ready(Dir, Fingerprint) of
        true ->
            ok;
        false ->
            case plan(B) of
                {error, _} = Error -> Error;
                Plan -> run_build(Plan, B)
            end
    end.

-spec plan(map()) -> create | update | recreate | {error, term()}.
plan(#{dir := Dir} = B) ->
    case {file:list_dir(Dir), read_state(Dir)} of
        {{error, enoent}, _} -> create;
        {{ok, []}, _} -> create;
        {{ok, _}, none} ->
            case filelib:is_regular(creating(Dir)) of
                %% A creation of ours that was cut short: it is ours to redo.
                true -> recreate;
                false -> not_managed(Dir)
            end;
        {{ok, _}, #{python := P}} ->
            case P =:= python_line(B) andalso filelib:is_regular(erlpy_venv_spec:venv_python(Dir)) of
                true -> update;
                false -> recreate
            end;
        {{ok, _}, _} -> recreate;
        {{error, Posix}, _} ->
            erlpy_venv_spec:failed(Dir, Posix, <<"cannot read ", (erlpy_venv_spec:bin(Dir))/binary, ": ",
                                 (atom_to_binary(Posix))/binary>>, #{})
    end.

-spec not_managed(string()) -> {error, term()}.
not_managed(Dir) ->
    erlpy_venv_spec:failed(Dir, not_managed,
           <<(erlpy_venv_spec:bin(Dir))/binary, " exists and was not built by erlpy (no ", ?STATE_FILE,
             "): remove it, or give the pool venv alone to use it as it is">>, #{}).

%% The mark of a creation in progress, next to the directory: from before the directory
%% is removed or created until its state file says `building', a window in which the
%% directory alone would not show it is erlpy's.
-spec creating(string()) -> string().
creating(Dir) ->
    Dir ++ ".creating".

-spec mark(string()) -> ok | {error, term()}.
mark(Dir) ->
    case file:write_file(creating(Dir), <<"erlpy is creating this virtualenv\n">>) of
        ok -> ok;
        {error, Posix} -> state_failed(Dir, creating(Dir), Posix)
    end.

-spec run_build(create | update | recreate, map()) -> ok | {error, term()}.
run_build(Plan, #{dir := Dir, reqs := Reqs} = B) ->
    Tool = tool(),
    Start = erlang:monotonic_time(millisecond),
    Specs = specs(Reqs),
    ?LOG_NOTICE("erlpy: ~ts virtualenv ~ts from ~ts with ~ts: ~ts",
                [verb(Plan), Dir, maps:get(base, B), tool_name(Tool), join(Specs)],
                #{erlpy => venv, venv => Dir}),
    New = Plan =/= update,
    Steps = [fun() -> mark(Dir) end || New] ++
            [fun() -> remove(Dir) end || Plan =:= recreate] ++
            [fun() -> create(Tool, B) end || New] ++
            [fun() -> write_state(B, Tool, <<"building">>) end] ++
            [fun() -> _ = file:delete(creating(Dir)), ok end || New] ++
            [fun() -> install(Tool, B) end],
    case run_steps(Steps) of
        {ok, Installed} ->
            ok = write_state(B, Tool, <<"ready">>),
            Ms = erlang:monotonic_time(millisecond) - Start,
            ?LOG_NOTICE("erlpy: virtualenv ~ts ready in ~.1f s (~ts); installed: ~ts",
                        [Dir, Ms / 1000, tool_name(Tool), case Installed of [] -> <<"nothing new">>; _ -> join(Installed) end],
                        #{erlpy => venv, venv => Dir, installed => Installed, ms => Ms}),
            ok;
        {error, {python_start_failed, {venv, #{message := M}}}} = Error ->
            ?LOG_ERROR("erlpy: virtualenv ~ts not built: ~ts", [Dir, M],
                       #{erlpy => venv, venv => Dir}),
            Error
    end.

-spec run_steps([fun(() -> ok | {ok, [binary()]} | {error, term()})]) ->
    {ok, [binary()]} | {error, term()}.
run_steps(Steps) ->
    lists:foldl(fun(Step, {ok, Acc}) ->
                        case Step() of
                            ok -> {ok, Acc};
                            {ok, More} -> {ok, Acc ++ More};
                            {error, _} = Error -> Error
                        end;
                   (_, Error) ->
                        Error
                end, {ok, []}, Steps).

-spec verb(create | update | recreate) -> string().
verb(create) -> "building";
verb(update) -> "updating";
verb(recreate) -> "rebuilding".

-spec tool() -> erlpy_venv_tool:tool().
tool() ->
    case os:find_executable("uv") of
        false -> pip;
        Uv -> {uv, Uv}
    end.

-spec tool_name(erlpy_venv_tool:tool()) -> binary().
tool_name({uv, _}) -> <<"uv">>;
tool_name(pip) -> <<"pip">>.

-spec remove(string()) -> ok | {error, term()}.
remove(Dir) ->
    case file:del_dir_r(Dir) of
        ok -> ok;
        {error, enoent} -> ok;
        {error, Posix} ->
            erlpy_venv_spec:failed(Dir, Posix, <<"cannot remove the old environment ", (erlpy_venv_spec:bin(Dir))/binary, ": ",
                                 (atom_to_binary(Posix))/binary>>, #{})
    end.

-spec create(erlpy_venv_tool:tool(), map()) -> ok | {error, term()}.
create(Tool, #{dir := Dir, base := Base} = B) ->
    _ = file:del_dir(Dir),
    {Exe, Args} =
        case Tool of
            {uv, Uv} -> {Uv, ["venv", "--no-project", "--color", "never", "--python", Base, Dir]};
            pip -> {Base, ["-m", "venv", Dir]}
        end,
    case erlpy_venv_tool:run(Exe, Args, B, Tool) of
        {0, _} -> ok;
        {Exit, Lines} ->
            erlpy_venv_spec:failed(Dir, create_failed,
                   <<"cannot create a virtualenv at ", (erlpy_venv_spec:bin(Dir))/binary, " with ",
                     (tool_name(Tool))/binary, ": ", (erlpy_venv_tool:first_error(Lines))/binary>>,
                   #{tool => tool_name(Tool), exit => Exit, output => erlpy_venv_tool:output(Lines)})
    end.

%% What is installed, as the user would write it: erlpy's msgpack first, unless the user's
%% requirements say the same.
-spec specs([map()]) -> [binary()].
specs(Reqs) ->
    lists:uniq([erlpy_venv_spec:msgpack_spec() | [S || #{spec := S} <- Reqs]]).

-spec install(erlpy_venv_tool:tool(), map()) -> {ok, [binary()]} | {error, term()}.
install(Tool, #{dir := Dir, reqs := Reqs, pip := PipConf} = B) ->
    ReqArgs = [binary_to_list(erlpy_venv_spec:msgpack_spec()) | lists:append([A || #{args := A} <- Reqs])],
    {Exe, Args} =
        case Tool of
            {uv, Uv} ->
                {Uv, ["pip", "install", "--color", "never", "--no-progress", "--python",
                      erlpy_venv_spec:venv_python(Dir) | uv_index_args(PipConf)] ++ ReqArgs};
            pip ->
                {erlpy_venv_spec:venv_python(Dir), ["-m", "pip", "install", "--disable-pip-version-check",
                                    "--no-input", "--progress-bar", "off" | ReqArgs]}
        end,
    case erlpy_venv_tool:run(Exe, Args, B, Tool) of
        {0, Lines} ->
            {ok, erlpy_venv_tool:installed(Lines)};
        {Exit, Lines} ->
            Req = erlpy_venv_tool:culprit(Lines, Reqs),
            First = erlpy_venv_tool:first_error(Lines),
            erlpy_venv_spec:failed(Dir, install_failed,
                   <<"cannot install ", (case Req of undefined -> join([S || #{spec := S} <- Reqs]); _ -> Req end)/binary,
                     " into ", (erlpy_venv_spec:bin(Dir))/binary, " with ", (tool_name(Tool))/binary, ": ", First/binary>>,
                   #{requirement => Req, tool => tool_name(Tool), exit => Exit,
                     output => erlpy_venv_tool:output(Lines)})
    end.

%% pip's settings as uv's options. With extra indexes, uv is asked to choose among all
%% indexes as pip does (uv's default takes the first index that has the package).
-spec uv_index_args([{binary(), binary()}]) -> [string()].
uv_index_args(PipConf) ->
    Get = fun(Key) -> [binary_to_list(V) || {K, V} <- PipConf, K =:= Key] end,
    ["--no-index" || Get(<<"no_index">>) =:= ["true"]] ++
        lists:append([["--index-url", U] || U <- Get(<<"index_url">>)]) ++
        lists:append([["--extra-index-url", U] || U <- Get(<<"extra_index_url">>)]) ++
        lists:append([["--find-links", U] || U <- Get(<<"find_links">>)]) ++
        lists:append([["--allow-insecure-host", H] || H <- Get(<<"trusted_host">>)]) ++
        case Get(<<"extra_index_url">>) of
            [] -> [];
            _ -> ["--index-strategy", "unsafe-best-match"]
        end.

%%====================================================================
%% The lock
%%====================================================================

%% Run Fun holding the environment's lock (a flock on Dir ++ ".lock", held by a Python
%% process that exits when this process or its port goes away).
-spec locked(map(), fun(() -> ok | {error, term()})) -> ok | {error, term()}.
locked(#{dir := Dir, base := Base, env := Env}, Fun) ->
    LockFile = Dir ++ ".lock",
    case filelib:ensure_dir(LockFile) of
        ok ->
            Owner = lists:flatten(io_lib:format("~ts os_pid=~ts host=~ts", [node(), os:getpid(), net_adm:localhost()])),
            Port = open_port({spawn_executable, Base},
                             [{args, ["-I", erlpy_venv_tool:venvtool(), "lock", LockFile, Owner]}, {env, Env},
                              {line, 4096}, binary, exit_status, hide]),
            try await_lock(Port, Dir, LockFile) of
                ok -> Fun();
                {error, _} = Error -> Error
            after
                catch port_close(Port)
            end;
        {error, Posix} ->
            erlpy_venv_spec:failed(Dir, Posix, <<"cannot create the lock ", (erlpy_venv_spec:bin(LockFile))/binary, ": ",
                                 (atom_to_binary(Posix))/binary>>, #{})
    end.

-spec await_lock(port(), string(), string()) -> ok | {error, term()}.
await_lock(Port, Dir, LockFile) ->
    receive
        {Port, {data, {eol, <<"locked">>}}} ->
            ok;
        {Port, {data, {eol, <<"busy\t", Holder/binary>>}}} ->
            ?LOG_NOTICE("erlpy: waiting for virtualenv ~ts: being built by ~ts", [Dir, Holder],
                        #{erlpy => venv, venv => Dir}),
            await_lock(Port, Dir, LockFile);
        {Port, {data, _}} ->
            await_lock(Port, Dir, LockFile);
        {Port, {exit_status, Status}} ->
            erlpy_venv_spec:failed(Dir, lock_failed, <<"cannot lock ", (erlpy_venv_spec:bin(LockFile))/binary,
                                       " (the lock helper exited with status ",
                                       (integer_to_binary(Status))/binary, ")">>, #{})
    end.

%%====================================================================
%% The state file
%%====================================================================

-spec fingerprint(string(), binary(), [erlpy_venv_spec:requirement()]) -> binary().
fingerprint(Base, Version, Reqs) ->
    Files = [{F, case file:read_file(F) of {ok, B} -> erlang:md5(B); _ -> missing end}
             || #{files := Fs} <- Reqs, F <- Fs],
    Term = {?FORMAT, erlpy_venv_spec:bin(Base), Version, erlpy_venv_spec:msgpack_spec(), [A || #{args := A} <- Reqs], Files},
    string:lowercase(binary:encode_hex(erlang:md5(term_to_binary(Term)))).

-spec python_line(map()) -> binary().
python_line(#{base := Base, version := Version}) ->
    <<(erlpy_venv_spec:bin(Base))/binary, " ", Version/binary>>.

-spec write_state(map(), erlpy_venv_tool:tool(), binary()) -> ok | {error, term()}.
write_state(#{dir := Dir, reqs := Reqs, fingerprint := Fingerprint} = B, Tool, State) ->
    Text = [<<"# erlpy virtualenv: pools start on it only when state is ready and the "
              "fingerprint is theirs\n">>,
            <<"state: ">>, State, <<"\n">>,
            <<"fingerprint: ">>, Fingerprint, <<"\n">>,
            <<"python: ">>, python_line(B), <<"\n">>,
            <<"installer: ">>, tool_name(Tool), <<"\n">>,
            <<"requirements: ">>, join(specs(Reqs)), <<"\n">>,
            <<"written: ">>, calendar:system_time_to_rfc3339(erlang:system_time(second)), <<"\n">>],
    File = filename:join(Dir, ?STATE_FILE),
    Tmp = File ++ ".tmp",
    case file:write_file(Tmp, Text) of
        ok -> case file:rename(Tmp, File) of
                  ok -> ok;
                  {error, Posix} -> state_failed(Dir, File, Posix)
              end;
        {error, Posix} -> state_failed(Dir, File, Posix)
    end.

-spec state_failed(string(), string(), atom()) -> {error, term()}.
state_failed(Dir, File, Posix) ->
    erlpy_venv_spec:failed(Dir, Posix, <<"cannot write ", (erlpy_venv_spec:bin(File))/binary, ": ", (atom_to_binary(Posix))/binary>>, #{}).

-spec read_state(string()) -> none | #{atom() => binary()}.
read_state(Dir) ->
    case file:read_file(filename:join(Dir, ?STATE_FILE)) of
        {ok, Bin} ->
            maps:from_list([{binary_to_atom(K), string:trim(V)}
                            || L <- binary:split(Bin, <<"\n">>, [global]),
                               [K, V] <- [binary:split(L, <<": ">>)],
                               lists:member(K, [<<"state">>, <<"fingerprint">>, <<"python">>])]);
        {error, _} ->
            none
    end.

-spec incomplete(string()) -> {error, term()}.
incomplete(Dir) ->
    erlpy_venv_spec:failed(Dir, incomplete, <<"the virtualenv ", (erlpy_venv_spec:bin(Dir))/binary, " is being built or its "
                              "last build failed (", ?STATE_FILE, " says building): start the "
                              "pool with its requirements to finish it">>, #{}).

%%====================================================================
%% Helpers
%%====================================================================

-spec join([binary()]) -> binary().
join(Bins) -> iolist_to_binary(lists:join(<<", ">>, Bins)).


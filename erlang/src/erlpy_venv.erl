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

-export([check_requirements/1, resolve_requirements/2, interpreter/1, ensure/1, prepare/2,
         build/1, build_all/0, release_hook/1]).
-export_type([requirement/0]).

-include_lib("kernel/include/logger.hrl").

%% What a requirement was given as, and what it becomes on the installer's command line.
-type requirement() :: #{spec := binary(), args := [string()], files := [string()],
                         names := [binary()]}.
-type tool() :: {uv, string()} | pip.
-type detail() :: #{reason := atom(), venv := binary(), message := binary(), atom() => term()}.

-define(STATE_FILE, ".erlpy-venv").
-define(FORMAT, 1).
%% A progress line in the log while a tool runs this long without ending.
-define(PROGRESS_MS, 30000).
%% Lines of a tool's output kept for the error.
-define(KEEP_LINES, 400).

%%====================================================================
%% Options
%%====================================================================

%% @doc The `requirements' option: a list of requirement strings (as pip takes them:
%% `"name>=1"', `"name @ URL"', a local path to a project or a wheel, `"-r File"',
%% `"-c File"', `"-e Path"') or `{priv, App, Path}' (a local path inside an
%% application). Throws `{bad_option, {requirements, Value}}'.
-spec check_requirements(term()) -> [{binary(), term()}].
check_requirements(Reqs) when is_list(Reqs) ->
    Bad = fun() -> throw({bad_option, {requirements, Reqs}}) end,
    %% A single requirement given as a string is a common slip.
    (Reqs =/= [] andalso io_lib:printable_unicode_list(Reqs)) andalso Bad(),
    [check_requirement(R, Bad) || R <- Reqs];
check_requirements(Reqs) ->
    throw({bad_option, {requirements, Reqs}}).

-spec check_requirement(term(), fun(() -> no_return())) -> {binary(), term()}.
check_requirement({priv, App, Sub} = R, Bad) when is_atom(App) ->
    {iolist_to_binary(io_lib:format("~p", [R])), {priv, App, text(Sub, Bad)}};
check_requirement(R, Bad) when is_list(R); is_binary(R) ->
    case string:trim(text(R, Bad)) of
        "" -> Bad();
        Spec ->
            Parsed =
                case string:split(Spec, " ") of
                    [Flag, Arg] when Flag =:= "-r"; Flag =:= "--requirement"; Flag =:= "-c";
                                     Flag =:= "--constraint"; Flag =:= "-e"; Flag =:= "--editable" ->
                        {flag, short(Flag), string:trim(Arg)};
                    _ ->
                        case lists:prefix("-", Spec) of
                            true -> Bad();
                            false -> {spec, Spec}
                        end
                end,
            {unicode:characters_to_binary(Spec), Parsed}
    end;
check_requirement(_, Bad) ->
    Bad().

-spec short(string()) -> string().
short("--requirement") -> "-r";
short("--constraint") -> "-c";
short("--editable") -> "-e";
short(Flag) -> Flag.

-spec text(term(), fun(() -> no_return())) -> string().
text(S, Bad) ->
    try unicode:characters_to_list(S) of
        L when is_list(L) -> L;
        _ -> Bad()
    catch
        error:_ -> Bad()
    end.

%% @doc Local paths made absolute with `Resolve' (relative to the pool's `cd', else the
%% VM's directory; `{priv, App, Path}'); each must exist, else
%% `{bad_option, {requirements, AbsolutePath}}'.
-spec resolve_requirements([{binary(), term()}], fun((term()) -> string())) -> [requirement()].
resolve_requirements(Reqs, Resolve) ->
    [resolve_requirement(Spec, Parsed, Resolve) || {Spec, Parsed} <- Reqs].

-spec resolve_requirement(binary(), term(), fun((term()) -> string())) -> requirement().
resolve_requirement(Spec, {priv, _, _} = Priv, Resolve) ->
    local(Spec, [], Resolve(Priv));
resolve_requirement(Spec, {flag, "-e", Arg}, Resolve) ->
    case is_path(Arg) of
        true -> local(Spec, ["-e"], Resolve(home(Arg)));
        false -> #{spec => Spec, args => ["-e", Arg], files => [], names => []}
    end;
resolve_requirement(Spec, {flag, Flag, Arg}, Resolve) ->
    File = existing(Resolve(home(Arg))),
    #{spec => Spec, args => [Flag, File], files => [File], names => [path_name(File) | file_names(File)]};
resolve_requirement(Spec, {spec, S}, Resolve) ->
    case is_path(S) of
        true -> local(Spec, [], Resolve(home(S)));
        false -> #{spec => Spec, args => [S], files => [], names => [name_of(S)]}
    end.

-spec local(binary(), [string()], string()) -> requirement().
local(Spec, Flags, Path0) ->
    Path = existing(Path0),
    Files =
        case filelib:is_dir(Path) of
            true -> [F || B <- ["pyproject.toml", "setup.py", "setup.cfg"],
                          F <- [filename:join(Path, B)], filelib:is_regular(F)];
            false -> [Path]
        end,
    #{spec => Spec, args => Flags ++ [Path], files => Files,
      names => [path_name(Path) | [N || N <- [project_name(Path)], N =/= <<>>]]}.

%% `~/x' is in the home directory, as in a shell.
-spec home(string()) -> string().
home("~/" ++ Rest) ->
    case os:getenv("HOME") of
        false -> "~/" ++ Rest;
        Home -> filename:join(Home, Rest)
    end;
home(Path) ->
    Path.

-spec existing(string()) -> string().
existing(Path) ->
    filelib:is_file(Path) orelse throw({bad_option, {requirements, Path}}),
    Path.

%% A local path rather than a name: `/x', `./x', `../x', `~/x', `.', or an archive.
-spec is_path(string()) -> boolean().
is_path(S) ->
    lists:any(fun(P) -> lists:prefix(P, S) end, ["/", "./", "../", "~/"]) orelse
        S =:= "." orelse S =:= ".." orelse
        lists:any(fun(Ext) -> lists:suffix(Ext, S) end, [".whl", ".tar.gz", ".zip"]).

-spec path_name(string()) -> binary().
path_name(Path) -> unicode:characters_to_binary(Path).

%% The distribution name a requirement string starts with, normalised as pip does.
-spec name_of(string() | binary()) -> binary().
name_of(S) ->
    case re:run(S, "^\\s*([A-Za-z0-9][A-Za-z0-9._-]*)", [{capture, all_but_first, binary}, unicode]) of
        {match, [Name]} -> normalise(Name);
        nomatch -> unicode:characters_to_binary(S)
    end.

-spec normalise(binary()) -> binary().
normalise(Name) ->
    re:replace(string:lowercase(Name), "[-_.]+", "-", [global, {return, binary}]).

%% `name = "..."' of a local project's pyproject.toml, if any.
-spec project_name(string()) -> binary().
project_name(Dir) ->
    case file:read_file(filename:join(Dir, "pyproject.toml")) of
        {ok, Toml} ->
            case re:run(Toml, "^name\\s*=\\s*[\"']([^\"']+)[\"']", [multiline, {capture, all_but_first, binary}]) of
                {match, [Name]} -> normalise(Name);
                nomatch -> <<>>
            end;
        {error, _} -> <<>>
    end.

%% The names listed in a requirements file (to tell which of its lines failed).
-spec file_names(string()) -> [binary()].
file_names(File) ->
    case file:read_file(File) of
        {ok, Bin} ->
            [name_of(L) || L0 <- binary:split(Bin, <<"\n">>, [global]),
                           L <- [string:trim(L0)], L =/= <<>>, binary:first(L) =/= $#,
                           binary:first(L) =/= $-];
        {error, _} -> []
    end.

%% @doc The interpreter a pool runs before its environment is made sure of: for `venv'
%% alone, the environment's; else the pool's `python' (the one a `venv' is built from).
-spec interpreter(map()) -> {venv, string()} | base.
interpreter(#{venv := Dir, requirements := []}) when Dir =/= undefined ->
    {venv, venv_python(Dir)};
interpreter(_) ->
    base.

%%====================================================================
%% Making sure of the environment
%%====================================================================

%% @doc For a validated pool configuration: nothing to do without `venv'; with `venv'
%% alone, checks the environment is there and complete; with requirements, makes sure
%% the environment is built from the current spec (building or updating it under the
%% lock) and returns the configuration with `python' set to the environment's.
-spec ensure(map()) -> {ok, map()} | {error, {python_start_failed, {venv, detail()}}}.
ensure(#{venv := undefined} = Config) ->
    {ok, Config};
ensure(#{venv := Dir, requirements := []} = Config) ->
    Python = venv_python(Dir),
    case {filelib:is_regular(Python), read_state(Dir)} of
        {false, _} ->
            failed(Dir, no_venv, <<"no virtualenv at ", (bin(Dir))/binary, " (no bin/python): "
                                   "create it, or give the pool requirements so that erlpy "
                                   "builds it">>, #{});
        {true, #{state := <<"building">>}} ->
            incomplete(Dir);
        {true, _} ->
            {ok, Config#{python := Python}}
    end;
ensure(#{venv := Dir, python := Base, requirements := Reqs} = Config) ->
    Env = maps:get(env, Config, []),
    case probe(Base, Dir, Env) of
        {ok, Version, PipConf} ->
            Fingerprint = fingerprint(Base, Version, Reqs),
            case is_ready(Dir, Fingerprint) of
                true ->
                    {ok, Config#{python := venv_python(Dir)}};
                false ->
                    Build = #{dir => Dir, base => Base, version => Version, reqs => Reqs,
                              env => Env, pip => PipConf, fingerprint => Fingerprint},
                    case locked(Build, fun() -> build_locked(Build) end) of
                        ok -> {ok, Config#{python := venv_python(Dir)}};
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
                {ok, #{python := Python}} -> {ok, bin(Python)};
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

-spec venv_python(string()) -> string().
venv_python(Dir) ->
    filename:join([Dir, "bin", "python"]).

-spec is_ready(string(), binary()) -> boolean().
is_ready(Dir, Fingerprint) ->
    case read_state(Dir) of
        #{state := <<"ready">>, fingerprint := Fingerprint} -> filelib:is_regular(venv_python(Dir));
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
            case P =:= python_line(B) andalso filelib:is_regular(venv_python(Dir)) of
                true -> update;
                false -> recreate
            end;
        {{ok, _}, _} -> recreate;
        {{error, Posix}, _} ->
            failed(Dir, Posix, <<"cannot read ", (bin(Dir))/binary, ": ",
                                 (atom_to_binary(Posix))/binary>>, #{})
    end.

-spec not_managed(string()) -> {error, term()}.
not_managed(Dir) ->
    failed(Dir, not_managed,
           <<(bin(Dir))/binary, " exists and was not built by erlpy (no ", ?STATE_FILE,
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
    Specs = [msgpack_spec() | [S || #{spec := S} <- Reqs]],
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

-spec msgpack_spec() -> binary().
msgpack_spec() -> <<"msgpack>=1.0.5">>.

-spec tool() -> tool().
tool() ->
    case os:find_executable("uv") of
        false -> pip;
        Uv -> {uv, Uv}
    end.

-spec tool_name(tool()) -> binary().
tool_name({uv, _}) -> <<"uv">>;
tool_name(pip) -> <<"pip">>.

-spec remove(string()) -> ok | {error, term()}.
remove(Dir) ->
    case file:del_dir_r(Dir) of
        ok -> ok;
        {error, enoent} -> ok;
        {error, Posix} ->
            failed(Dir, Posix, <<"cannot remove the old environment ", (bin(Dir))/binary, ": ",
                                 (atom_to_binary(Posix))/binary>>, #{})
    end.

-spec create(tool(), map()) -> ok | {error, term()}.
create(Tool, #{dir := Dir, base := Base} = B) ->
    _ = file:del_dir(Dir),
    {Exe, Args} =
        case Tool of
            {uv, Uv} -> {Uv, ["venv", "--no-project", "--color", "never", "--python", Base, Dir]};
            pip -> {Base, ["-m", "venv", Dir]}
        end,
    case run(Exe, Args, B, Tool) of
        {0, _} -> ok;
        {Exit, Lines} ->
            failed(Dir, create_failed,
                   <<"cannot create a virtualenv at ", (bin(Dir))/binary, " with ",
                     (tool_name(Tool))/binary, ": ", (first_error(Lines))/binary>>,
                   #{tool => tool_name(Tool), exit => Exit, output => output(Lines)})
    end.

-spec install(tool(), map()) -> {ok, [binary()]} | {error, term()}.
install(Tool, #{dir := Dir, reqs := Reqs, pip := PipConf} = B) ->
    ReqArgs = [binary_to_list(msgpack_spec()) | lists:append([A || #{args := A} <- Reqs])],
    {Exe, Args} =
        case Tool of
            {uv, Uv} ->
                {Uv, ["pip", "install", "--color", "never", "--no-progress", "--python",
                      venv_python(Dir) | uv_index_args(PipConf)] ++ ReqArgs};
            pip ->
                {venv_python(Dir), ["-m", "pip", "install", "--disable-pip-version-check",
                                    "--no-input", "--progress-bar", "off" | ReqArgs]}
        end,
    case run(Exe, Args, B, Tool) of
        {0, Lines} ->
            {ok, installed(Lines)};
        {Exit, Lines} ->
            Req = culprit(Lines, Reqs),
            First = first_error(Lines),
            failed(Dir, install_failed,
                   <<"cannot install ", (case Req of undefined -> join([S || #{spec := S} <- Reqs]); _ -> Req end)/binary,
                     " into ", (bin(Dir))/binary, " with ", (tool_name(Tool))/binary, ": ", First/binary>>,
                   #{requirement => Req, tool => tool_name(Tool), exit => Exit,
                     output => output(Lines)})
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

%% Which requirement failed: the one the tool's error names (by name, path or project
%% name), else the one pip was working on when it failed.
-spec culprit([binary()], [requirement()]) -> binary() | undefined.
culprit(Lines, Reqs) ->
    All = [#{spec => msgpack_spec(), names => [<<"msgpack">>]} | Reqs],
    {Before, Errors} = lists:splitwith(fun(L) -> not is_error_line(L) end, Lines),
    ErrorText = normalise(iolist_to_binary(lists:join(<<"\n">>, Errors))),
    case [S || #{spec := S, names := Ns} <- All, lists:any(fun(N) -> mentions(ErrorText, N) end, Ns)] of
        [S | _] ->
            S;
        [] ->
            Working = [normalise(L) || L <- Before,
                                      re:run(L, "^(Collecting|Processing|Obtaining) ") =/= nomatch],
            case Working of
                [] -> undefined;
                _ ->
                    Last = lists:last(Working),
                    case [S || #{spec := S, names := Ns} <- All, lists:any(fun(N) -> mentions(Last, N) end, Ns)] of
                        [S | _] -> S;
                        [] -> undefined
                    end
            end
    end.

-spec mentions(binary(), binary()) -> boolean().
mentions(_, <<>>) ->
    false;
mentions(Text, Name0) ->
    Name = normalise(Name0),
    Pattern = <<"(^|[^a-z0-9-])", (re_quote(Name))/binary, "($|[^a-z0-9-])">>,
    re:run(Text, Pattern, [multiline]) =/= nomatch.

-spec re_quote(binary()) -> binary().
re_quote(Bin) ->
    re:replace(Bin, "[.^$*+?()\\[\\]{}|\\\\/]", "\\\\&", [global, {return, binary}]).

-spec is_error_line(binary()) -> boolean().
is_error_line(Line) ->
    re:run(Line, "^\\s*(ERROR:|error:|×)", [unicode]) =/= nomatch.

%% The tool's own message, in a line: its error lines (pip's `ERROR:', `error:' and `×'
%% lines, uv's `error:' and `cause:' lines) and the last line of each output block pip
%% quotes (the exception of a failed build), at most five; else its last line.
-spec first_error([binary()]) -> binary().
first_error(Lines) ->
    case lists:dropwhile(fun(L) -> not is_error_line(L) end, Lines) of
        [] ->
            case [L || L <- Lines, string:trim(L) =/= <<>>] of
                [] -> <<"no output">>;
                NonEmpty -> string:trim(lists:last(NonEmpty))
            end;
        Errors ->
            Next = tl(Errors) ++ [<<>>],
            Key = [string:trim(L) || {L, N} <- lists:zip(Errors, Next),
                                     is_error_line(L) orelse
                                         re:run(L, "^\\s*cause:", [unicode]) =/= nomatch orelse
                                         string:trim(N) =:= <<"[end of output]">>],
            iolist_to_binary(lists:join(<<" ">>, lists:sublist(Key, 5)))
    end.

-spec output([binary()]) -> binary().
output(Lines) ->
    iolist_to_binary(lists:join(<<"\n">>, Lines)).

%% What the tool says it installed: uv's ` + name==1.0' lines, pip's
%% `Successfully installed name-1.0 ...'.
-spec installed([binary()]) -> [binary()].
installed(Lines) ->
    lists:append([case re:run(L, "^ \\+ (\\S+)", [{capture, all_but_first, binary}]) of
                      {match, [P]} -> [P];
                      nomatch ->
                          case L of
                              <<"Successfully installed ", Ps/binary>> ->
                                  binary:split(string:trim(Ps), <<" ">>, [global, trim_all]);
                              _ -> []
                          end
                  end || L <- Lines]).

%%====================================================================
%% Running tools
%%====================================================================

%% Run a tool with the pool's `env' (and, for uv, no downloads of Python and pip's
%% certificate), logging its output line by line at `info' and its progress every 30 s
%% at `notice'. Returns the exit status and the last lines of output.
-spec run(string(), [string()], map(), tool()) -> {non_neg_integer() | {error, term()}, [binary()]}.
run(Exe, Args, #{dir := Dir, base := Base, env := Env, pip := PipConf}, Tool) ->
    Extra =
        case Tool of
            {uv, _} ->
                [{"UV_PYTHON_DOWNLOADS", "never"}, {"NO_COLOR", "1"}] ++
                    [{"SSL_CERT_FILE", binary_to_list(C)} || {<<"cert">>, C} <- PipConf,
                                                              os:getenv("SSL_CERT_FILE") =:= false,
                                                              not lists:keymember("SSL_CERT_FILE", 1, Env)];
            pip ->
                [{"PIP_NO_INPUT", "1"}]
        end,
    ?LOG_INFO("erlpy: ~ts ~ts", [Exe, lists:join(" ", Args)], #{erlpy => venv, venv => Dir}),
    %% Through venvtool.py run: the tool dies with this process (its port).
    try open_port({spawn_executable, Base},
                  [{args, ["-I", venvtool(), "run", Exe | Args]}, {env, Extra ++ Env},
                   {line, 4096}, binary, exit_status, stderr_to_stdout, hide]) of
        Port ->
            collect(Port, Dir, [], 0, erlang:monotonic_time(millisecond), [])
    catch
        error:Reason -> {{error, Reason}, [iolist_to_binary(io_lib:format("cannot run ~ts: ~p", [Base, Reason]))]}
    end.

-spec collect(port(), string(), [binary()], non_neg_integer(), integer(), [binary()]) ->
    {non_neg_integer(), [binary()]}.
collect(Port, Dir, Acc, N, Start, Partial) ->
    receive
        {Port, {data, {noeol, Part}}} ->
            collect(Port, Dir, Acc, N, Start, [Part | Partial]);
        {Port, {data, {eol, Part}}} ->
            Line = iolist_to_binary(lists:reverse([Part | Partial])),
            ?LOG_INFO("erlpy: ~ts: ~ts", [Dir, Line], #{erlpy => venv, venv => Dir}),
            %% Newest first; the oldest lines go beyond ?KEEP_LINES.
            case N >= ?KEEP_LINES of
                true -> collect(Port, Dir, [Line | lists:droplast(Acc)], N, Start, []);
                false -> collect(Port, Dir, [Line | Acc], N + 1, Start, [])
            end;
        {Port, {exit_status, Status}} ->
            Rest = [iolist_to_binary(lists:reverse(Partial)) || Partial =/= []],
            {Status, lists:reverse(Acc) ++ Rest}
    after ?PROGRESS_MS ->
        ?LOG_NOTICE("erlpy: still working on virtualenv ~ts (~b s)",
                    [Dir, (erlang:monotonic_time(millisecond) - Start) div 1000],
                    #{erlpy => venv, venv => Dir}),
        collect(Port, Dir, Acc, N, Start, Partial)
    end.

%% The interpreter's version and pip's index settings (venvtool.py probe).
-spec probe(string(), string(), list()) ->
    {ok, binary(), [{binary(), binary()}]} | {error, term()}.
probe(Base, Dir, Env) ->
    try open_port({spawn_executable, Base},
                  [{args, ["-I", venvtool(), "probe", Dir]}, {env, Env}, {line, 65536}, binary,
                   exit_status, hide]) of
        Port ->
            case collect_quiet(Port, []) of
                {0, Lines} ->
                    KVs = [list_to_tuple(binary:split(L, <<"\t">>)) || L <- Lines,
                                                                       binary:match(L, <<"\t">>) =/= nomatch],
                    case lists:keyfind(<<"version">>, 1, KVs) of
                        {_, Version} -> {ok, Version, KVs -- [{<<"version">>, Version}]};
                        false -> probe_failed(Base, Dir, {exit_status, 0})
                    end;
                {Status, _} ->
                    probe_failed(Base, Dir, {exit_status, Status})
            end
    catch
        error:Reason -> probe_failed(Base, Dir, Reason)
    end.

-spec probe_failed(string(), string(), term()) -> {error, term()}.
probe_failed(Base, Dir, Why) ->
    Message =
        case erlpy_python:explain(Why, Base) of
            #{message := M} when is_binary(M) -> M;
            _ -> iolist_to_binary(io_lib:format("~ts cannot run (~0p)", [Base, Why]))
        end,
    failed(Dir, python_failed, <<"cannot build ", (bin(Dir))/binary, ": ", Message/binary>>,
           #{python => bin(Base), exit => Why}).

-spec collect_quiet(port(), [binary()]) -> {non_neg_integer(), [binary()]}.
collect_quiet(Port, Acc) ->
    receive
        {Port, {data, {_, Line}}} -> collect_quiet(Port, [Line | Acc]);
        {Port, {exit_status, Status}} -> {Status, lists:reverse(Acc)}
    after 60000 ->
        catch port_close(Port),
        {timeout, lists:reverse(Acc)}
    end.

-spec venvtool() -> string().
venvtool() ->
    filename:join([erlpy_python:package_parent(), "erlpy", "venvtool.py"]).

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
                             [{args, ["-I", venvtool(), "lock", LockFile, Owner]}, {env, Env},
                              {line, 4096}, binary, exit_status, hide]),
            try await_lock(Port, Dir, LockFile) of
                ok -> Fun();
                {error, _} = Error -> Error
            after
                catch port_close(Port)
            end;
        {error, Posix} ->
            failed(Dir, Posix, <<"cannot create the lock ", (bin(LockFile))/binary, ": ",
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
            failed(Dir, lock_failed, <<"cannot lock ", (bin(LockFile))/binary,
                                       " (the lock helper exited with status ",
                                       (integer_to_binary(Status))/binary, ")">>, #{})
    end.

%%====================================================================
%% The state file
%%====================================================================

-spec fingerprint(string(), binary(), [requirement()]) -> binary().
fingerprint(Base, Version, Reqs) ->
    Files = [{F, case file:read_file(F) of {ok, B} -> erlang:md5(B); _ -> missing end}
             || #{files := Fs} <- Reqs, F <- Fs],
    Term = {?FORMAT, bin(Base), Version, msgpack_spec(), [A || #{args := A} <- Reqs], Files},
    string:lowercase(binary:encode_hex(erlang:md5(term_to_binary(Term)))).

-spec python_line(map()) -> binary().
python_line(#{base := Base, version := Version}) ->
    <<(bin(Base))/binary, " ", Version/binary>>.

-spec write_state(map(), tool(), binary()) -> ok | {error, term()}.
write_state(#{dir := Dir, reqs := Reqs, fingerprint := Fingerprint} = B, Tool, State) ->
    Text = [<<"# erlpy virtualenv: pools start on it only when state is ready and the "
              "fingerprint is theirs\n">>,
            <<"state: ">>, State, <<"\n">>,
            <<"fingerprint: ">>, Fingerprint, <<"\n">>,
            <<"python: ">>, python_line(B), <<"\n">>,
            <<"installer: ">>, tool_name(Tool), <<"\n">>,
            <<"requirements: ">>, join([msgpack_spec() | [S || #{spec := S} <- Reqs]]), <<"\n">>,
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
    failed(Dir, Posix, <<"cannot write ", (bin(File))/binary, ": ", (atom_to_binary(Posix))/binary>>, #{}).

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
    failed(Dir, incomplete, <<"the virtualenv ", (bin(Dir))/binary, " is being built or its "
                              "last build failed (", ?STATE_FILE, " says building): start the "
                              "pool with its requirements to finish it">>, #{}).

%%====================================================================
%% Helpers
%%====================================================================

-spec failed(string(), atom(), binary(), map()) -> {error, {python_start_failed, {venv, detail()}}}.
failed(Dir, Reason, Message, Extra) ->
    {error, {python_start_failed, {venv, Extra#{reason => Reason, venv => bin(Dir), message => Message}}}}.

-spec bin(unicode:chardata()) -> binary().
bin(S) -> unicode:characters_to_binary(S).

-spec join([binary()]) -> binary().
join(Bins) -> iolist_to_binary(lists:join(<<", ">>, Bins)).


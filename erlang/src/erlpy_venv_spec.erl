%% @private
%% @doc The `requirements' option of a pool (erlpy_venv): checking what was given,
%% resolving local paths, and the names a requirement stands for.
-module(erlpy_venv_spec).

-export([check_requirements/1, resolve_requirements/2, interpreter/1, name_of/1,
         normalise/1, msgpack_spec/0, venv_python/1, failed/4, bin/1]).
-export_type([requirement/0, detail/0]).

%% What a requirement was given as, and what it becomes on the installer's command line.
-type requirement() :: #{spec := binary(), args := [string()], files := [string()],
                         names := [binary()]}.
%% The detail of `{python_start_failed, {venv, Detail}}'.
-type detail() :: #{reason := atom(), venv := binary(), message := binary(), atom() => term()}.


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

-spec venv_python(string()) -> string().
venv_python(Dir) ->
    filename:join([Dir, "bin", "python"]).

-spec bin(unicode:chardata()) -> binary().
bin(S) -> unicode:characters_to_binary(S).

-spec msgpack_spec() -> binary().
msgpack_spec() -> <<"msgpack>=1.0.5">>.

-spec failed(string(), atom(), binary(), map()) -> {error, {python_start_failed, {venv, detail()}}}.
failed(Dir, Reason, Message, Extra) ->
    {error, {python_start_failed, {venv, Extra#{reason => Reason, venv => bin(Dir), message => Message}}}}.

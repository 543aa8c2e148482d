%% @private
%% @doc Finding a Python interpreter, starting a worker process on a port, and ending it
%% with everything it started.
-module(erlpy_python).

-export([find/1, open/1, close/2, kill_group/1, kill_leftovers/1]).

%% @doc The interpreter to use: the pool's `python' option, else `$ERLPY_PYTHON', else
%% `python3' on `PATH'.
-spec find(undefined | string() | binary()) -> {ok, string()} | {error, term()}.
find(undefined) ->
    case os:getenv("ERLPY_PYTHON") of
        Env when Env =:= false; Env =:= "" -> find("python3");
        Env -> find(Env)
    end;
find(Python) when is_binary(Python) ->
    find(unicode:characters_to_list(Python));
find(Python) ->
    Found =
        case {filename:pathtype(Python), lists:member($/, Python)} of
            {absolute, _} -> Python;
            {_, true} -> filename:absname(Python);
            {_, false} -> os:find_executable(Python)
        end,
    case is_list(Found) andalso filelib:is_regular(Found) of
        true ->
            {ok, Found};
        false ->
            Name = unicode:characters_to_binary(Python),
            {error, #{
                reason => python_not_found,
                python => Name,
                message => <<"no Python interpreter found at ", Name/binary>>
            }}
    end.

%% @doc Start one worker process. The protocol runs on fds 3/4 (`nouse_stdio'), so output
%% of the Python process on fds 1/2 can never corrupt it.
-spec open(erlpy_pool:meta()) -> {ok, port(), non_neg_integer()} | {error, term()}.
open(#{python := Python, path := Paths, env := Env, cd := Cd}) ->
    Priv = priv_dir(),
    PyDir = filename:join(Priv, "python"),
    Boot = boot(Priv),
    Options =
        [
            {args, [Boot, PyDir | Paths]},
            {packet, 4},
            binary,
            nouse_stdio,
            exit_status,
            hide,
            {env, Env}
        ] ++ [{cd, Cd} || Cd =/= undefined],
    case filelib:is_regular(Boot) of
        true -> spawn_python(Python, Options);
        false -> {error, #{reason => missing_runtime, python => unicode:characters_to_binary(Python),
                           message => <<"erlpy's Python runtime is missing: ",
                                        (unicode:characters_to_binary(Boot))/binary>>}}
    end.

-spec spawn_python(string(), list()) -> {ok, port(), non_neg_integer()} | {error, term()}.
spawn_python(Python, Options) ->
    try erlang:open_port({spawn_executable, Python}, Options) of
        Port ->
            {os_pid, OsPid} = erlang:port_info(Port, os_pid),
            {ok, Port, OsPid}
    catch
        error:Reason ->
            {error, #{
                reason => Reason,
                python => unicode:characters_to_binary(Python),
                message => iolist_to_binary(io_lib:format("cannot run ~ts: ~p", [Python, Reason]))
            }}
    end.

%% @doc Close the port and make sure Python is gone: it exits at end of file, but user code
%% may block its event loop.
-spec close(port() | undefined, non_neg_integer() | undefined) -> ok.
close(undefined, _) ->
    ok;
close(Port, OsPid) ->
    catch port_close(Port),
    kill_group(OsPid).

%% @doc Kill Python and everything it started: it leads its own process group (the port
%% program starts in a new session), and its children stay in it unless they leave on
%% purpose. Python's watchdog does the same when the port closes without us
%% (docs/reliability.md).
-spec kill_group(non_neg_integer() | undefined) -> ok.
kill_group(undefined) ->
    ok;
kill_group(OsPid) ->
    Pid = integer_to_list(OsPid),
    _ = os:cmd("kill -9 -" ++ Pid ++ " 2>/dev/null || kill -9 " ++ Pid ++ " 2>/dev/null"),
    ok.

%% @doc After Python's exit: only the group, as its pid may already belong to another
%% process.
-spec kill_leftovers(non_neg_integer() | undefined) -> ok.
kill_leftovers(undefined) ->
    ok;
kill_leftovers(OsPid) ->
    _ = os:cmd("kill -9 -" ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    ok.

%% The application's priv, else the one next to the sources this module was compiled from
%% (builds that leave priv behind, such as Mix's rebar3 manager).
-spec priv_dir() -> file:filename().
priv_dir() ->
    Candidates =
        [Dir || Dir <- [code:priv_dir(erlpy)], is_list(Dir)] ++
            [filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv"),
             filename:join(filename:dirname(filename:dirname(source())), "priv")],
    case [Dir || Dir <- Candidates, filelib:is_regular(boot(Dir))] of
        [Dir | _] -> Dir;
        [] -> hd(Candidates)
    end.

-spec source() -> file:filename().
source() ->
    proplists:get_value(source, ?MODULE:module_info(compile), ".").

-spec boot(file:filename()) -> file:filename().
boot(Priv) ->
    filename:join([Priv, "python", "erlpy", "_boot.py"]).

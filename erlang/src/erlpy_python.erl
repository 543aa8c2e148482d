%% @private
%% @doc Finding a Python interpreter, starting a worker process on a port, and ending it
%% with everything it started.
-module(erlpy_python).

-include("erlpy_protocol.hrl").

-export([find/1, open/2, explain/1, explain/2, close/2, kill_group/1, kill_leftovers/1, mark/0,
         package_parent/0]).

%% How long kill_group/1 gives Python's supervisor to end everything before it kills the
%% process group itself (ms). It kills at once: this only bounds a supervisor that cannot.
-define(SUPERVISOR_WAIT, 2000).

%% How long close/2 waits for a Python it asked to stop (ms).
-define(STOP_WAIT, 500).

-type os_pid() :: non_neg_integer() | undefined.
%% A worker's Python: the port's process (its supervisor), Python's own process once it
%% said READY, and the mark in the environment of everything it starts.
-type processes() :: #{os_pid := os_pid(), python_pid := os_pid(), mark := binary()}.
-export_type([processes/0]).

%% The environment variable that marks the processes of one Python (mark/0).
-define(MARK_VAR, "ERLPY_WORKER").

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
            {error, #{reason => python_not_found, python => Name, message => not_found(Python, Found)}}
    end.

%% What to do, for each way of naming no interpreter. A relative name shows where it was
%% looked for (the VM's working directory: a release's start script changes it).
-spec not_found(string(), string() | false) -> binary().
not_found(Python, Found) ->
    Name = unicode:characters_to_binary(Python),
    At = case is_list(Found) andalso Found =/= Python of
        true -> <<Name/binary, " (", (unicode:characters_to_binary(Found))/binary, ")">>;
        false -> Name
    end,
    Interpreter = filename:join([Found, "bin", "python"]),
    if
        Found =:= false ->
            <<Name/binary, " is not on PATH: install Python 3.11+ with msgpack, or set the pool "
              "option python (or $ERLPY_PYTHON) to such an interpreter">>;
        is_list(Found) ->
            case {filelib:is_dir(Found), filelib:is_regular(Interpreter)} of
                {true, true} ->
                    <<At/binary, " is a directory, not an interpreter: set the pool option python "
                      "(or $ERLPY_PYTHON) to its ", (unicode:characters_to_binary(Interpreter))/binary,
                      ", or the pool option venv to the directory">>;
                {true, false} ->
                    <<At/binary, " is a directory, not an interpreter: set the pool option python "
                      "(or $ERLPY_PYTHON) to a Python 3.11+ interpreter">>;
                {false, _} ->
                    <<"no Python interpreter at ", At/binary, ": install Python 3.11+ with msgpack, "
                      "or set the pool option python (or $ERLPY_PYTHON) to such an interpreter">>
            end
    end.

%% @doc Start one worker process. The protocol runs on fds 3/4 (`nouse_stdio'), so output
%% of the Python process on fds 1/2 can never corrupt it.
-spec open(erlpy_pool:meta(), binary()) -> {ok, port(), non_neg_integer()} | {error, term()}.
open(#{python := Python, path := Paths, env := Env, cd := Cd}, Mark) ->
    PyDir = package_parent(),
    Boot = boot(PyDir),
    Options =
        [
            {args, [Boot, PyDir | Paths]},
            {packet, 4},
            binary,
            nouse_stdio,
            exit_status,
            hide,
            {env, Env ++ [{?MARK_VAR, binary_to_list(Mark)}]}
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

%% @doc A new mark for the processes of a Python about to start: unique to this VM and
%% this start, so a reused pid never carries it.
-spec mark() -> binary().
mark() ->
    iolist_to_binary([os:getpid(), $., integer_to_list(erlang:unique_integer([positive]))]).

%% @doc End Python and everything it started, then close the port. Python is asked to exit
%% (`STOP'), and its supervisor then ends the rest at once; a Python that does not exit
%% within ?STOP_WAIT ms (its loop thread cannot run: user code holds the GIL, or blocks
%% its event loop) is killed (kill_group/1). Signals cost a shell each (os:cmd/1): asking
%% is several times faster.
-spec close(port() | undefined, processes()) -> ok.
close(undefined, _) ->
    ok;
close(Port, Processes) ->
    Stop = erlpy_frame:encode([?OP_STOP], none),
    Exited =
        try erlang:port_command(Port, Stop) of
            true ->
                receive
                    {Port, {exit_status, _}} -> true
                after ?STOP_WAIT -> false
                end
        catch
            error:badarg -> false  % closed already: its exit message may be on the way
        end,
    %% The exit status comes once the supervisor has ended the tree and exited.
    case Exited of
        true -> ok;
        false -> kill_group(Processes)
    end,
    catch port_close(Port),
    ok.

%% @doc Kill Python and everything it started. The port's process is Python's supervisor
%% (_boot.py): at SIGTERM it kills, at once, everything below it, which is everything
%% Python started, even what left Python's process group (it is their subreaper), and
%% exits with Python's status. If it has not exited in time (or this is not Linux), what
%% kill_leftovers/1 kills. The supervisor does the same when the port closes without us
%% (docs/reliability.md).
-spec kill_group(processes()) -> ok.
kill_group(#{os_pid := undefined}) ->
    ok;
kill_group(#{os_pid := OsPid} = Processes) ->
    _ = os:cmd("kill -TERM " ++ integer_to_list(OsPid) ++ " 2>/dev/null"),
    case await_exit(OsPid, ?SUPERVISOR_WAIT) of
        exited -> ok;
        _ -> kill(Processes, [OsPid])  % still running: its pid is still its own
    end.

%% Wait (1 ms at a time, up to Tries ms) until process OsPid has exited: its /proc entry
%% is gone or a zombie. `unknown' where there is no /proc.
-spec await_exit(non_neg_integer(), non_neg_integer()) -> exited | timeout | unknown.
await_exit(_, 0) ->
    timeout;
await_exit(OsPid, Tries) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        {ok, Stat} ->
            case running(Stat) of
                true -> timer:sleep(1), await_exit(OsPid, Tries - 1);
                false -> exited
            end;
        {error, _} ->
            case filelib:is_dir("/proc/self") of
                true -> exited;
                false -> unknown
            end
    end.

%% @doc What may be left of a Python that exited, or whose supervisor did not end it: the
%% process groups of both (Python leads its own), and, where there is /proc, every
%% process that carries its mark in its environment, wherever it went (its supervisor
%% ends those itself, unless it was killed). Not by pid: those may belong to other
%% processes by now.
-spec kill_leftovers(processes()) -> ok.
kill_leftovers(Processes) ->
    kill(Processes, []).

%% SIGKILL to both groups, the marked processes and `Pids', in one shell.
-spec kill(processes(), [non_neg_integer()]) -> ok.
kill(#{os_pid := OsPid, python_pid := PythonPid, mark := Mark}, Pids) ->
    Targets = [[" -", integer_to_list(G)] || G <- [OsPid, PythonPid], is_integer(G)]
              ++ [[" ", integer_to_list(P)] || P <- Pids ++ marked(Mark)],
    _ = Targets =:= [] orelse os:cmd(lists:flatten(["kill -9", Targets, " 2>/dev/null"])),
    ok.

%% The live processes whose environment holds `Mark' (an empty list without /proc).
-spec marked(binary()) -> [non_neg_integer()].
marked(Mark) ->
    Needle = <<0, ?MARK_VAR, "=", Mark/binary, 0>>,
    case file:list_dir("/proc") of
        {ok, Entries} ->
            [Pid || Entry <- Entries, Pid <- [list_to_integer(Entry) || is_digits(Entry)],
                    carries(Pid, Needle)];
        {error, _} ->
            []
    end.

-spec is_digits(string()) -> boolean().
is_digits(Name) -> Name =/= [] andalso lists:all(fun(C) -> C >= $0 andalso C =< $9 end, Name).

-spec carries(non_neg_integer(), binary()) -> boolean().
carries(Pid, Needle) ->
    case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/environ") of
        {ok, Env} -> binary:match(<<0, Env/binary>>, Needle) =/= nomatch;
        {error, _} -> false
    end.

%% Whether /proc/PID/stat says the process has not exited: its state, after the name in
%% parentheses (which may hold anything), is not Z(ombie) or X (dead).
-spec running(binary()) -> boolean().
running(Stat) ->
    case binary:matches(Stat, <<")">>) of
        [] ->
            false;
        Matches ->
            {Close, 1} = lists:last(Matches),
            case Stat of
                <<_:(Close + 2)/binary, State, _/binary>> -> State =/= $Z andalso State =/= $X;
                _ -> false
            end
    end.

%% The directory that holds the `erlpy' Python package: `priv/python' of the application
%% (a link to python/ in a checkout, a copy in a release), else `python/' next to it (the
%% repository root is the application directory of a rebar3 dependency), else the one
%% next to the sources this module was compiled from (builds that leave priv behind).
-spec package_parent() -> file:filename().
package_parent() ->
    Source = filename:dirname(filename:dirname(source())),
    Candidates =
        [filename:join(Dir, "python") || Dir <- [code:priv_dir(erlpy)], is_list(Dir)] ++
        [filename:join(Dir, "python") || Dir <- [code:lib_dir(erlpy)], is_list(Dir)] ++
        [filename:join([filename:dirname(filename:dirname(code:which(?MODULE))), "priv", "python"]),
         filename:join([Source, "priv", "python"]),
         filename:join([filename:dirname(Source), "python"])],
    %% Absolute: the workers may run in another directory (the pool's `cd').
    case [Dir || Dir <- Candidates, filelib:is_regular(boot(Dir))] of
        [Dir | _] -> filename:absname(Dir);
        [] -> filename:absname(hd(Candidates))
    end.

-spec source() -> file:filename().
source() ->
    proplists:get_value(source, ?MODULE:module_info(compile), ".").

-spec boot(file:filename()) -> file:filename().
boot(PyDir) ->
    filename:join([PyDir, "erlpy", "_boot.py"]).

%%====================================================================
%% Why Python could not start, and what to do
%%====================================================================

%% @doc The detail of `{python_start_failed, Detail}' for a pool that cannot start, with a
%% `message': one line that names the interpreter and says what to do. An interpreter
%% that exits while starting is run once more with `--version' to tell an old Python, or
%% something that is not Python at all, from a Python that failed for another reason.
-spec explain(term()) -> term().
explain(#{reason := missing_module, python := P, externally_managed := true} = D) ->
    %% pip refuses to install into a distribution's Python (PEP 668): name what works.
    Module = maps:get(missing_module, D, <<"msgpack">>),
    D#{message => <<P/binary, " cannot import ", Module/binary, ", and its packages are the "
                    "system's (pip refuses them): install the system's package (on Debian: "
                    "`apt install python3-", Module/binary, "`), or let erlpy build the pool a "
                    "virtualenv (pool options venv => Dir, requirements => [\"", Module/binary,
                    "\"]), or set the pool option python (or $ERLPY_PYTHON) to a Python that "
                    "has it">>};
explain(#{reason := missing_module, python := P} = D) ->
    Module = maps:get(missing_module, D, <<"msgpack">>),
    D#{message => <<P/binary, " cannot import ", Module/binary, ": run `", P/binary,
                    " -m pip install ", Module/binary, "`, or set the pool option python "
                    "(or $ERLPY_PYTHON) to a Python that has it">>};
explain(#{reason := python_too_old, python := P} = D) ->
    Version = case version(P) of
        {ok, Major, Minor} -> iolist_to_binary(io_lib:format("~b.~b", [Major, Minor]));
        error -> <<"older than 3.11">>
    end,
    D#{message => too_old(P, Version)};
explain(#{reason := Posix, python := P} = D) when Posix =:= eacces; Posix =:= enoent; Posix =:= enoexec ->
    D#{message => <<"cannot run ", P/binary, " (", (atom_to_binary(Posix))/binary,
                    "): set the pool option python (or $ERLPY_PYTHON) to a Python 3.11+ "
                    "interpreter">>};
explain(#{reason := Posix, python := P} = D) when Posix =:= emfile; Posix =:= enfile ->
    %% The VM is out of file descriptors: each worker holds a few (its port's pipes).
    D#{message => <<"cannot run ", P/binary, " (", (atom_to_binary(Posix))/binary,
                    "): too many open files; raise the limit (`ulimit -n`, or the service's "
                    "LimitNOFILE) or start fewer workers">>};
explain({Exit, _} = Detail) when Exit =:= exit_status; Exit =:= port_closed ->
    %% Only the worker knows the interpreter; the caller of explain/2 adds it.
    Detail;
explain(Detail) ->
    Detail.

%% @doc explain/1 for an interpreter that exited while starting (`{exit_status, N}', or the
%% broken pipe of one): asks it for its version.
-spec explain(term(), string()) -> term().
explain({Exit, _} = Detail, Python) when Exit =:= exit_status; Exit =:= port_closed ->
    P = unicode:characters_to_binary(Python),
    Status = case Detail of
        {exit_status, N} -> iolist_to_binary(io_lib:format("exited with status ~b", [N]));
        {port_closed, _} -> <<"exited">>
    end,
    Base = #{python => P, exit => Detail},
    case version(P) of
        {ok, Major, Minor} when {Major, Minor} < {3, 11} ->
            Version = iolist_to_binary(io_lib:format("~b.~b", [Major, Minor])),
            Base#{reason => python_too_old, message => too_old(P, Version)};
        {ok, _, _} ->
            Base#{reason => exited,
                  message => <<P/binary, " ", Status/binary, " while starting erlpy's worker "
                               "(its output is in the log)">>};
        error ->
            Base#{reason => not_python,
                  message => <<P/binary, " is not a Python interpreter (it ", Status/binary,
                               "): set the pool option python (or $ERLPY_PYTHON) to a Python "
                               "3.11+ interpreter">>}
    end;
explain(Detail, _) ->
    explain(Detail).

-spec too_old(binary(), binary()) -> binary().
too_old(P, Version) ->
    <<P/binary, " is Python ", Version/binary, "; erlpy needs Python 3.11 or newer: set the "
      "pool option python (or $ERLPY_PYTHON) to a newer interpreter">>.

%% What `Python --version' says (Python 2 writes it on stderr), within 5 s.
-spec version(binary()) -> {ok, non_neg_integer(), non_neg_integer()} | error.
version(Python) ->
    try open_port({spawn_executable, Python},
                  [{args, ["--version"]}, exit_status, stderr_to_stdout, binary, hide]) of
        Port -> version_output(Port, <<>>, erlang:monotonic_time(millisecond) + 5000)
    catch
        error:_ -> error
    end.

-spec version_output(port(), binary(), integer()) -> {ok, non_neg_integer(), non_neg_integer()} | error.
version_output(Port, Acc, Deadline) ->
    receive
        {Port, {data, Data}} ->
            version_output(Port, <<Acc/binary, Data/binary>>, Deadline);
        {Port, {exit_status, 0}} ->
            case re:run(Acc, <<"^Python (\\d+)\\.(\\d+)">>, [{capture, all_but_first, binary}]) of
                {match, [Major, Minor]} -> {ok, binary_to_integer(Major), binary_to_integer(Minor)};
                nomatch -> error
            end;
        {Port, {exit_status, _}} ->
            error
    after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
        catch port_close(Port),
        error
    end.

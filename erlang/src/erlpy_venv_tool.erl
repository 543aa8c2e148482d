%% @private
%% @doc Running the installers of erlpy_venv (uv, pip, venvtool.py) and reading what they
%% say: which requirement failed, the tool's own message, what it installed.
-module(erlpy_venv_tool).

-export([run/4, probe/3, collect_quiet/2, venvtool/0, culprit/2, first_error/1, output/1,
         installed/1]).
-export_type([tool/0]).

-include_lib("kernel/include/logger.hrl").

-type tool() :: {uv, string()} | pip.

%% A progress line in the log while a tool runs this long without ending.
-define(PROGRESS_MS, 30000).
%% Lines of a tool's output kept for the error.
-define(KEEP_LINES, 400).

%% Which requirement failed: the one the tool's error names (by name, path or project
%% name), else the one pip was working on when it failed.
-spec culprit([binary()], [erlpy_venv_spec:requirement()]) -> binary() | undefined.
culprit(Lines, Reqs) ->
    All = [#{spec => erlpy_venv_spec:msgpack_spec(), names => [<<"msgpack">>]} | Reqs],
    {Before, Errors} = lists:splitwith(fun(L) -> not is_error_line(L) end, Lines),
    ErrorText = erlpy_venv_spec:normalise(iolist_to_binary(lists:join(<<"\n">>, Errors))),
    case [S || #{spec := S, names := Ns} <- All, lists:any(fun(N) -> mentions(ErrorText, N) end, Ns)] of
        [S | _] ->
            S;
        [] ->
            Working = [erlpy_venv_spec:normalise(L) || L <- Before,
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
    Name = erlpy_venv_spec:normalise(Name0),
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
    erlpy_venv_spec:failed(Dir, python_failed, <<"cannot build ", (erlpy_venv_spec:bin(Dir))/binary, ": ", Message/binary>>,
           #{python => erlpy_venv_spec:bin(Base), exit => Why}).

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


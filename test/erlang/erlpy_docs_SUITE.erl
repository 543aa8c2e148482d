%% The guides in docs/ are part of the product: every ```erlang block runs here.
%%
%% One group per guide (docs/*.md except README.md and python-streams.md, which has its
%% own pytest), generated from the directory listing, each with one test case that
%% evaluates the guide's ```erlang blocks in order, as Erlang shell expression sequences
%% (erl_scan, erl_parse, erl_eval), with the bindings shared across the blocks of one
%% guide. As in the shell, `f()' and `f(Var)' forget bindings. A block fenced
%% ```erlang norun is skipped (examples that need a websocket or another node). A block
%% fails the test when any of its expressions raises, a `=' match included.
%%
%% After each guide the default pool must be idle again (no stream or call left behind)
%% and every pool the guide started must be stopped, so the guides stay independent.
%%
%% python_blocks runs each ```python block of the same guides (```python norun skipped)
%% with $ERLPY_PYTHON and expects exit status 0.
-module(erlpy_docs_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

%% Guides not run here.
-define(SKIP, ["README.md", "python-streams.md"]).

suite() ->
    [{timetrap, {minutes, 5}}].

all() ->
    [guides_open_with_runnable_example, python_blocks | [{group, G} || G <- guide_groups()]].

groups() ->
    [{G, [], [run_erlang_blocks]} || G <- guide_groups()].

guide_groups() ->
    [list_to_atom(F) || F <- guides()].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(erlpy).

init_per_group(Guide, Config) ->
    [{guide, atom_to_list(Guide)} | Config].

end_per_group(_, _) ->
    ok.

%%====================================================================
%% Cases
%%====================================================================

run_erlang_blocks(Config) ->
    Guide = ?config(guide, Config),
    erlpy_test:doc("every ```erlang block of docs/" ++ Guide ++ " runs"),
    Pools0 = running_pools(),
    Blocks = [B || {erlang, run, _, _} = B <- blocks(Guide)],
    ?assertNotEqual([], Blocks),
    _ = lists:foldl(fun(Block, Bindings) -> run_block(Guide, Block, Bindings) end,
                    erl_eval:new_bindings(), Blocks),
    ct:log("~b blocks of ~s ran", [length(Blocks), Guide]),
    %% Nothing left behind: no extra pool, no request or stream in flight.
    ?assertEqual(Pools0, running_pools()),
    try
        erlpy_test:wait_until(fun() -> idle(default) end, 20000)
    catch
        error:wait_until_timeout -> ct:fail({work_left_in_flight, Guide, py:info(default)})
    end,
    _ = erlpy_test:flush(),
    {comment, io_lib:format("~b blocks", [length(Blocks)])}.

guides_open_with_runnable_example(_Config) ->
    erlpy_test:doc("each guide opens with a complete runnable example (STYLE §9)"),
    Guides = guides(),
    ?assertNotEqual([], Guides),
    lists:foreach(
        fun(Guide) ->
            case blocks(Guide) of
                [{erlang, run, _, _} | _] -> ok;
                Other -> ct:fail({first_block_not_runnable_erlang, Guide, first(Other)})
            end
        end,
        Guides
    ).

python_blocks(Config) ->
    erlpy_test:doc("every ```python block of the guides runs with $ERLPY_PYTHON, status 0"),
    Python = os:find_executable(erlpy_test:python()),
    ?assert(is_list(Python)),
    Dir = ?config(priv_dir, Config),
    Blocks = [{G, L, T} || G <- guides(), {python, run, L, T} <- blocks(G)],
    lists:foreach(
        fun({Guide, Line, Text}) ->
            File = filename:join(Dir, io_lib:format("~s_~b.py", [filename:rootname(Guide), Line])),
            ok = file:write_file(File, Text),
            case run_python(Python, File, Dir) of
                {0, _} -> ok;
                {Status, Output} -> ct:fail({python_block_failed, Guide, Line, Status, Output})
            end
        end,
        Blocks
    ),
    {comment, io_lib:format("~b blocks", [length(Blocks)])}.

%%====================================================================
%% Evaluating a block
%%====================================================================

run_block(Guide, {erlang, run, Line, Text}, Bindings) ->
    ct:log("docs/~s:~b~n~ts", [Guide, Line, Text]),
    Forms = parse(Guide, Line, Text),
    lists:foldl(fun(Exprs, B) -> eval_exprs(Guide, Exprs, B) end, Bindings, Forms).

%% A block is one or more dot-terminated expression sequences.
parse(Guide, Line, Text) ->
    case erl_scan:string(unicode:characters_to_list(Text), Line) of
        {ok, Tokens, _} ->
            [parse_exprs(Guide, Ts) || Ts <- split_dots(Tokens, [], [])];
        {error, Info, Where} ->
            ct:fail({scan_error, Guide, Where, Info})
    end.

split_dots([], [], Acc) -> lists:reverse(Acc);
split_dots([], Cur, _) -> ct:fail({missing_final_dot, element(2, hd(lists:reverse(Cur)))});
split_dots([{dot, _} = Dot | Rest], Cur, Acc) -> split_dots(Rest, [], [lists:reverse([Dot | Cur]) | Acc]);
split_dots([T | Rest], Cur, Acc) -> split_dots(Rest, [T | Cur], Acc).

parse_exprs(Guide, Tokens) ->
    case erl_parse:parse_exprs(Tokens) of
        {ok, Exprs} -> Exprs;
        {error, {L, Mod, Msg}} -> ct:fail({parse_error, Guide, L, lists:flatten(Mod:format_error(Msg))})
    end.

eval_exprs(Guide, Exprs, Bindings) ->
    lists:foldl(fun(E, B) -> eval_expr(Guide, E, B) end, Bindings, Exprs).

%% Shell commands f() and f(Var).
eval_expr(_, {call, _, {atom, _, f}, []}, _) ->
    erl_eval:new_bindings();
eval_expr(_, {call, _, {atom, _, f}, [{var, _, V}]}, B) ->
    erl_eval:del_binding(V, B);
eval_expr(Guide, Expr, B) ->
    try erl_eval:expr(Expr, B, {value, fun local/2}) of
        {value, _Value, B1} -> B1
    catch
        Class:Reason:Stack ->
            Line = erl_anno:line(element(2, Expr)),
            ct:log("docs/~s:~b: ~ts~n~p:~tp~n~tp",
                   [Guide, Line, erl_pp:expr(Expr), Class, Reason, Stack]),
            ct:fail({example_failed, Guide, {line, Line}, Class, Reason})
    end.

local(Name, Args) ->
    error({undefined_shell_function, Name, length(Args)}).

%%====================================================================
%% Guides and their blocks
%%====================================================================

%% $ERLPY_DOCS_DIR, else docs/ of the checkout: found from the erlpy application's `src'
%% (a link into the checkout in rebar3's build dir), else from the directory rebar3 ran in.
docs_dir() ->
    LibDir = code:lib_dir(erlpy),
    FromLib =
        case file:read_link(filename:join(LibDir, "src")) of
            {ok, Link} -> [filename:join([LibDir, Link, "..", "..", "docs"])];
            {error, _} -> [filename:join([LibDir, "..", "..", "docs"])]
        end,
    Candidates =
        [D || D <- [os:getenv("ERLPY_DOCS_DIR")], is_list(D), D =/= ""] ++ FromLib ++
        [filename:join(D, "docs") || D <- [os:getenv("PWD")], is_list(D)],
    case [D || D <- Candidates, filelib:is_regular(filename:join(D, "python-streams.md"))] of
        [Dir | _] -> Dir;
        [] -> error({docs_dir_not_found, Candidates})
    end.

guides() ->
    Files = filelib:wildcard("*.md", docs_dir()),
    lists:sort(Files -- ?SKIP).

%% [{erlang | python | other, run | norun, FirstCodeLine, Text}] in order.
blocks(Guide) ->
    {ok, Bin} = file:read_file(filename:join(docs_dir(), Guide)),
    Lines = string:split(unicode:characters_to_list(Bin), "\n", all),
    fences(Lines, 1, []).

fences([], _, Acc) ->
    lists:reverse(Acc);
fences([Line | Rest], N, Acc) ->
    case string:trim(Line, leading) of
        "```" ++ Info when Info =/= "" ->
            {Body, Rest1, N1} = body(Rest, N + 1, []),
            fences(Rest1, N1, [block(string:lexemes(Info, " \t"), N + 1, Body) | Acc]);
        "```" ->
            {Body, Rest1, N1} = body(Rest, N + 1, []),
            fences(Rest1, N1, [{other, norun, N + 1, Body} | Acc]);
        _ ->
            fences(Rest, N + 1, Acc)
    end.

body([], N, Acc) ->
    {lists:flatten(lists:join("\n", lists:reverse(Acc))), [], N};
body([Line | Rest], N, Acc) ->
    case string:trim(Line) of
        "```" -> {lists:flatten(lists:join("\n", lists:reverse(Acc))) ++ "\n", Rest, N + 1};
        _ -> body(Rest, N + 1, [Line | Acc])
    end.

block(["erlang"], Line, Body) -> {erlang, run, Line, Body};
block(["erlang", "norun" | _], Line, Body) -> {erlang, norun, Line, Body};
block(["python"], Line, Body) -> {python, run, Line, Body};
block(["python", "norun" | _], Line, Body) -> {python, norun, Line, Body};
block(_, Line, Body) -> {other, norun, Line, Body}.

first([]) -> none;
first([{Lang, Run, Line, _} | _]) -> {Lang, Run, {line, Line}}.

%%====================================================================
%% Helpers
%%====================================================================

running_pools() ->
    lists:sort([Name || {{erlpy_pool, Name}, Pid, _, _} <- supervisor:which_children(erlpy_sup),
                        is_pid(Pid)]).

idle(Pool) ->
    #{workers := Workers, queued := Queued} = py:info(Pool),
    Queued =:= 0 andalso lists:all(fun(#{in_flight := F, state := S}) -> F =:= 0 andalso S =:= ready end, Workers).

run_python(Python, File, Dir) ->
    Port = open_port({spawn_executable, Python},
                     [{args, [File]}, {cd, Dir}, exit_status, stderr_to_stdout, binary]),
    python_output(Port, []).

python_output(Port, Acc) ->
    receive
        {Port, {data, Data}} -> python_output(Port, [Data | Acc]);
        {Port, {exit_status, Status}} -> {Status, iolist_to_binary(lists:reverse(Acc))}
    after 60000 ->
        port_close(Port),
        {timeout, iolist_to_binary(lists:reverse(Acc))}
    end.

#!/usr/bin/env escript
%% Batch evaluation with erlpy (docs/scripts.md). Each item is one of
%%
%%   EXPR                  a Python expression giving an iterable, collected with py:stream_eval
%%   MODULE:FUNCTION ARG…  a function whose result is iterated, collected with py:stream
%%                         (each ARG is an integer, a float, else a string)
%%
%% taken from the command line, else one per line from standard input (blank lines and
%% lines starting with # skipped). The items run concurrently on the default pool; the
%% results are printed in input order, one `ITEM => RESULT` line each, then a summary.
%% The exit status is 1 if an item failed. `fibonacci(n)` and `batches(data, size)`, the
%% generators of the streaming guide, are defined in `__main__` for the items to use:
%%
%%   escript examples/batch.escript '(x * x for x in range(5))' '__main__:fibonacci 10'
%%
%% erlpy must be on the code path: ERL_LIBS=/path/to/erlpy/_build/default/lib, or by
%% default the build of the checkout this script is in (`make compile`). Python is
%% $ERLPY_PYTHON, else the checkout's virtualenv (.venv, made by `make`), else python3.
%% If the default pool cannot start, erlpy says why in one line and the script exits
%% with a non-zero status.
-mode(compile).

-define(PRELUDE, <<"
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        yield a
        a, b = b, a + b

def batches(data, size):
    for i in range(0, len(data), size):
        yield data[i:i + size]
">>).

main(Args) ->
    code:which(py) =/= non_existing orelse code:add_patha(checkout_ebin()),
    ok = use_checkout_venv(),
    {ok, _} = application:ensure_all_started(erlpy),
    ok = py:exec(?PRELUDE),
    Items = case Args of
        [] -> read_items(standard_io);
        _ -> Args
    end,
    Results = run_all(Items),
    Failed = length([R || {_, {error, _}} = R <- Results]),
    lists:foreach(fun print/1, Results),
    io:format("-- ~b items: ~b ok, ~b failed~n", [length(Results), length(Results) - Failed, Failed]),
    halt(min(Failed, 1)).

%% One process per item, all at once; the pool spreads them over its workers.
run_all(Items) ->
    Pids = [{Item, spawn_monitor(fun() -> exit({result, run(Item)}) end)} || Item <- Items],
    [receive {'DOWN', Ref, process, Pid, {result, R}} -> {Item, R} end
     || {Item, {Pid, Ref}} <- Pids].

run(Item) ->
    case re:run(Item, "^([A-Za-z_][A-Za-z0-9_.]*):([A-Za-z_][A-Za-z0-9_]*)(\\s.*)?$",
                [unicode, {capture, all_but_first, binary}]) of
        {match, [Module, Function | Rest]} ->
            py:stream(Module, Function, [arg(A) || A <- string:lexemes(Rest, " ")]);
        nomatch ->
            py:stream_eval(unicode:characters_to_binary(Item))
    end.

arg(Text) ->
    S = unicode:characters_to_list(Text),
    case {string:to_integer(S), string:to_float(S)} of
        {{I, []}, _} -> I;
        {_, {F, []}} -> F;
        _ -> unicode:characters_to_binary(S)
    end.

print({Item, {ok, Values}}) ->
    io:format("~ts => ~9999tp~n", [Item, Values]);
print({Item, {error, {python, Type, Message, _Traceback}}}) ->
    io:format("~ts => ~ts: ~ts~n", [Item, Type, Message]);
print({Item, {error, Reason}}) ->
    io:format("~ts => error ~9999tp~n", [Item, Reason]).

read_items(Device) ->
    case io:get_line(Device, "") of
        eof -> [];
        Line ->
            Item = string:trim(Line),
            case Item of
                "" -> read_items(Device);
                "#" ++ _ -> read_items(Device);
                _ -> [Item | read_items(Device)]
            end
    end.

checkout_ebin() ->
    filename:join([checkout(), "_build", "default", "lib", "erlpy", "ebin"]).

%% Without $ERLPY_PYTHON, every pool runs the checkout's virtualenv if there is one: the
%% application-wide `defaults' of erlpy, set before it starts.
use_checkout_venv() ->
    Venv = filename:join([checkout(), ".venv", "bin", "python"]),
    case {os:getenv("ERLPY_PYTHON"), filelib:is_regular(Venv)} of
        {false, true} ->
            ok = application:load(erlpy),
            application:set_env(erlpy, defaults, #{python => Venv});
        _ ->
            ok
    end.

checkout() ->
    filename:dirname(filename:dirname(filename:absname(escript:script_name()))).

#!/usr/bin/env escript
%% The erlpy tour: `make demo` runs it. Python code is in examples/tokens.py.
-mode(compile).

main(_) ->
    Here = filename:dirname(filename:absname(escript:script_name())),
    true = code:add_patha(filename:join([Here, "..", "_build", "default", "lib", "erlpy", "ebin"])),
    %% Starting erlpy is one line, application:ensure_all_started(erlpy); here the default
    %% pool is configured first, to put examples/ on its sys.path.
    ok = application:load(erlpy),
    ok = application:set_env(erlpy, pools, #{default => #{size => 2, path => [Here]}}),
    {ok, _} = application:ensure_all_started(erlpy),

    title("1. An async generator streams tokens as they are produced"),
    {ok, Ref} = py:stream_start(tokens, tokens, []),
    print_live(Ref, fun(Word) -> io:format("~ts ", [Word]) end),

    title("2. Two sources merged with erlpy.streams.merge (arrival order)"),
    {ok, Merged} = py:stream_start(tokens, two_models, []),
    print_live(Merged, fun(Word) -> io:format("[~ts] ", [Word]) end),

    title("3. A stream cancelled half-way"),
    {ok, Countdown} = py:stream_start(tokens, countdown, [10]),
    cancel_after(Countdown, 5),

    title("4. Batch: py:stream_eval collects a generator expression"),
    {ok, Squares} = py:stream_eval(<<"(x * x for x in range(10))">>),
    io:format("py:stream_eval(<<\"(x * x for x in range(10))\">>) -> ~p~n", [Squares]),
    {ok, Words} = py:stream(tokens, tokens, [<<"collected all at once">>, 0.01]),
    io:format("py:stream(tokens, tokens, [...]) -> ~p~n", [Words]),
    ok = application:stop(erlpy).

print_live(Ref, Print) ->
    receive
        {py_stream, Ref, {data, Item}} -> Print(Item), print_live(Ref, Print);
        {py_stream, Ref, done} -> io:format("~n   -> done~n");
        {py_stream, Ref, {error, Reason}} -> io:format("~n   -> error ~p~n", [Reason])
    after 10000 -> io:format("~n   -> no item for 10 s~n")
    end.

cancel_after(Ref, 0) ->
    ok = py:stream_cancel(Ref),
    receive
        {py_stream, Ref, {error, cancelled}} ->
            io:format("~n   -> py:stream_cancel/1: {error, cancelled}, the generator's finally ran~n")
    after 10000 -> io:format("~n   -> no terminal message~n")
    end;
cancel_after(Ref, N) ->
    receive
        {py_stream, Ref, {data, I}} -> io:format("~p ", [I]), cancel_after(Ref, N - 1);
        {py_stream, Ref, Other} -> io:format("~n   -> ended early: ~p~n", [Other])
    after 10000 -> io:format("~n   -> stalled~n")
    end.

title(Text) -> io:format("~n== ~ts~n", [Text]).

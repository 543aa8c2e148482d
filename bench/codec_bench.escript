#!/usr/bin/env escript
%% Erlang side of the codec: encode/decode throughput for typical terms, so that codec
%% regressions show. `make bench` runs it; prints one line per term (median of 5 runs).
-mode(compile).

main(_) ->
    Here = filename:dirname(filename:absname(escript:script_name())),
    true = code:add_patha(filename:join([Here, "..", "_build", "default", "lib", "erlpy", "ebin"])),
    NewAtom = fun(Name) -> binary_to_atom(Name) end,
    Terms = [
        {"small int", 42},
        {"float", 3.14159},
        {"short binary", <<"hello world">>},
        {"1 KiB binary", binary:copy(<<"x">>, 1024)},
        {"atom", some_atom},
        {"call request", [1, 12345, <<"math">>, <<"sqrt">>, [16], #{}]},
        {"map of 10", maps:from_list([{integer_to_binary(I), I} || I <- lists:seq(1, 10)])},
        {"list of 1000 ints", lists:seq(1, 1000)},
        {"nested tuples/lists", [{I, [I, <<"v">>, #{k => I}]} || I <- lists:seq(1, 100)]}
    ],
    io:format("~-22s ~14s ~14s~n", ["term", "encode", "decode"]),
    [begin
         Bin = iolist_to_binary(erlpy_codec:encode(T, none)),
         {T, <<>>} = erlpy_codec:decode(Bin, none, NewAtom),
         N = max(1, 200000 div max(1, byte_size(Bin) div 8)),
         Enc = median([per_op(fun() -> erlpy_codec:encode(T, none) end, N) || _ <- lists:seq(1, 5)]),
         Dec = median([per_op(fun() -> erlpy_codec:decode(Bin, none, NewAtom) end, N) || _ <- lists:seq(1, 5)]),
         io:format("~-22s ~11.3f us ~11.3f us~n", [Name, Enc, Dec])
     end || {Name, T} <- Terms],
    ok.

per_op(Fun, N) ->
    T0 = erlang:monotonic_time(nanosecond),
    loop(Fun, N),
    (erlang:monotonic_time(nanosecond) - T0) / N / 1000.

loop(_, 0) -> ok;
loop(Fun, N) -> Fun(), loop(Fun, N - 1).

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

#!/usr/bin/env escript
%% erlpy benchmarks: the scenarios of SPEC §9. `make bench`, or
%%   escript bench/bench.escript [--runs N] [--quick] [--json FILE] [--only name,name]
%% Each scenario runs after a warm-up, N times (default 5); the table shows medians.
-mode(compile).

main(Args) ->
    Opts = parse(Args, #{runs => 5, quick => false, json => undefined, only => all}),
    Here = filename:dirname(filename:absname(escript:script_name())),
    true = code:add_patha(filename:join([Here, "..", "_build", "default", "lib", "erlpy", "ebin"])),
    ok = application:load(erlpy),
    ok = application:set_env(erlpy, pools, #{default => #{path => [Here]}}),
    {ok, _} = application:ensure_all_started(erlpy),
    #{size := Size, python := PyVsn} = py:info(default),
    io:format("erlpy benchmarks: OTP ~s, Python ~s, ~p schedulers, pool size ~p, ~p runs~n~n",
              [erlang:system_info(otp_release), PyVsn, erlang:system_info(schedulers_online),
               Size, maps:get(runs, Opts)]),
    Rows = [run(S, Opts) || {Name, _, _, _} = S <- scenarios(Opts), selected(Name, Opts)],
    io:format("~n~-44s ~22s ~16s~n", ["scenario", "median", "target"]),
    io:format("~s~n", [lists:duplicate(84, $-)]),
    [io:format("~-44s ~ts ~ts~n", [Label, string:pad(Fmt, 22, leading), string:pad(Target, 16, leading)])
     || {_, Label, Fmt, Target, _} <- Rows],
    case maps:get(json, Opts) of
        undefined -> ok;
        File ->
            Json = [#{name => N, label => L, value => V, target => T} || {N, L, _, T, V} <- Rows],
            ok = file:write_file(File, json(Json))
    end,
    application:stop(erlpy).

parse(["--runs", N | T], O) -> parse(T, O#{runs => list_to_integer(N)});
parse(["--quick" | T], O) -> parse(T, O#{quick => true});
parse(["--json", F | T], O) -> parse(T, O#{json => F});
parse(["--only", S | T], O) -> parse(T, O#{only => string:lexemes(S, ",")});
parse([], O) -> O.

selected(_, #{only := all}) -> true;
selected(Name, #{only := Names}) -> lists:member(atom_to_list(Name), Names).

%% {Name, Label, Target, Fun(Opts) -> measurement map}
scenarios(#{quick := Quick}) ->
    Big = case Quick of true -> 1000000; false -> 10000000 end,
    [
        {floor, "pipe floor (minimal Python loop) p50/p99", "(reference)",
         fun() -> Request = <<16#96, 1, 7, 16#a4, "math", 16#a4, "sqrt", 16#91, 16, 16#80>>,
                  pipe_floor(fun(Port) -> port_command(Port, Request) end, 20000) end},
        {call_seq, "py:call(math, sqrt, [16]) sequential p50/p99", "<=20/<=40 us",
         fun() -> latency(fun() -> {ok, 4.0} = py:call(math, sqrt, [16]) end, 20000) end},
        {eval_seq, "py:eval(<<\"1+1\">>) sequential p50", "<=22 us",
         fun() -> latency(fun() -> {ok, 2} = py:eval(<<"1+1">>) end, 20000) end},
        {call_par, "50 procs x 2000 py:call(math, sqrt, [2])", ">=150000/s",
         fun() -> parallel(50, 2000) end},
        {stream_sync, "stream_start sync gen, 100k ints", ">=1000000/s",
         fun() -> stream_rate(bench_gen, count, 100000, #{}) end},
        {stream_async, "stream_start async gen, 100k ints", ">=1000000/s",
         fun() -> stream_rate(bench_gen, acount, 100000, #{}) end},
        {stream_window, "same, window 1000, ack every 500", ">=1/2 unwindowed",
         fun() -> stream_rate(bench_gen, count, 100000, #{window => 1000}) end},
        {first_item, "time to first item of stream_start", "<=0.1 ms",
         fun() -> first_item(2000) end},
        {stream_collect, "py:stream(bench_gen, count, [100000])", "<=100 ms",
         fun() -> timed(fun() -> {ok, L} = py:stream(bench_gen, count, [100000]), 100000 = length(L) end) end},
        {stream_eval, "py:stream_eval genexp, 100k", "<=12 ms",
         fun() -> timed(fun() -> {ok, L} = py:stream_eval(<<"(x for x in range(100000))">>), 100000 = length(L) end) end},
        {floor_1m, "pipe floor: 1 MiB echoed by a minimal loop", "(reference)",
         fun() -> B = <<"E", (crypto_bytes(1 bsl 20))/binary>>,
                  pipe_floor(fun(Port) -> port_command(Port, B) end, 200) end},
        {roundtrip_1m, "1 MiB binary identity round trip", "<=0.5 ms",
         fun() -> B = crypto_bytes(1 bsl 20),
                  latency(fun() -> {ok, B} = py:call(bench_gen, identity, [B]) end, 200) end},
        {floor_10m, "pipe floor: 10 MiB in, its length out", "(reference)",
         fun() -> B = <<"L", (crypto_bytes(10 bsl 20))/binary>>,
                  pipe_floor(fun(Port) -> port_command(Port, B) end, 50) end},
        {len_10m, "py:call(builtins, len, [Bin]) 10 MiB", "<=4 ms",
         fun() -> B = crypto_bytes(10 bsl 20),
                  latency(fun() -> {ok, _} = py:call(builtins, len, [B]) end, 50) end},
        {flat_memory, io_lib:format("~p items to an owner: memory", [Big]), "flat",
         fun() -> memory_run(Big) end},
        {pool_start, "pool of 4 ready after start_pool", "<=300 ms",
         fun() -> timed(fun() -> {ok, _} = py:start_pool(bench4, #{size => 4}), ok = py:stop_pool(bench4) end) end}
    ].

run({Name, Label, Target, Fun}, #{runs := Runs}) ->
    _ = Fun(),  % warm-up
    Results = [Fun() || _ <- lists:seq(1, Runs)],
    {Fmt, Value} = summarize(Name, Results),
    io:format("  ~-44s ~s~n", [Label, Fmt]),
    {Name, lists:flatten(Label), Fmt, Target, Value}.

summarize(Name, Results) when Name =:= call_seq; Name =:= floor ->
    P50 = median([P || #{p50 := P} <- Results]), P99 = median([P || #{p99 := P} <- Results]),
    {io_lib:format("~.1f / ~.1f us", [P50, P99]), #{p50_us => P50, p99_us => P99}};
summarize(Name, Results) when Name =:= eval_seq; Name =:= first_item ->
    P50 = median([P || #{p50 := P} <- Results]),
    {io_lib:format("~.1f us", [P50]), #{p50_us => P50}};
summarize(Name, Results) when Name =:= roundtrip_1m; Name =:= len_10m; Name =:= floor_1m;
                              Name =:= floor_10m ->
    P50 = median([P || #{p50 := P} <- Results]),
    {io_lib:format("~.2f ms", [P50 / 1000]), #{p50_ms => P50 / 1000}};
summarize(call_par, Results) ->
    R = median([X || #{rate := X} <- Results]),
    {io_lib:format("~w calls/s", [round(R)]), #{rate => R}};
summarize(flat_memory, Results) ->
    #{rate := Rate, vm := VM, py := Py} = hd(Results),
    {io_lib:format("~w/s vm ~s py ~s", [round(Rate), mb(VM), mb(Py)]),
     #{rate => Rate, vm_mb => [X / 1048576 || X <- VM], py_mb => [X / 1048576 || X <- Py]}};
summarize(Name, Results) when Name =:= stream_sync; Name =:= stream_async; Name =:= stream_window ->
    R = median([X || #{rate := X} <- Results]),
    {io_lib:format("~w items/s", [round(R)]), #{rate => R}};
summarize(_, Results) ->
    Ms = median([X || #{ms := X} <- Results]),
    {io_lib:format("~.1f ms", [Ms]), #{ms => Ms}}.

mb(Samples) ->
    io_lib:format("~w-~wMB", [round(lists:min(Samples) / 1048576), round(lists:max(Samples) / 1048576)]).

%% Sequential round trips to a minimal Python loop (bench/floor.py) over the same kind of
%% port: the floors erlpy's latencies are compared with.
pipe_floor(Send, N) ->
    Here = filename:dirname(filename:absname(escript:script_name())),
    #{python := Python} = erlpy_pool:meta(default),
    Port = open_port({spawn_executable, Python}, [{args, [filename:join(Here, "floor.py")]},
                                                   {packet, 4}, binary, nouse_stdio]),
    RoundTrip = fun() -> true = Send(Port), receive {Port, {data, _}} -> ok end end,
    _ = [RoundTrip() || _ <- lists:seq(1, min(N, 1000))],
    Result = latency(RoundTrip, N),
    port_close(Port),
    Result.

latency(Fun, N) ->
    Ts = lists:sort([begin T0 = erlang:monotonic_time(), Fun(),
                           erlang:monotonic_time() - T0 end || _ <- lists:seq(1, N)]),
    #{p50 => us(lists:nth(N div 2, Ts)), p99 => us(lists:nth(max(1, N * 99 div 100), Ts))}.

us(Native) -> erlang:convert_time_unit(Native, native, nanosecond) / 1000.

timed(Fun) ->
    T0 = erlang:monotonic_time(), Fun(),
    #{ms => us(erlang:monotonic_time() - T0) / 1000}.

parallel(Procs, Calls) ->
    Self = self(),
    T0 = erlang:monotonic_time(),
    Pids = [spawn_link(fun() ->
                [{ok, _} = py:call(math, sqrt, [2]) || _ <- lists:seq(1, Calls)],
                Self ! {done, self()} end) || _ <- lists:seq(1, Procs)],
    [receive {done, P} -> ok end || P <- Pids],
    #{rate => Procs * Calls / (us(erlang:monotonic_time() - T0) / 1.0e6)}.

stream_rate(M, F, N, Opts) ->
    T0 = erlang:monotonic_time(),
    {ok, Ref} = py:stream_start(M, F, [N], Opts),
    N = drain(Ref, 0, maps:is_key(window, Opts)),
    #{rate => N / (us(erlang:monotonic_time() - T0) / 1.0e6)}.

drain(Ref, N, Acks) ->
    receive
        {py_stream, Ref, {data, _}} ->
            N1 = N + 1,
            Acks andalso N1 rem 500 =:= 0 andalso py:stream_ack(Ref, 500),
            drain(Ref, N1, Acks);
        {py_stream, Ref, done} -> N;
        {py_stream, Ref, Other} -> error({stream_failed, Other})
    after 30000 -> error(stalled)
    end.

first_item(N) ->
    Ts = lists:sort([begin
        T0 = erlang:monotonic_time(),
        {ok, Ref} = py:stream_start(bench_gen, count, [3]),
        receive {py_stream, Ref, {data, 0}} -> ok end,
        T = erlang:monotonic_time() - T0,
        2 = drain(Ref, 0, false),  % leave nothing behind for the next receive to scan
        T end || _ <- lists:seq(1, N)]),
    #{p50 => us(lists:nth(N div 2, Ts))}.

%% Stream Total items to an owner that consumes them, sampling memory of the VM and of
%% the worker's Python process while it runs.
memory_run(Total) ->
    Self = self(),
    Owner = spawn_link(fun() ->
        receive {go, Ref} -> Self ! {counted, drain(Ref, 0, false)} end end),
    T0 = erlang:monotonic_time(),
    {ok, Ref} = py:stream_start(bench_gen, count, [Total], #{owner => Owner}),
    Owner ! {go, Ref},
    Samples = sample(Self, []),
    Rate = Total / (us(erlang:monotonic_time() - T0) / 1.0e6),
    #{rate => Rate, vm => [V || {V, _} <- Samples], py => [P || {_, P} <- Samples]}.

sample(Self, Acc) ->
    receive {counted, _} -> lists:reverse(Acc)
    after 500 ->
        Py = lists:sum([rss(maps:get(os_pid, W)) || W <- maps:get(workers, py:info(default))]),
        sample(Self, [{erlang:memory(total), Py} | Acc])
    end.

rss(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/statm") of
        {ok, B} -> [_, Res | _] = string:lexemes(binary_to_list(B), " "), list_to_integer(Res) * 4096;
        _ -> 0
    end.

%% Valid UTF-8 text: the common case (a payload of JSON or a document).
crypto_bytes(N) ->
    binary:copy(<<"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef">>, N div 64).

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

json(Term) when is_map(Term) ->
    ["{", lists:join(",", [[json(K), ":", json(V)] || {K, V} <- maps:to_list(Term)]), "}"];
json([C | _] = S) when is_integer(C) ->  % a label or a target: text
    ["\"", [case Ch of $" -> "\\\""; $\\ -> "\\\\"; _ -> Ch end || Ch <- S], "\""];
json(L) when is_list(L) -> ["[", lists:join(",", [json(X) || X <- L]), "]"];
json(A) when is_atom(A) -> ["\"", atom_to_list(A), "\""];
json(N) when is_integer(N) -> integer_to_list(N);
json(F) when is_float(F) -> io_lib:format("~.3f", [F]);
json(S) -> ["\"", S, "\""].

#!/usr/bin/env escript
%% Dynamic batching (docs/serving.md), the SPEC §9 scenario "batched function, 50 x 2,000
%% calls, 1 ms per call: >= 10 x unbatched". N processes each make M sequential calls of a
%% Python function that sleeps 1 ms: once per call (`infer_one', unbatched) and once per
%% batch (`infer', `erlpy.batched'), on the same pool (default size: schedulers online).
%%
%%   escript bench/batched_bench.escript [--procs 50] [--calls 2000] [--unbatched-calls N]
%%       [--max-size 50] [--max-wait 0.002] [--runs 1] [--json FILE]
%%
%% Prints batched calls/s, unbatched calls/s and their ratio (median of --runs), and how
%% many calls a batch served. max_size defaults to the number of callers, as
%% docs/serving.md advises (a batch that cannot fill waits max_wait). The unbatched side
%% runs at about 1,000 calls/s per worker, so 50 x 2,000 takes about 50 s on 2 workers:
%% --unbatched-calls 200 measures the same rate in a tenth of the time.
-mode(compile).

main(Args) ->
    Opts = parse(Args, #{procs => 50, calls => 2000, unbatched_calls => undefined,
                         max_size => "50", max_wait => "0.002", runs => 1, json => undefined}),
    #{procs := Procs, calls := Calls, runs := Runs} = Opts,
    Unbatched = case maps:get(unbatched_calls, Opts) of undefined -> Calls; U -> U end,
    Here = filename:dirname(filename:absname(escript:script_name())),
    true = code:add_patha(filename:join([Here, "..", "_build", "default", "lib", "erlpy", "ebin"])),
    ok = application:load(erlpy),
    Env = [{"BATCH_MAX_SIZE", maps:get(max_size, Opts)}, {"BATCH_MAX_WAIT", maps:get(max_wait, Opts)}],
    ok = application:set_env(erlpy, pools, #{default => #{path => [Here], env => Env}}),
    {ok, _} = application:ensure_all_started(erlpy),
    #{size := Size} = py:info(default),
    io:format("batched function: ~p procs x ~p calls (unbatched: x ~p), 1 ms per call or batch, "
              "pool size ~p, max_size ~s, max_wait ~s s, ~p run(s)~n",
              [Procs, Calls, Unbatched, Size, maps:get(max_size, Opts), maps:get(max_wait, Opts), Runs]),
    %% Warm up: the module imported everywhere, the pool told that `infer' is batched.
    _ = [{ok, {2, _}} = py:call(batched_bench, F, [1]) || F <- [infer, infer_one], _ <- lists:seq(1, 2 * Size)],
    wait_batched(100),
    Measured = [begin
                    {B, {Batches, Largest}} = rate(infer, Procs, Calls),
                    {U1, _} = rate(infer_one, Procs, Unbatched),
                    io:format("  run ~p: batched ~b calls/s, unbatched ~b calls/s, ratio ~.1f; "
                              "~b batches, ~.1f calls per batch, largest ~p~n",
                              [I, round(B), round(U1), B / U1, round(Batches), Procs * Calls / Batches,
                               Largest]),
                    {B, U1}
                end || I <- lists:seq(1, Runs)],
    Batched = median([B || {B, _} <- Measured]),
    UnbatchedRate = median([U1 || {_, U1} <- Measured]),
    Ratio = Batched / UnbatchedRate,
    io:format("~nbatched   ~10b calls/s~nunbatched ~10b calls/s~nratio     ~10.1f x   (target >= 10 x)~n",
              [round(Batched), round(UnbatchedRate), Ratio]),
    case maps:get(json, Opts) of
        undefined -> ok;
        File ->
            ok = file:write_file(File, io_lib:format(
                "{\"batched\": ~.1f, \"unbatched\": ~.1f, \"ratio\": ~.2f}~n",
                [Batched, UnbatchedRate, Ratio]))
    end,
    application:stop(erlpy).

parse(["--procs", N | T], O) -> parse(T, O#{procs => list_to_integer(N)});
parse(["--calls", N | T], O) -> parse(T, O#{calls => list_to_integer(N)});
parse(["--unbatched-calls", N | T], O) -> parse(T, O#{unbatched_calls => list_to_integer(N)});
parse(["--max-size", N | T], O) -> parse(T, O#{max_size => N});
parse(["--max-wait", S | T], O) -> parse(T, O#{max_wait => S});
parse(["--runs", N | T], O) -> parse(T, O#{runs => list_to_integer(N)});
parse(["--json", F | T], O) -> parse(T, O#{json => F});
parse([], O) -> O;
parse(Other, _) ->
    io:format(standard_error, "unknown arguments: ~p~n", [Other]),
    halt(2).

%% Calls per second of Procs processes making Calls sequential calls each, and the number
%% of batches (each call returns the size of its batch: a batch of N counts 1/N per call)
%% and the largest.
rate(Function, Procs, Calls) ->
    Self = self(),
    T0 = erlang:monotonic_time(),
    Pids = [spawn_link(fun() ->
                Sizes = [begin {ok, {Y, N}} = py:call(batched_bench, Function, [X]), Y = X + 1, N end
                         || X <- lists:seq(1, Calls)],
                Self ! {done, self(), lists:sum([1 / N || N <- Sizes]), lists:max(Sizes)}
            end) || _ <- lists:seq(1, Procs)],
    Done = [receive {done, P, B, L} -> {B, L} end || P <- Pids],
    Seconds = erlang:convert_time_unit(erlang:monotonic_time() - T0, native, microsecond) / 1.0e6,
    {Procs * Calls / Seconds, {lists:sum([B || {B, _} <- Done]), lists:max([L || {_, L} <- Done])}}.

%% The pool routes `infer' to one worker once a worker has told it `infer' is batched.
wait_batched(0) ->
    error(not_batched);
wait_batched(N) ->
    case py:info(default) of
        #{batched := #{{<<"batched_bench">>, <<"infer">>} := _}} -> ok;
        _ -> timer:sleep(10), wait_batched(N - 1)
    end.

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).

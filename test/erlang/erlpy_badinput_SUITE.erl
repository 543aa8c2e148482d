%% Bad input: what callers, Python code and the wire may throw at erlpy. Each case ends
%% with the pool serving and nothing crashed; side effects that must not happen are files
%% whose absence the case checks.
%%
%% Already covered elsewhere, not repeated here: random terms through a Python identity
%% function (erlpy_types_SUITE:proper_identity), 100,000-deep terms through call/eval in
%% both directions and max_atoms on returned values (erlpy_types_SUITE), random and
%% truncated frames into the Erlang decoder (erlpy_codec_prop_tests) and random bytes into
%% the Python decoder (test/python/test_codec.py).
%%
%% Added here: a million new atoms by every path Python has, 100,000-deep values by the
%% remaining paths (source code, stream items, stream input, callbacks), a 200 MB binary
%% round trip, invalid UTF-8 and unencodable text everywhere, names built to inject code,
%% garbage frames written into a real Python worker's pipe (a port opened by the test, as
%% erlpy_python:open/2 does), and garbage frames written by Python code to the worker.
%%
%% Group regressions, run by all/0, holds the product bugs these tests found (all fixed
%% since), each described in its doc and in docs/reliability.md.
-module(erlpy_badinput_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(POOL, erlpy_badinput).
-define(OPTS, #{pool => ?POOL}).

all() ->
    [
        million_new_atoms,
        deep_source_code,
        deep_values_by_other_paths,
        binary_200mb_round_trip,
        invalid_utf8_everywhere,
        unencodable_text_from_python,
        injected_names_run_nothing,
        garbage_messages_into_python,
        garbage_frames_from_python,
        too_large_for_a_frame,
     {group, regressions}].

groups() ->
    %% Product bugs these tests found, all fixed since; each case's comment says what it was.
    [{regressions, [], [
        truncated_frame_swallows_next_request,
        random_frames_into_python,
        fatal_message_creates_atoms,
        fatal_message_crashes_worker,
        python_memory_kept_after_big_reply,
        timeouts_beyond_erlang_timers,
        improper_lists_as_options,
        remote_stream_on_a_vm_not_distributed
    ]}].

suite() ->
    [{timetrap, {minutes, 5}}].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_group(_, Config) -> Config.
end_per_group(_, _) -> ok.

init_per_testcase(Case, Config) ->
    Dir = filename:join(?config(priv_dir, Config), atom_to_list(Case)),
    ok = filelib:ensure_path(Dir ++ "/"),
    {ok, _} = py:start_pool(?POOL, #{size => 1, max_atoms => 1000}),
    [{dir, Dir} | Config].

end_per_testcase(_Case, _Config) ->
    _ = py:unregister_function(badinput_echo),
    _ = py:unregister_function(badinput_deep),
    _ = py:stop_pool(?POOL),
    _ = erlpy_test:flush(),
    ok.

%%====================================================================
%% atoms
%%====================================================================

million_new_atoms(_) ->
    erlpy_test:doc("Python tries to create 1,000,000 new atoms (result, dict keys, stream items, "
                   "erlang.send, erlang.call): max_atoms 1000 holds, the atom table barely moves"),
    U = integer_to_binary(erlang:unique_integer([positive])),
    ok = py:exec(<<"import erlpy\nU = '", U/binary, "'\n"
                   "def atoms(tag, n=1000000):\n"
                   "    return (erlpy.Atom(f'badinput_{tag}_{i}_{U}') for i in range(n))\n"
                   "def atom_stream(tag):\n"
                   "    return atoms(tag)\n">>, ?OPTS),
    ok = py:register_function(badinput_echo, fun(Args) -> length(Args) end),
    Restarts = restarts(),
    Before = erlang:system_info(atom_count),
    T0 = erlang:monotonic_time(millisecond),
    TooMany = {error, {badarg, {too_many_atoms, 1000}}},
    %% a returned list, tuple and dict: the first one uses up the budget
    ?assertEqual(TooMany, py:eval(<<"list(atoms('list'))">>, #{}, ?OPTS)),
    ?assertEqual(TooMany, py:eval(<<"tuple(atoms('tuple'))">>, #{}, ?OPTS)),
    ?assertEqual(TooMany, py:eval(<<"dict.fromkeys(atoms('key'), 1)">>, #{}, ?OPTS)),
    %% a stream of new atoms: ended with the error, its generator closed
    {ok, Ref} = py:stream_start('__main__', atom_stream, [<<"stream">>], ?OPTS),
    ?assertEqual({TooMany, []}, erlpy_test:collect(Ref, 60000)),
    ?assertEqual(TooMany, py:stream_eval(<<"atoms('collect')">>, #{}, ?OPTS)),
    %% erlang.send of new atoms to us: nothing arrives (each is logged as an error)
    ?assertEqual({ok, 1000},
                 py:eval(<<"sum(1 for a in atoms('send', 1000) if erlang.send(pid, a) is None)">>,
                         #{pid => self()}, ?OPTS)),
    %% erlang.call with new atoms: the call fails in Python, cleanly
    CallResult = py:eval(<<"erlang.call('badinput_echo', *atoms('call', 100000))">>, #{}, ?OPTS),
    ct:log("callback: ~P", [CallResult, 20]),
    ?assertMatch({error, {python, _, _, _}}, CallResult),
    Grown = erlang:system_info(atom_count) - Before,
    Ms = erlang:monotonic_time(millisecond) - T0,
    ct:log("atom table grew by ~b (max_atoms 1000) in ~b ms; atoms_created ~p",
           [Grown, Ms, maps:get(atoms_created, py:info(?POOL))]),
    ?assert(Grown =< 1000 + 20),
    timer:sleep(200),
    ?assertEqual([], erlpy_test:flush()),
    ?assertEqual({ok, [ok, error]}, py:eval(<<"[erlang.atom('ok'), erlang.atom('error')]">>, #{}, ?OPTS)),
    ?assertEqual(Restarts, restarts()).

%%====================================================================
%% nesting
%%====================================================================

deep_source_code(_) ->
    erlpy_test:doc("code nested 100,000 deep in eval, exec and a pool's init: a clean Python "
                   "error, the worker survives"),
    Restarts = restarts(),
    Open = binary:copy(<<"[">>, 100000),
    Close = binary:copy(<<"]">>, 100000),
    Parens = <<(binary:copy(<<"(">>, 100000))/binary, "1", (binary:copy(<<")">>, 100000))/binary>>,
    Calls = <<(binary:copy(<<"abs(">>, 100000))/binary, "1", (binary:copy(<<")">>, 100000))/binary>>,
    Results = [py:eval(<<Open/binary, Close/binary>>, #{}, ?OPTS),
               py:eval(Parens, #{}, ?OPTS),
               py:eval(Calls, #{}, ?OPTS),
               py:exec(<<"x = ", Open/binary, Close/binary>>, ?OPTS),
               py:stream_eval(<<"iter(", Open/binary, Close/binary, ")">>, #{}, ?OPTS)],
    ct:log("~P", [Results, 12]),
    [?assertMatch({error, {python, _, _, _}}, R) || R <- Results],
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, ?OPTS)),
    ?assertEqual(Restarts, restarts()),
    Init = py:start_pool(badinput_deep_init, #{size => 1, init => <<"x = ", Open/binary, Close/binary>>}),
    ct:log("init: ~P", [Init, 12]),
    ?assertMatch({error, {python_start_failed, {init, {python, _, _, _}}}}, Init),
    _ = py:stop_pool(badinput_deep_init).

deep_values_by_other_paths(_) ->
    erlpy_test:doc("100,000-deep values as stream items, stream input, kwargs, callback "
                   "arguments and callback results: clean errors, nothing crashes"),
    Restarts = restarts(),
    Deep = nest(100000),
    ok = py:exec(<<"def deep(n):\n    x = 0\n    for _ in range(n):\n        x = [x]\n    return x\n"
                   "def deep_gen(n):\n    yield 1\n    yield deep(n)\n    yield 2\n"
                   "async def echo_input(inp):\n    async for v in inp:\n        yield v\n">>, ?OPTS),
    %% a generator yields one: the items before it, then an error
    {ok, Ref1} = py:stream_start('__main__', deep_gen, [100000], ?OPTS),
    {T1, Items1} = erlpy_test:collect(Ref1, 30000),
    ct:log("deep item: ~P", [{T1, Items1}, 12]),
    ?assertMatch({{error, {python, _, _, _}}, [1]}, {T1, Items1}),
    %% stream input: the stream ends with badarg
    {ok, Ref2} = py:stream_start('__main__', echo_input, [], ?OPTS#{input => true}),
    ok = py:stream_send(Ref2, 1),
    receive {py_stream, Ref2, {data, 1}} -> ok after 10000 -> error(no_echo) end,
    ok = py:stream_send(Ref2, Deep),
    ?assertEqual({{error, {badarg, {too_deep, 500}}}, []}, erlpy_test:collect(Ref2, 30000)),
    %% kwargs
    ?assertEqual({error, {badarg, {too_deep, 500}}}, py:call(builtins, dict, [], #{k => Deep}, ?OPTS)),
    %% a callback with deep arguments fails in Python
    ok = py:register_function(badinput_echo, fun(Args) -> length(Args) end),
    CallArgs = py:eval(<<"erlang.call('badinput_echo', deep(100000))">>, #{}, ?OPTS),
    ct:log("deep callback argument: ~P", [CallArgs, 12]),
    ?assertMatch({error, {python, _, _, _}}, CallArgs),
    ?assertMatch({error, {python, _, _, _}}, py:eval(<<"erlang.send(pid, deep(100000))">>, #{pid => self()}, ?OPTS)),
    %% an Erlang function returning a deep term: Python gets an error, not a crash
    ok = py:register_function(badinput_deep, fun(_) -> Deep end),
    CallResult = py:eval(<<"erlang.call('badinput_deep')">>, #{}, ?OPTS),
    ct:log("deep callback result: ~P", [CallResult, 12]),
    ?assertMatch({error, {python, _, _, _}}, CallResult),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, ?OPTS)),
    ?assertEqual(Restarts, restarts()),
    timer:sleep(100),
    ?assertEqual([], erlpy_test:flush()).

nest(0) -> 0;
nest(N) -> [nest(N - 1)].

%%====================================================================
%% big
%%====================================================================

binary_200mb_round_trip(_) ->
    erlpy_test:doc("a 200 MB binary (random bytes) and 200 MB of text round trip through Python; "
                   "the VM's memory comes back"),
    gc_all(),
    Mem0 = erlang:memory(total),
    [OsPid] = os_pids(),
    Rss0 = rss(OsPid),
    Results = big_round_trips(),
    ct:log("~p", [Results]),
    ?assertEqual([true, true], [Same || {_, Same, _} <- Results]),
    Mem = memory_below(Mem0 + 20000000),
    ct:log("VM memory ~.1f MB -> ~.1f MB; Python RSS ~b MB -> ~b MB; big binaries held by ~p",
           [Mem0 / 1.0e6, Mem / 1.0e6, Rss0 div 1024, rss(OsPid) div 1024, big_binary_holders()]),
    ?assert(Mem < Mem0 + 20000000),
    ?assertEqual([OsPid], os_pids()),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, ?OPTS)).

%% erlang:memory(total) after garbage collecting every process, once it is below Limit
%% (a process may still be finishing with the reply when the case checks).
memory_below(Limit) ->
    _ = (catch erlpy_test:wait_until(fun() -> gc_all(), erlang:memory(total) < Limit end, 10000)),
    erlang:memory(total).

big_round_trips() ->
    Random = rand:bytes(200 bsl 20),
    Text = binary:copy(<<"héllo wörld "/utf8>>, (200 bsl 20) div 14),
    [round_trip(random, Random), round_trip(text, Text)].

round_trip(Kind, Bin) ->
    T0 = erlang:monotonic_time(millisecond),
    Back = py:eval(<<"x">>, #{x => Bin}, ?OPTS#{timeout => 120000}),
    {Kind, Back =:= {ok, Bin}, erlang:monotonic_time(millisecond) - T0}.

%%====================================================================
%% text
%%====================================================================

invalid_utf8_everywhere(_) ->
    erlpy_test:doc("invalid UTF-8 in names, code, kwargs and locals keys, values and stream "
                   "input: clean errors or bytes, nothing crashes"),
    Restarts = restarts(),
    Bad = <<"bad", 16#ff, 16#fe, "name">>,
    InvalidName = fun({error, {badarg, {invalid_name, _}}}) -> true; (_) -> false end,
    ?assert(InvalidName(py:call(Bad, f, [], #{}, ?OPTS))),
    ?assert(InvalidName(py:call(math, Bad, [], #{}, ?OPTS))),
    ?assert(InvalidName(py:stream(Bad, f, [], #{}, ?OPTS))),
    {ok, Ref} = py:stream_start(math, Bad, [], ?OPTS),
    {T, []} = erlpy_test:collect(Ref, 10000),
    ?assert(InvalidName(T)),
    PyError = fun({error, {python, _, _, _}}) -> true; (_) -> false end,
    ?assert(PyError(py:eval(<<"1 + ", 16#ff>>, #{}, ?OPTS))),
    ?assert(PyError(py:exec(<<"x = '", 16#c3, "'">>, ?OPTS))),
    ?assert(PyError(py:stream_eval(<<"iter([", 16#80, "])">>, #{}, ?OPTS))),
    ?assert(PyError(py:call(builtins, dict, [], #{Bad => 1}, ?OPTS))),
    ?assert(PyError(py:eval(<<"1">>, #{Bad => 1}, ?OPTS))),
    %% as values they are bytes, and come back unchanged
    ?assertEqual({ok, <<"bytes">>}, py:eval(<<"type(x).__name__">>, #{x => Bad}, ?OPTS)),
    ?assertEqual({ok, Bad}, py:eval(<<"x">>, #{x => Bad}, ?OPTS)),
    ?assertEqual({ok, #{Bad => [Bad]}}, py:eval(<<"x">>, #{x => #{Bad => [Bad]}}, ?OPTS)),
    ok = py:exec(<<"async def echo_input(inp):\n    async for v in inp:\n        yield v\n">>, ?OPTS),
    {ok, Ref2} = py:stream_start('__main__', echo_input, [], ?OPTS#{input => true}),
    ok = py:stream_send(Ref2, Bad),
    ok = py:stream_close(Ref2),
    ?assertEqual({done, [Bad]}, erlpy_test:collect(Ref2, 10000)),
    ?assertEqual(Restarts, restarts()).

unencodable_text_from_python(_) ->
    erlpy_test:doc("lone surrogates from Python (results, atoms, dict keys, stream items, "
                   "exception messages sync and async): clean errors, the worker survives"),
    Restarts = restarts(),
    ok = py:exec(<<"def gen():\n    yield 1\n    yield '\\ud800'\n"
                   "def raise_bad():\n    raise ValueError('\\ud800')\n"
                   "async def araise_bad():\n    raise ValueError('\\ud800')\n"
                   "def gen_raise_bad():\n    yield 1\n    raise ValueError('\\ud800')\n">>, ?OPTS),
    Error = fun({error, {python, _, _, _}}) -> true; (_) -> false end,
    Results = [py:eval(<<"'\\ud800'">>, #{}, ?OPTS),
               py:eval(<<"erlang.atom('\\ud800')">>, #{}, ?OPTS),
               py:eval(<<"{'\\ud800': 1}">>, #{}, ?OPTS),
               py:stream('__main__', gen, [], #{}, ?OPTS),
               py:call('__main__', raise_bad, [], #{}, ?OPTS#{timeout => 10000}),
               py:call('__main__', araise_bad, [], #{}, ?OPTS#{timeout => 10000}),
               py:stream('__main__', gen_raise_bad, [], #{}, ?OPTS#{timeout => 10000})],
    ct:log("~p", [Results]),
    [?assert(Error(R)) || R <- Results],
    {ok, Ref} = py:stream_start('__main__', gen, [], ?OPTS),
    {T, Items} = erlpy_test:collect(Ref, 10000),
    ?assert(Error(T)),
    ?assertEqual([1], Items),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, ?OPTS)),
    ?assertEqual(Restarts, restarts()).

%%====================================================================
%% injection
%%====================================================================

injected_names_run_nothing(Config) ->
    erlpy_test:doc("module and function names built to inject code (';', __import__, NUL, "
                   "newlines, calls): {badarg, {invalid_name, _}} and nothing ran"),
    Dir = ?config(dir, Config),
    Mark = fun(I) -> iolist_to_binary(filename:join(Dir, "pwned_" ++ integer_to_list(I))) end,
    Touch = fun(I) -> <<"open('", (Mark(I))/binary, "', 'w').close()">> end,
    Names = fun(I) ->
        T = Touch(I),
        [<<"os; import sys">>,
         <<"os; ", T/binary>>,
         <<"__import__('os').system">>,
         <<"__import__('os').system('touch ", (Mark(I))/binary, "')">>,
         <<"os", 0>>,
         <<"os", 0, "; ", T/binary>>,
         <<"os\n", T/binary>>,
         <<"os\r\n", T/binary>>,
         <<"(", T/binary, ")">>,
         <<"[", T/binary, "][0]">>,
         <<"os.system('touch ", (Mark(I))/binary, "')">>,
         <<"os.path;", T/binary>>,
         <<"lambda: ", T/binary>>,
         <<"os #">>, <<"os ">>, <<" os">>, <<"">>, <<".">>, <<"os.">>, <<".os">>, <<"os..path">>,
         <<"import os">>, <<"1os">>, <<"os-path">>, <<"*">>, <<"os.*">>,
         <<"\\u006fs">>, <<"o\\x73">>]
    end,
    Cases = lists:append([[{M, F} || M <- Names(I) ++ [<<"os">>], F <- [<<"getpid">> | Names(100 + I)],
                           {M, F} =/= {<<"os">>, <<"getpid">>}]
                          || I <- [1]]),
    ct:log("~b name pairs", [length(Cases)]),
    Results = lists:append([[{M, F, py:call(M, F, [], #{}, ?OPTS)},
                             {M, F, py:stream(M, F, [], #{}, ?OPTS)},
                             {M, F, stream_start_terminal(M, F)}]
                            || {M, F} <- Cases]),
    Bad = [R || {_, _, Result} = R <- Results, not is_badarg(Result)],
    ?assertEqual([], Bad),
    %% kwargs and locals keys are data, never code
    K = <<"x=0, **{}); ", (Touch(7))/binary, "; (">>,
    ?assertEqual({ok, #{K => 1}}, py:call(builtins, dict, [], #{K => 1}, ?OPTS)),
    ?assertMatch({error, {python, _, _, _}}, py:call(math, sqrt, [4], #{K => 1}, ?OPTS)),
    ?assertEqual({ok, 1}, py:eval(<<"1">>, #{<<"x; ", (Touch(8))/binary>> => 1}, ?OPTS)),
    %% nothing ran: no file, and the same Python
    timer:sleep(200),
    ?assertEqual([], filelib:wildcard(filename:join(Dir, "pwned_*"))),
    ?assertEqual(0, restarts()),
    ?assertEqual({ok, 2.0}, py:call(<<"math">>, <<"sqrt">>, [4], #{}, ?OPTS)).

is_badarg({error, {badarg, {invalid_name, _}}}) -> true;
is_badarg(_) -> false.

stream_start_terminal(M, F) ->
    case py:stream_start(M, F, [], ?OPTS) of
        {ok, Ref} -> element(1, erlpy_test:collect(Ref, 10000));
        Error -> Error
    end.

%%====================================================================
%% frames into a real Python worker
%%====================================================================

garbage_messages_into_python(_) ->
    erlpy_test:doc("a real worker process (our own port) gets 66 kinds of complete but invalid "
                   "messages, each followed by a valid CALL: it answers every CALL, never hangs"),
    Port = open_python(),
    Garbage = garbage_messages(),
    Outcomes = [{I, send_then_call(Port, G, I, 3000)} || {I, G} <- lists:zip(lists:seq(1, length(Garbage)), Garbage)],
    Bad = [O || {_, R} = O <- Outcomes, R =/= answered],
    ct:log("~b garbage frames, bad outcomes: ~p", [length(Garbage), Bad]),
    ?assertEqual([], Bad),
    close_python(Port).

%% Complete msgpack values that are not valid messages, and bytes msgpack rejects at once.
garbage_messages() ->
    E = fun(T) -> iolist_to_binary(erlpy_codec:encode(T, none)) end,
    Ext = fun(Type, Data) -> <<16#c7, (byte_size(Data)), Type, Data/binary>> end,
    [<<>>, <<16#c1>>, <<16#c1, 16#c1, 16#c1>>, <<16#dd, 255, 255, 255, 255>>,
     <<16#a2, 16#ff, 16#fe>>,
     <<(binary:copy(<<16#91>>, 100000))/binary, 16#c0>>,
     <<(binary:copy(<<16#81, 16#a1, $k>>, 100000))/binary, 16#c0>>,
     E(42), E(-1), E(1.5), E(<<"text">>), E(nil_atom), E([]), E(#{}), E(#{1 => 2}),
     E([999]), E([-1]), E([1.0]), E([<<"1">>]), E([[1]]), E([#{}]),
     E([1]), E([1, 5]), E([1, 5, <<"math">>]), E([1, 5, <<"math">>, <<"sqrt">>]),
     E([1, 5, <<"math">>, <<"sqrt">>, 16, #{}]), E([1, 5, <<"math">>, <<"sqrt">>, [16], [1, 2]]),
     E([1, 5, 1, 2, [], #{}]), E([1, [1], <<"math">>, <<"sqrt">>, [16], #{}]),
     E([1, #{}, <<"math">>, <<"sqrt">>, [16], #{}]),
     E([1, 6, <<"nosuchmodule_badinput">>, <<"f">>, [], #{}]),
     E([1, 7, <<"math">>, <<"sqrt">>, [16], #{1 => 2}]),
     E([2, 8]), E([2, 8, 42, #{}]), E([2, 9, <<"1 +">>, #{}]), E([2, 10, <<"x">>, [1]]),
     E([3, 11]), E([3, 12, [1, 2]]),
     E([4, 13, <<"math">>, <<"sqrt">>, [16], #{}, <<"credit">>, false]),
     E([4, 14, <<"builtins">>, <<"range">>, [3], #{}, -5, false]),
     E([4, 15]), E([5, 16, <<"iter(1)">>, #{}, 0]), E([5, 17]),
     E([6]), E([6, 123456]), E([6, <<"x">>]), E([7, 123456, 5]), E([7, 1, -1000]),
     E([8, 123456, [1]]), E([8]), E([9, 123456]), E([10, 123456, true, 1]), E([10]),
     E([11]), E([11, 1, 2]), E([11, self(), #{<<"max_memory">> => <<"lots">>}]),
     E([12]), E([99, <<"fatal">>]),
     Ext(9, <<"x">>), Ext(1, <<16#ff>>), Ext(2, <<16#c1>>), Ext(3, <<>>), Ext(4, <<>>),
     Ext(4, <<131, 0>>), Ext(5, <<16#ff>>),
     <<(E([6, 1]))/binary, 16#c1>>].

send_then_call(Port, Garbage, I) ->
    send_then_call(Port, Garbage, I, 10000).

send_then_call(Port, Garbage, I, Timeout) ->
    true = port_command(Port, Garbage),
    Id = 1000000 + I,
    true = port_command(Port, erlpy_codec:encode([1, Id, <<"math">>, <<"sqrt">>, [16], #{}], none)),
    await_result(Port, Id, Timeout).

%% answered | exited | hang | {wrong, Message} | {erlang_decoder, Error}
await_result(Port, Id, Timeout) ->
    receive
        {Port, {data, Frame}} ->
            case decode_all(Frame) of
                {error, E} -> {erlang_decoder, E};
                Messages ->
                    case [M || [1, MId | _] = M <- Messages, MId =:= Id] of
                        [[1, Id, 4.0]] -> answered;
                        [] -> await_result(Port, Id, Timeout);
                        Other -> {wrong, Other}
                    end
            end;
        {Port, {exit_status, _}} -> exited
    after Timeout ->
        hang
    end.

decode_all(<<>>) -> [];
decode_all(Bin) ->
    try erlpy_codec:decode(Bin, none, fun(N) -> binary_to_existing_atom(N) end) of
        {Term, Rest} ->
            case decode_all(Rest) of
                {error, _} = E -> E;
                More -> [Term | More]
            end
    catch
        C:R -> {error, {C, R}}
    end.

%% A worker process as erlpy_python:open/2 starts it, owned by the test.
open_python() ->
    PyDir = filename:join(code:priv_dir(erlpy), "python"),
    Boot = filename:join([PyDir, "erlpy", "_boot.py"]),
    Port = open_port({spawn_executable, erlpy_test:python()},
                     [{args, [Boot, PyDir]}, {packet, 4}, binary, nouse_stdio, exit_status,
                      hide, {env, []}]),
    receive
        {Port, {data, Frame}} -> true = lists:any(fun(M) -> hd(M) =:= 0 end, decode_all(Frame))
    after 30000 -> error(no_ready)
    end,
    true = port_command(Port, erlpy_codec:encode([11, self(), #{}], none)),
    Port.

close_python(Port) ->
    {os_pid, OsPid} = erlang:port_info(Port, os_pid),
    catch port_close(Port),
    ok = erlpy_test:wait_until(fun() -> not erlpy_test:os_pid_alive(OsPid) end).

%%====================================================================
%% frames from Python
%%====================================================================

garbage_frames_from_python(_) ->
    erlpy_test:doc("Python code writes 2,500 random frames and malformed messages into its own "
                   "protocol pipe: a frame that cannot be read ends that Python (a reply in it "
                   "would be lost), every call gets one answer, the worker process survives "
                   "and the pool serves"),
    [#{pid := Worker}] = workers(),
    ok = py:exec(<<"import random, msgpack\nimport erlpy._runtime as _r\n"
                   "def garbage(n, seed):\n"
                   "    rnd = random.Random(seed)\n"
                   "    w = _r.current().writer\n"
                   "    for _ in range(n):\n"
                   "        w.send(rnd.randbytes(rnd.randrange(0, 300)))\n"
                   "    for m in [[1], [1, 'x'], [3, 1, 2], [3, 99, [1]], [4, 'id'], [5], [5, 1, 2, 3],\n"
                   "              [6, 1], [7], [8, 1], [42], [], {}, 1.5, b'\\x91' * 50000 + b'\\xc0']:\n"
                   "        w.send(m if isinstance(m, bytes) else msgpack.packb(m))\n"
                   "    return n\n">>, ?OPTS),
    Results = [py:call('__main__', garbage, [500, Seed], #{}, ?OPTS) || Seed <- lists:seq(1, 5)],
    ?assertEqual([], [R || R <- Results, R =/= {ok, 500},
                           R =/= {error, {worker_exited, malformed_frame}}]),
    %% Replies that came before the kill took effect still count: a call may get its
    %% answer although its garbage ended the Python that sent it. But that Python ended.
    [#{pid := Worker, restarts := Restarts}] = workers(),
    ?assert(Restarts >= 1),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, ?OPTS)).

too_large_for_a_frame(_) ->
    erlpy_test:doc("a request over 4 GiB ({packet, 4}'s limit) is refused with "
                   "{badarg, {too_large, Bytes}} before it reaches the worker; so is a "
                   "stream's start and its input, and the pool serves on"),
    %% 65 references to one 64 MiB binary: over 4 GiB of message, 64 MiB of memory.
    B = binary:copy(<<0>>, 64 bsl 20),
    Huge = lists:duplicate(65, B),
    Restarts = restarts(),
    ?assertMatch({error, {badarg, {too_large, _}}}, py:call(builtins, len, [Huge], #{}, ?OPTS)),
    ?assertMatch({error, {badarg, {too_large, _}}}, py:eval(<<"len(x)">>, #{x => Huge}, ?OPTS)),
    ?assertMatch({error, {badarg, {too_large, _}}}, py:stream(builtins, iter, [Huge], #{}, ?OPTS)),
    ?assertMatch({error, {badarg, {too_large, _}}}, py:stream_start(builtins, iter, [Huge], ?OPTS)),
    ok = py:exec(<<"async def input_lengths(inp):\n    async for x in inp:\n        yield len(x)\n">>,
                 ?OPTS),
    {ok, Ref} = py:stream_start('__main__', input_lengths, [], ?OPTS#{input => true}),
    ok = py:stream_send(Ref, [B]),
    ok = py:stream_send(Ref, Huge),
    ?assertMatch({{error, {badarg, {too_large, _}}}, _}, erlpy_test:collect(Ref)),
    ?assertEqual({ok, 3}, py:call(builtins, len, [[1, 2, 3]], #{}, ?OPTS)),
    ?assertEqual(Restarts, restarts()).

%%====================================================================
%% regressions: bugs these tests found (fixed)
%%====================================================================

%% The bug (in the runtime as it was then): erlpy._runtime.Runtime._run_loop fed every
%% frame into one long-lived msgpack
%% Unpacker. A frame whose last message is incomplete leaves its bytes in the unpacker,
%% and the next frames are read as the rest of that message: the valid CALL that follows
%% is swallowed and never answered (nor is anything after it, until the unpacker's buffer
%% happens to complete). Expected: a frame is self-contained; leftover bytes at the end of
%% a frame are dropped (and logged) and the next frame is decoded afresh.
truncated_frame_swallows_next_request(_) ->
    erlpy_test:doc("BUG: a frame ending in an incomplete message makes the Python worker "
                   "swallow the next valid request (it never answers)"),
    Call = iolist_to_binary(erlpy_codec:encode([1, 1, <<"math">>, <<"sqrt">>, [16], #{}], none)),
    Truncated = [<<16#96, 1>>, binary:part(Call, 0, byte_size(Call) - 1), <<16#dc, 0, 200>>,
                 <<16#d9, 200, "abc">>, <<16#db, 255, 255, 255, 255>>, <<16#c6, 255, 255, 255, 255>>],
    %% a fresh worker for each, so each outcome is its own
    Outcomes = [begin
                    Port = open_python(),
                    Outcome = send_then_call(Port, T, 1, 3000),
                    close_python(Port),
                    {T, Outcome}
                end || T <- Truncated],
    ct:log("~p", [Outcomes]),
    ?assertEqual([], [O || {_, R} = O <- Outcomes, R =/= answered, R =/= exited]).

random_frames_into_python(_) ->
    erlpy_test:doc("BUG: random frames (each followed by a valid CALL) into a real worker: "
                   "a CALL goes unanswered (see truncated_frame_swallows_next_request)"),
    _ = rand:seed(exsss, {1, 2, 3}),
    Port = open_python(),
    Result = random_frames(Port, 1, 200),
    ct:log("~p", [Result]),
    catch close_python(Port),
    ?assertEqual(all_answered, Result).

%% Stops at the first frame after which the worker neither answers nor exits.
random_frames(_, I, N) when I > N -> all_answered;
random_frames(Port, I, N) ->
    Frame = rand:bytes(rand:uniform(64)),
    case send_then_call(Port, Frame, I, 3000) of
        answered -> random_frames(Port, I + 1, N);
        exited -> {exited_at, I};
        Other -> {Other, I, Frame}
    end.

%% The bug (in the worker as it was then; now erlpy_frame): erlpy_worker:handle_message/2
%% for FATAL called fatal_detail/1, which turned the `reason'
%% field into an atom with binary_to_atom/1: outside the pool's max_atoms budget, so Python
%% can grow the atom table without bound (and crash the VM when it is full). Expected:
%% FATAL is only meaningful while starting; its fields stay binaries or existing atoms.
fatal_message_creates_atoms(_) ->
    erlpy_test:doc("BUG: FATAL messages from Python create atoms outside max_atoms"),
    ok = py:exec(<<"import erlpy._runtime as _r\n"
                   "def fatal(reason):\n    _r.current().send([99, {'reason': reason}])\n">>, ?OPTS),
    U = integer_to_binary(erlang:unique_integer([positive])),
    Before = erlang:system_info(atom_count),
    [py:call('__main__', fatal, [<<"badinput_fatal_", U/binary, "_", (integer_to_binary(I))/binary>>], #{}, ?OPTS)
     || I <- lists:seq(1, 2000)],
    Grown = erlang:system_info(atom_count) - Before,
    ct:log("atom table grew by ~b; the pool counted ~p (max_atoms 1000)",
           [Grown, maps:get(atoms_created, py:info(?POOL))]),
    ?assert(Grown =< 1000).

%% The same function calls binary_to_atom/1 on whatever `reason' holds: an integer makes
%% the worker's gen_statem crash with badarg (its requests get {worker_exited, badarg}, and
%% the crash counts against the supervisor's restart intensity).
fatal_message_crashes_worker(_) ->
    erlpy_test:doc("BUG: a FATAL message with a non-text reason crashes the worker process"),
    ok = py:exec(<<"import erlpy._runtime as _r\n"
                   "def fatal(reason):\n    _r.current().send([99, {'reason': reason}])\n    return 'sent'\n">>, ?OPTS),
    [#{pid := Worker}] = workers(),
    Result = py:call('__main__', fatal, [42], #{}, ?OPTS),
    ct:log("~p", [Result]),
    timer:sleep(200),
    ?assertMatch([#{pid := Worker}], workers()).

%% The bug (in the runtime as it was then; now erlpy._codec): erlpy._runtime._packer() kept
%% one msgpack.Packer per thread; a Packer keeps the buffer
%% it grew for the biggest message it packed. After one 200 MB reply from sync code and one
%% from async code, the worker keeps ~400 MB for the rest of its life. Expected: memory
%% comes back (a fresh packer, or a reset buffer, after a big message).
python_memory_kept_after_big_reply(_) ->
    erlpy_test:doc("BUG: a worker that replied 200 MB from sync and async code keeps ~400 MB"),
    [OsPid] = os_pids(),
    ok = py:exec(<<"import gc\nasync def abig(n):\n    return b'y' * n\n">>, ?OPTS),
    {ok, _} = py:eval(<<"gc.collect()">>, #{}, ?OPTS),
    Rss0 = rss(OsPid),
    {ok, _} = py:eval(<<"b'x' * (200 * 2**20)">>, #{}, ?OPTS),
    {ok, _} = py:call('__main__', abig, [200 bsl 20], #{}, ?OPTS),
    {ok, _} = py:eval(<<"gc.collect()">>, #{}, ?OPTS),
    Rss = rss(OsPid),
    ct:log("Python RSS ~b MB -> ~b MB", [Rss0 div 1024, Rss div 1024]),
    ?assert(Rss < Rss0 + 64 * 1024).

%%====================================================================
%% helpers
%%====================================================================

workers() -> erlpy_test:workers(?POOL).

os_pids() -> erlpy_test:os_pids(?POOL).

restarts() -> erlpy_test:restarts(?POOL).

big_binary_holders() ->
    [{P, process_info(P, [registered_name, current_function, initial_call]), [S || {_, S, _} <- B, S > 1000000]}
     || P <- processes(), {binary, B} <- [process_info(P, binary)],
        lists:any(fun({_, S, _}) -> S > 1000000 end, B)].

gc_all() ->
    [erlang:garbage_collect(P) || P <- processes()],
    ok.

%% Resident set size of an OS process, in KiB.
rss(OsPid) ->
    {ok, Status} = file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/status"),
    [_, Rest] = binary:split(Status, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb).

timeouts_beyond_erlang_timers(_) ->
    erlpy_test:doc("a timeout longer than Erlang's timers take (2^32-1 ms) is bad_option "
                   "everywhere; it passed, then crashed the caller after its request was "
                   "sent, the pool's server (py:exec), the worker (idle_timeout, "
                   "cancel_grace), or left running a pool whose start_pool had failed "
                   "(start_timeout)"),
    Huge = 1 bsl 33,
    ?assertEqual({error, {bad_option, {timeout, Huge}}}, py:call(math, sqrt, [4], #{}, #{timeout => Huge})),
    ?assertEqual({error, {bad_option, {timeout, Huge}}}, py:exec(<<"x = 1">>, #{timeout => Huge})),
    ?assertEqual({error, {bad_option, {timeout, Huge}}}, py:eval(<<"1">>, #{}, Huge)),
    ?assertEqual({error, {bad_option, {idle_timeout, Huge}}},
                 py:stream_start(builtins, iter, [[1]], #{idle_timeout => Huge})),
    [?assertEqual({error, {bad_option, {Key, Huge}}}, py:start_pool(erlpy_badinput_huge, #{Key => Huge}))
     || Key <- [cancel_grace, start_timeout]],
    ?assertEqual({error, {no_pool, erlpy_badinput_huge}}, py:stop_pool(erlpy_badinput_huge)),
    %% the longest timer is fine
    ?assertEqual({ok, 2.0}, py:call(math, sqrt, [4], #{}, #{timeout => 16#FFFFFFFF})),
    ?assertEqual([], erlpy_test:flush()).

improper_lists_as_options(_) ->
    erlpy_test:doc("an improper list where a proplist may go (options, kwargs, locals, pool "
                   "options) is bad_option or badarg, not a function_clause exception"),
    ?assertEqual({error, {bad_option, {options, [{timeout, 100} | x]}}},
                 py:call(math, sqrt, [4], #{}, [{timeout, 100} | x])),
    ?assertEqual({error, {badarg, {bad_kwargs, [{a, 1} | b]}}}, py:call(math, sqrt, [4], [{a, 1} | b])),
    ?assertEqual({error, {badarg, {bad_locals, [{x, 1} | c]}}}, py:eval(<<"x">>, [{x, 1} | c])),
    ?assertEqual({error, {bad_option, {options, [{window, 2} | d]}}},
                 py:stream_start(builtins, iter, [[1]], [{window, 2} | d])),
    ?assertEqual({error, {bad_option, {options, [{size, 1} | z]}}}, py:start_pool(erlpy_badinput_improper, [{size, 1} | z])).

remote_stream_on_a_vm_not_distributed(_) ->
    erlpy_test:doc("a stream started on another node from a VM that is not distributed is "
                   "{nodedown, Node}, as a call is; it was relay_failed, with a crash report"),
    false = is_alive(),
    Pool = {default, erlpy_nowhere@nohost},
    ?assertEqual({error, {nodedown, erlpy_nowhere@nohost}}, py:call(math, sqrt, [4], #{}, #{pool => Pool})),
    ?assertEqual({error, {nodedown, erlpy_nowhere@nohost}},
                 py:stream_start(builtins, iter, [[1]], #{pool => Pool})),
    ?assertEqual([], erlpy_test:flush()).

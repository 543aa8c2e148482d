%% Every example of the streaming guide (seeds/002_7dd7f35fde0cef83.txt, docs/streaming.md)
%% run as written, with the results the guide gives.
%%
%% The Erlang code of the guide is copied verbatim; `receive_loop/1' and
%% `stream_to_client/2' are the guide's functions, adapted only to return what they got
%% instead of (only) printing it. The Python names the guide uses (`my_module',
%% `llm_client', `mymodule') are small module files written to the suite's priv_dir,
%% which is on the default pool's path; `websocket' is a tiny Erlang module made here.
-module(erlpy_seed_guide_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

all() ->
    [
        true_streaming_iter,
        true_streaming_events,
        option_owner,
        cancellation,
        async_generator,
        generator_expressions,
        iterator_objects,
        generator_functions,
        generator_functions_every_worker,
        walrus_lambda,
        llm_token_streaming,
        llm_token_streaming_error,
        data_processing_pipeline,
        batch_processing,
        memory_generators_collected
    ].

init_per_suite(Config) ->
    Dir = ?config(priv_dir, Config),
    [ok = file:write_file(filename:join(Dir, Name), Text) || {Name, Text} <- python_files()],
    ok = file:write_file(filename:join(Dir, "data.txt"), <<"first line\nsecond line\nthird line\n">>),
    ok = make_websocket_module(),
    %% Our own default pool (with Dir on its path), whatever ran before us.
    Saved = erlpy_test:start_app_with_path(Dir),
    [{saved_pools, Saved} | Config].

end_per_suite(Config) ->
    ok = erlpy_test:restore_app(?config(saved_pools, Config)),
    _ = code:purge(websocket),
    _ = code:delete(websocket),
    ok.

init_per_testcase(_, Config) ->
    Config.

end_per_testcase(_, _Config) ->
    _ = py:stop_pool(guide_one),
    _ = erlpy_test:flush(),
    ok.

%%--------------------------------------------------------------------
%% The guide's Erlang functions
%%--------------------------------------------------------------------

%% From "True Streaming (Event-driven)"; returns {done | {error, Reason} | timeout, Values}.
receive_loop(Ref) ->
    receive_loop(Ref, []).

receive_loop(Ref, Acc) ->
    receive
        {py_stream, Ref, {data, Value}} ->
            io:format("Got: ~p~n", [Value]),
            receive_loop(Ref, [Value | Acc]);
        {py_stream, Ref, done} ->
            io:format("Complete~n"),
            {done, lists:reverse(Acc)};
        {py_stream, Ref, {error, Reason}} ->
            io:format("Error: ~p~n", [Reason]),
            {{error, Reason}, lists:reverse(Acc)}
    after 30000 ->
        {timeout, lists:reverse(Acc)}
    end.

%% From "LLM Token Streaming", verbatim (websocket:send/2 is made by this suite).
stream_to_client(Ref, WS) ->
    receive
        {py_stream, Ref, {data, Token}} ->
            websocket:send(WS, Token),
            stream_to_client(Ref, WS);
        {py_stream, Ref, done} ->
            websocket:send(WS, <<"[DONE]">>);
        {py_stream, Ref, {error, _}} ->
            websocket:send(WS, <<"[ERROR]">>)
    end.

%% From "Data Processing Pipelines": the guide leaves process_line/1 to the reader.
process_line(L) ->
    string:uppercase(L).

%%--------------------------------------------------------------------
%% True Streaming
%%--------------------------------------------------------------------

true_streaming_iter(_) ->
    erlpy_test:doc("guide: py:stream_start(builtins, iter, [[1,2,3,4,5]]) + receive_loop"),
    %% Start streaming from a Python iterator
    {ok, Ref} = py:stream_start(builtins, iter, [[1,2,3,4,5]]),

    %% Receive events as values are yielded
    Result = receive_loop(Ref),
    ?assertEqual({done, [1, 2, 3, 4, 5]}, Result),
    ?assertEqual([], erlpy_test:flush()).

true_streaming_events(_) ->
    erlpy_test:doc("guide, Events: data per value, then exactly one of done / {error, Reason}"),
    {ok, Ref} = py:stream_start(builtins, iter, [[1,2,3,4,5]]),
    ok = erlpy_test:wait_until(fun() ->
        {messages, Ms} = erlang:process_info(self(), messages),
        lists:member({py_stream, Ref, done}, Ms)
    end),
    {messages, Messages} = erlang:process_info(self(), messages),
    ?assertEqual([{py_stream, Ref, {data, V}} || V <- [1, 2, 3, 4, 5]] ++ [{py_stream, Ref, done}],
                 Messages),
    _ = erlpy_test:flush(),
    %% An error: `iter' of something that is not iterable.
    {ok, Ref2} = py:stream_start(builtins, iter, [42]),
    ?assertMatch({{error, {python, <<"TypeError">>, _, _}}, []}, receive_loop(Ref2)),
    ?assertEqual([], erlpy_test:flush()).

option_owner(_) ->
    erlpy_test:doc("guide, Options: #{owner => OtherPid} sends the events to OtherPid"),
    Self = self(),
    OtherPid = spawn(fun() ->
        receive {ref, Ref} -> Self ! {other_got, receive_loop(Ref)} end
    end),
    Module = builtins, Func = iter, Args = [[1,2,3,4,5]],
    %% Send events to a different process
    {ok, Ref} = py:stream_start(Module, Func, Args, #{owner => OtherPid}),
    OtherPid ! {ref, Ref},
    Got = receive {other_got, G} -> G after 30000 -> timeout end,
    ?assertEqual({done, [1, 2, 3, 4, 5]}, Got),
    ?assertEqual([], erlpy_test:flush()).

cancellation(Config) ->
    erlpy_test:doc("guide, Cancellation: my_module:long_generator, receive some values, "
                   "stream_cancel; the stream stops with {error, cancelled}, finally ran"),
    Closed = filename:join(?config(priv_dir, Config), "long_generator.closed"),
    _ = file:delete(Closed),
    {ok, Ref} = py:stream_start(my_module, long_generator, []),
    %% ... receive some values ...
    Some = [receive {py_stream, Ref, {data, V}} -> V after 10000 -> timeout end
            || _ <- lists:seq(1, 5)],
    ?assertEqual([0, 1, 2, 3, 4], Some),
    ok = py:stream_cancel(Ref),
    %% Stream will stop on next iteration
    {Terminal, Rest} = receive_loop(Ref),
    ?assertEqual({error, cancelled}, Terminal),
    ?assertEqual(lists:seq(5, 4 + length(Rest)), Rest),
    %% It is closed (its finally ran) by the time {error, cancelled} arrives.
    ?assert(filelib:is_file(Closed)),
    timer:sleep(200),
    ?assertEqual([], erlpy_test:flush()).

async_generator(_) ->
    erlpy_test:doc("guide, Async Generators: async_gen defined with py:exec, streamed with "
                   "stream_start('__main__', async_gen, [])"),
    %% Async generator (e.g., streaming from an async API)
    ok = py:exec(<<"
async def async_gen():
    for i in range(5):
        await asyncio.sleep(0.1)
        yield i
">>),
    {ok, Ref} = py:stream_start('__main__', async_gen, []),
    ?assertEqual({done, [0, 1, 2, 3, 4]}, receive_loop(Ref)),
    ?assertEqual({ok, [0, 1, 2, 3, 4]}, py:stream('__main__', async_gen, [])).

%%--------------------------------------------------------------------
%% Batch Streaming
%%--------------------------------------------------------------------

generator_expressions(_) ->
    erlpy_test:doc("guide, Generator Expressions: squares, upper-case letters, evens"),
    %% Stream squares of numbers 0-9
    {ok, Squares} = py:stream_eval(<<"(x**2 for x in range(10))">>),
    %% Squares = [0,1,4,9,16,25,36,49,64,81]
    ?assertEqual([0,1,4,9,16,25,36,49,64,81], Squares),

    %% Stream uppercase characters
    {ok, Upper} = py:stream_eval(<<"(c.upper() for c in 'hello')">>),
    %% Upper = [<<"H">>,<<"E">>,<<"L">>,<<"L">>,<<"O">>]
    ?assertEqual([<<"H">>,<<"E">>,<<"L">>,<<"L">>,<<"O">>], Upper),

    %% Stream filtered values
    {ok, Evens} = py:stream_eval(<<"(x for x in range(20) if x % 2 == 0)">>),
    %% Evens = [0,2,4,6,8,10,12,14,16,18]
    ?assertEqual([0,2,4,6,8,10,12,14,16,18], Evens).

iterator_objects(_) ->
    erlpy_test:doc("guide, Iterator Objects: iter(range(5)) and dict items as tuples"),
    %% Stream from range
    {ok, Numbers} = py:stream_eval(<<"iter(range(5))">>),
    %% Numbers = [0,1,2,3,4]
    ?assertEqual([0,1,2,3,4], Numbers),

    %% Stream dictionary items
    {ok, Items} = py:stream_eval(<<"iter({'a': 1, 'b': 2}.items())">>),
    %% Items = [{<<"a">>, 1}, {<<"b">>, 2}]
    ?assertEqual([{<<"a">>, 1}, {<<"b">>, 2}], Items).

generator_functions(_) ->
    erlpy_test:doc("guide, Generator Functions: fibonacci by py:exec, then py:stream"),
    %% Define a generator function
    ok = py:exec(<<"
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        yield a
        a, b = b, a + b
">>),

    %% Stream from it
    %% Note: Functions defined with exec are local to the worker that executes them.
    %% Subsequent calls may go to different workers in the pool.
    {ok, Fib} = py:stream('__main__', fibonacci, [10]),
    %% Fib = [0,1,1,2,3,5,8,13,21,34]
    ?assertEqual([0,1,1,2,3,5,8,13,21,34], Fib).

generator_functions_every_worker(_) ->
    erlpy_test:doc("py:exec definitions reach every worker: fibonacci streams from all of "
                   "them, concurrently and one after the other"),
    ok = py:exec(<<"
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        yield a
        a, b = b, a + b
">>),
    Self = self(),
    Pids = [spawn(fun() -> Self ! {fib, self(), py:stream('__main__', fibonacci, [10])} end)
            || _ <- lists:seq(1, 8)],
    Concurrent = [receive {fib, P, R} -> R after 30000 -> timeout end || P <- Pids],
    Sequential = [py:stream('__main__', fibonacci, [10]) || _ <- lists:seq(1, 8)],
    Fib = {ok, [0,1,1,2,3,5,8,13,21,34]},
    ?assertEqual(lists:duplicate(16, Fib), Concurrent ++ Sequential).

walrus_lambda(_) ->
    erlpy_test:doc("guide: Fibonacci with the inline walrus lambda"),
    %% Fibonacci using inline lambda - works reliably across workers
    {ok, Fib} = py:stream_eval(<<"(lambda: ((fib := [0, 1]), [fib.append(fib[-1] + fib[-2]) for _ in range(8)], iter(fib))[-1])()">>),
    %% Fib = [0,1,1,2,3,5,8,13,21,34]
    ?assertEqual([0,1,1,2,3,5,8,13,21,34], Fib).

%%--------------------------------------------------------------------
%% Use Cases
%%--------------------------------------------------------------------

llm_token_streaming(_) ->
    erlpy_test:doc("guide, LLM Token Streaming: llm_client.generate_tokens streamed to a "
                   "(fake) websocket with stream_to_client"),
    Prompt = <<"Tell me a story">>,
    WebSocket = self(),
    %% Stream tokens from an LLM
    {ok, Ref} = py:stream_start(llm_client, generate_tokens, [Prompt]),
    stream_to_client(Ref, WebSocket),
    Sent = [Data || {ws_send, Data} <- erlpy_test:flush()],
    ?assertEqual([<<"Once ">>, <<"upon ">>, <<"a ">>, <<"time: ">>, <<"Tell ">>, <<"me ">>,
                  <<"a ">>, <<"story">>, <<"[DONE]">>], Sent).

llm_token_streaming_error(_) ->
    erlpy_test:doc("guide, LLM Token Streaming: an error in the model reaches the client "
                   "as [ERROR]"),
    Prompt = <<>>,
    WebSocket = self(),
    {ok, Ref} = py:stream_start(llm_client, generate_tokens, [Prompt]),
    stream_to_client(Ref, WebSocket),
    ?assertEqual([<<"Once ">>, <<"[ERROR]">>], [D || {ws_send, D} <- erlpy_test:flush()]).

data_processing_pipeline(_) ->
    erlpy_test:doc("guide, Data Processing Pipelines: mymodule.read_lines of data.txt"),
    %% Process file lines (if defined in Python)
    {ok, Lines} = py:stream(mymodule, read_lines, [<<"data.txt">>]),

    %% Transform each line
    Results = [process_line(L) || L <- Lines],
    ?assertEqual([<<"first line">>, <<"second line">>, <<"third line">>], Lines),
    ?assertEqual([<<"FIRST LINE">>, <<"SECOND LINE">>, <<"THIRD LINE">>], Results).

batch_processing(_) ->
    erlpy_test:doc("guide, Batch Processing: batches defined with py:exec, then streamed"),
    %% Process in batches
    ok = py:exec(<<"
def batches(data, size):
    for i in range(0, len(data), size):
        yield data[i:i+size]
">>),
    ?assertEqual({ok, [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]},
                 py:stream('__main__', batches, [lists:seq(1, 10), 3])),
    {ok, Ref} = py:stream_start('__main__', batches, [<<"abcdefg">>, 3]),
    ?assertEqual({done, [<<"abc">>, <<"def">>, <<"g">>]}, receive_loop(Ref)).

memory_generators_collected(_) ->
    erlpy_test:doc("guide, Memory Considerations: generators are garbage collected after "
                   "exhaustion (stream_start and py:stream)"),
    %% A pool of one worker, so that the generators and the count are on the same worker.
    {ok, _} = py:start_pool(guide_one, #{size => 1}),
    Opts = #{pool => guide_one},
    ok = py:exec(<<"
import weakref, gc
_live_gens = weakref.WeakSet()
_made = [0]
def tracked(n):
    def gen():
        yield from range(n)
    g = gen()
    _live_gens.add(g)
    _made[0] += 1
    return g
def live_gens():
    gc.collect()
    return (_made[0], len(_live_gens))
">>, Opts),
    [{ok, [0, 1, 2]} = py:stream('__main__', tracked, [3], #{}, Opts) || _ <- lists:seq(1, 10)],
    Refs = [element(2, py:stream_start('__main__', tracked, [3], Opts)) || _ <- lists:seq(1, 10)],
    [{done, [0, 1, 2]} = receive_loop(R) || R <- Refs],
    ?assertEqual({ok, {20, 0}}, py:call('__main__', live_gens, [], #{}, Opts)).

%%--------------------------------------------------------------------
%% Fixtures
%%--------------------------------------------------------------------

%% websocket:send/2 for the guide's stream_to_client/2: sends {ws_send, Data} to WS.
make_websocket_module() ->
    Forms = [
        {attribute, 1, module, websocket},
        {attribute, 2, export, [{send, 2}]},
        {function, 3, send, 2, [
            {clause, 3, [{var, 3, 'WS'}, {var, 3, 'Data'}], [], [
                {op, 4, '!', {var, 4, 'WS'}, {tuple, 4, [{atom, 4, ws_send}, {var, 4, 'Data'}]}},
                {atom, 5, ok}
            ]}
        ]}
    ],
    {ok, websocket, Bin} = compile:forms(Forms, []),
    {module, websocket} = code:load_binary(websocket, "websocket.erl", Bin),
    ok.

python_files() ->
    [
        {"my_module.py", <<"
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def long_generator():
    \"\"\"Counts forever; leaves long_generator.closed next to this file when closed.\"\"\"
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        with open(os.path.join(_HERE, 'long_generator.closed'), 'w') as f:
            f.write(str(i))
">>},
        {"llm_client.py", <<"
import asyncio


async def generate_tokens(prompt):
    \"\"\"A stand-in for a streaming model API: one token at a time, with latency.\"\"\"
    yield 'Once '
    if not prompt:
        raise ValueError('empty prompt')
    words = ['upon', 'a', 'time:'] + prompt.split()
    for i, word in enumerate(words):
        await asyncio.sleep(0.01)
        yield word if i == len(words) - 1 else word + ' '
">>},
        {"mymodule.py", <<"
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def read_lines(path):
    \"\"\"Yields the lines of a file (relative paths are relative to this module).\"\"\"
    with open(os.path.join(_HERE, path), encoding='utf-8') as f:
        for line in f:
            yield line.rstrip('\\n')
">>}
    ].

%% erlpy.streams (the asyncio toolkit of seeds/000_5071469a3e47ce1e.txt) used end to end
%% from Erlang: Python stream compositions (merge, concat, split, enqueue/dequeue,
%% endless_stream, gather_stream, ContentStream, stream_content, aenumerate) streamed to
%% Erlang owners, driven by Erlang input and cancelled from Erlang.
%%
%% The Python side is a module file written to the suite's priv_dir, which is on the
%% default pool's path. A generator's `finally' leaves a file whose path the test passes.
-module(erlpy_streams_e2e_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(M, erlpy_streams_e2e_helpers).

all() ->
    [
        merge_timed_sources_interleave,
        merge_returned_by_function,
        merge_list_form_collect,
        merge_stop_on_first_cancels_rest,
        merge_error_reaches_erlang,
        concat_keeps_argument_order,
        split_copies,
        split_with_copy,
        content_stream,
        stream_content_with_delay,
        gather_stream_as_text,
        aenumerate_stream,
        queue_doc_example,
        input_dequeue_processor_cancelled,
        input_dequeue_processor_closed,
        input_agent_endless_until_cancelled,
        endless_stream_cancelled,
        merge_cancelled_from_erlang_closes_sources,
        merge_owner_dies_closes_sources
    ].

init_per_suite(Config) ->
    Dir = ?config(priv_dir, Config),
    ok = file:write_file(filename:join(Dir, "erlpy_streams_e2e_helpers.py"), helpers()),
    %% Our own default pool (with Dir on its path), whatever ran before us.
    Saved = erlpy_test:start_app_with_path(Dir),
    [{saved_pools, Saved} | Config].

end_per_suite(Config) ->
    ok = erlpy_test:restore_app(?config(saved_pools, Config)),
    ok.

init_per_testcase(Case, Config) ->
    Dir = filename:join(?config(priv_dir, Config), atom_to_list(Case)),
    ok = filelib:ensure_path(Dir),
    [{dir, Dir} | Config].

end_per_testcase(_, _Config) ->
    _ = erlpy_test:flush(),
    ok.

path(Config, Name) ->
    iolist_to_binary(filename:join(?config(dir, Config), Name)).

closed(Path) -> filelib:is_file(Path).

assert_silent(Ref) ->
    timer:sleep(300),
    ?assertEqual([], [M || M <- erlpy_test:flush(), element(2, M) =:= Ref]).

in_flight() -> erlpy_test:in_flight(default).

%% Items of one source, in the order they came.
of_source(Prefix, Items) ->
    [I || I <- Items, binary:first(I) =:= Prefix].

%%--------------------------------------------------------------------
%% merge / concat / split
%%--------------------------------------------------------------------

merge_timed_sources_interleave(_) ->
    erlpy_test:doc("stream_start of an async generator over streams.merge of two timed "
                   "sources (a every 100 ms from 0, b every 100 ms from 50 ms): interleaved"),
    {ok, Ref} = py:stream_start(?M, merged_timed, [0.1]),
    {Terminal, Items} = erlpy_test:collect(Ref),
    ct:log("merged: ~p", [Items]),
    ?assertEqual(done, Terminal),
    ?assertEqual([<<"a0">>, <<"a1">>, <<"a2">>], of_source($a, Items)),
    ?assertEqual([<<"b0">>, <<"b1">>, <<"b2">>], of_source($b, Items)),
    %% Not all a's before the b's: b0 (at 50 ms) comes before a2 (at 200 ms).
    ?assert(index(<<"b0">>, Items) < index(<<"a2">>, Items)),
    assert_silent(Ref).

index(X, L) -> length(lists:takewhile(fun(Y) -> Y =/= X end, L)) + 1.

merge_returned_by_function(_) ->
    erlpy_test:doc("a plain function returning streams.merge(...) streams too (async iterable)"),
    {ok, Ref} = py:stream_start(?M, merge_of_timed, [0.1]),
    {done, Items} = erlpy_test:collect(Ref),
    ?assertEqual([<<"a0">>, <<"a1">>, <<"a2">>], of_source($a, Items)),
    ?assertEqual([<<"b0">>, <<"b1">>, <<"b2">>], of_source($b, Items)),
    ?assert(index(<<"b0">>, Items) < index(<<"a2">>, Items)).

merge_list_form_collect(_) ->
    erlpy_test:doc("streams.merge([stream1, stream2]) (the doc's list form) with py:stream"),
    {ok, Items} = py:stream(?M, merge_list, []),
    ?assertEqual(lists:sort([<<"Hello">>, <<"World">>, <<"Hi">>, <<"there">>]), lists:sort(Items)),
    ?assertEqual([<<"Hello">>, <<"World">>], [I || I <- Items, lists:member(I, [<<"Hello">>, <<"World">>])]),
    ?assertEqual([<<"Hi">>, <<"there">>], [I || I <- Items, lists:member(I, [<<"Hi">>, <<"there">>])]).

merge_stop_on_first_cancels_rest(Config) ->
    erlpy_test:doc("merge(..., stop_on_first=True): ends when the short input ends, and the "
                   "endless input is closed"),
    Mark = path(Config, "endless_closed"),
    {ok, Ref} = py:stream_start(?M, merge_stop_on_first, [Mark]),
    {Terminal, Items} = erlpy_test:collect(Ref),
    ?assertEqual(done, Terminal),
    ?assertEqual([<<"x">>, <<"y">>], Items),
    ?assert(closed(Mark)).

merge_error_reaches_erlang(_) ->
    erlpy_test:doc("an input of merge that raises: the error reaches the Erlang owner "
                   "(no hang), with the original exception type"),
    {ok, Ref} = py:stream_start(?M, merge_failing, []),
    {Terminal, Items} = erlpy_test:collect(Ref, 10000),
    ?assertMatch({error, {python, <<"ValueError">>, <<"source failed">>, _}}, Terminal),
    ?assert(lists:prefix([<<"ok0">>], Items)),
    assert_silent(Ref),
    ok = erlpy_test:wait_until(fun() -> in_flight() =:= 0 end).

concat_keeps_argument_order(Config) ->
    erlpy_test:doc("concat(slow, fast): output in argument order although fast is done first; "
                   "both inputs are computed concurrently"),
    Dir = path(Config, ""),
    {ok, Ref} = py:stream_start(?M, concat_slow_fast, [Dir]),
    {done, Items} = erlpy_test:collect(Ref),
    ?assertEqual([<<"slow0">>, <<"slow1">>, <<"slow2">>, <<"fast0">>, <<"fast1">>, <<"fast2">>],
                 Items),
    %% The fast input finished while the slow one was still running (concurrency).
    {ok, FastDone} = file:read_file(path(Config, "fast_done")),
    ?assertEqual(<<"slow_items_before_fast_done=0">>, FastDone).

split_copies(_) ->
    erlpy_test:doc("streams.split(content, n=2): both copies get every item"),
    ?assertEqual({ok, [{1, <<"a">>}, {1, <<"b">>}, {1, <<"c">>}, {2, <<"a">>}, {2, <<"b">>},
                       {2, <<"c">>}]},
                 py:stream(?M, split_two, [[<<"a">>, <<"b">>, <<"c">>]])).

split_with_copy(_) ->
    erlpy_test:doc("split(..., with_copy=True): a consumer mutating its items does not affect "
                   "the other copy"),
    ?assertEqual({ok, [[#{<<"n">> => 1, <<"seen">> => true}], [#{<<"n">> => 1}]]},
                 py:call(?M, split_mutation, [true])),
    ?assertEqual({ok, [[#{<<"n">> => 1, <<"seen">> => true}], [#{<<"n">> => 1, <<"seen">> => true}]]},
                 py:call(?M, split_mutation, [false])).

%%--------------------------------------------------------------------
%% creating streams, gathering
%%--------------------------------------------------------------------

content_stream(_) ->
    erlpy_test:doc("ContentStream(content=[\"Hello\", \"World\"]) streams to Erlang"),
    {ok, Ref} = py:stream_start(?M, content_stream, []),
    ?assertEqual({done, [<<"Hello">>, <<"World">>]}, erlpy_test:collect(Ref)),
    ?assertEqual({ok, [<<"Hello">>, <<"World">>]}, py:stream(?M, content_stream, [])).

stream_content_with_delay(_) ->
    erlpy_test:doc("streams.stream_content(content=[\"Hi\", \"there\"], with_delay_sec=0.5): "
                   "the first item comes at once, the second later"),
    {ok, Ref} = py:stream_start(?M, stream_content_delayed, []),
    ?assertEqual([<<"Hi">>], erlpy_test:take(Ref, 1, 10000)),
    %% The second item is 0.5 s away: not there yet.
    timer:sleep(100),
    ?assertEqual([], [M || M <- element(2, erlang:process_info(self(), messages)),
                           element(2, M) =:= Ref]),
    ?assertEqual({done, [<<"there">>]}, erlpy_test:collect(Ref)).

gather_stream_as_text(_) ->
    erlpy_test:doc("parts = await streams.gather_stream(model(...)); as_text(parts), called "
                   "from Erlang with py:call"),
    ?assertEqual({ok, <<"Hello, World!">>}, py:call(?M, gather_text, [])).

aenumerate_stream(_) ->
    erlpy_test:doc("streams.aenumerate over a stream gives {Index, Item} tuples"),
    ?assertEqual({ok, [{1, <<"x">>}, {2, <<"y">>}]}, py:stream(?M, enumerated, [[<<"x">>, <<"y">>]])).

queue_doc_example(_) ->
    erlpy_test:doc("the doc's enqueue/dequeue example: a queue copied into another through "
                   "dequeue/enqueue, streamed to Erlang"),
    {ok, Ref} = py:stream_start(?M, queue_copy, [[1, 2, 3]]),
    ?assertEqual({done, [1, 2, 3]}, erlpy_test:collect(Ref)).

%%--------------------------------------------------------------------
%% input-driven processors, cancellation from Erlang
%%--------------------------------------------------------------------

input_dequeue_processor_cancelled(Config) ->
    erlpy_test:doc("input => true processor built on enqueue/dequeue: each value sent is "
                   "answered; stream_cancel gives {error, cancelled} and its finally ran"),
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, queue_processor, [Mark], #{input => true}),
    lists:foreach(
        fun(I) ->
            ok = py:stream_send(Ref, I),
            ?assertEqual([#{<<"in">> => I, <<"out">> => I * 10}], erlpy_test:take(Ref, 1))
        end,
        lists:seq(1, 5)
    ),
    assert_silent(Ref),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)),
    %% {error, cancelled} comes once the generator is closed (its finally ran).
    ?assert(closed(Mark)),
    assert_silent(Ref),
    ok = erlpy_test:wait_until(fun() -> in_flight() =:= 0 end).

input_dequeue_processor_closed(Config) ->
    erlpy_test:doc("the same processor ends with done when Erlang closes its input "
                   "(enqueue puts the None sentinel, dequeue stops)"),
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, queue_processor, [Mark], #{input => true}),
    [ok = py:stream_send(Ref, I) || I <- lists:seq(1, 100)],
    ok = py:stream_close(Ref),
    {done, Items} = erlpy_test:collect(Ref),
    ?assertEqual([#{<<"in">> => I, <<"out">> => I * 10} || I <- lists:seq(1, 100)], Items),
    ?assert(closed(Mark)).

input_agent_endless_until_cancelled(Config) ->
    erlpy_test:doc("an agent merging its input with endless_stream(): alive after its input is "
                   "closed, until Erlang cancels it; then {error, cancelled}, finally ran"),
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, agent, [Mark], #{input => true}),
    ok = py:stream_send(Ref, <<"hi">>),
    ?assertEqual([<<"echo:hi">>], erlpy_test:take(Ref, 1)),
    ok = py:stream_send(Ref, <<"again">>),
    ?assertEqual([<<"echo:again">>], erlpy_test:take(Ref, 1)),
    ok = py:stream_close(Ref),
    assert_silent(Ref),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)),
    %% {error, cancelled} comes once the generator is closed (its finally ran).
    ?assert(closed(Mark)),
    assert_silent(Ref).

endless_stream_cancelled(Config) ->
    erlpy_test:doc("a generator waiting on streams.endless_stream() never ends by itself; "
                   "stream_cancel ends it with {error, cancelled} and closes it"),
    Mark = path(Config, "closed"),
    {ok, Ref} = py:stream_start(?M, wait_forever, [Mark]),
    ?assertEqual([<<"ready">>], erlpy_test:take(Ref, 1)),
    assert_silent(Ref),
    ok = py:stream_cancel(Ref),
    ?assertEqual({{error, cancelled}, []}, erlpy_test:collect(Ref, 10000)),
    ok = erlpy_test:wait_until(fun() -> closed(Mark) end, 5000).

merge_cancelled_from_erlang_closes_sources(Config) ->
    erlpy_test:doc("stream_cancel of a merge of two endless sources: {error, cancelled}, and "
                   "both sources and the generator are closed"),
    Dir = path(Config, ""),
    {ok, Ref} = py:stream_start(?M, merge_endless, [Dir]),
    Items = erlpy_test:take(Ref, 10),
    ?assertEqual(10, length(Items)),
    ok = py:stream_cancel(Ref),
    {Terminal, _} = erlpy_test:collect(Ref, 10000),
    ?assertEqual({error, cancelled}, Terminal),
    %% The generator's finally ran, after merge had cancelled and closed its sources.
    Marks = [path(Config, N) || N <- ["a_closed", "b_closed", "gen_closed"]],
    ?assertEqual([true, true, true], [closed(M) || M <- Marks]),
    assert_silent(Ref),
    ok = erlpy_test:wait_until(fun() -> in_flight() =:= 0 end).

merge_owner_dies_closes_sources(Config) ->
    erlpy_test:doc("the owner of a merge of endless sources dies: sources and generator closed"),
    Dir = path(Config, ""),
    Owner = spawn(fun() -> receive never -> ok end end),
    {ok, _Ref} = py:stream_start(?M, merge_endless, [Dir], #{owner => Owner}),
    ok = erlpy_test:wait_until(fun() ->
        element(2, erlang:process_info(Owner, message_queue_len)) >= 10
    end),
    exit(Owner, kill),
    Marks = [path(Config, N) || N <- ["a_closed", "b_closed", "gen_closed"]],
    ok = erlpy_test:wait_until(fun() -> lists:all(fun closed/1, Marks) end, 5000),
    ok = erlpy_test:wait_until(fun() -> in_flight() =:= 0 end),
    ?assertEqual({ok, [<<"Hello">>, <<"World">>]}, py:stream(?M, content_stream, [])).

%%--------------------------------------------------------------------
%% Python side
%%--------------------------------------------------------------------

helpers() ->
    <<"
import asyncio
import os

from erlpy import streams
from erlpy.content import ContentStream, ProcessorPart, as_text

def _touch(path, text='closed'):
    with open(path, 'w') as f:
        f.write(text)

async def _timed(prefix, start, step, n=3):
    await asyncio.sleep(start)
    for i in range(n):
        if i:
            await asyncio.sleep(step)
        yield f'{prefix}{i}'

async def merged_timed(step):
    async for item in streams.merge(_timed('a', 0, step), _timed('b', step / 2, step)):
        yield item

def merge_of_timed(step):
    return streams.merge(_timed('a', 0, step), _timed('b', step / 2, step))

def merge_list():
    stream1 = ContentStream(content=['Hello', 'World'])
    stream2 = streams.stream_content(['Hi', 'there'], with_delay_sec=0.01)
    return streams.merge([stream1, stream2])

async def _endless(mark, item='tick', delay=0.001):
    try:
        while True:
            yield item
            await asyncio.sleep(delay)
    finally:
        _touch(mark)

async def merge_stop_on_first(mark):
    short = streams.stream_content(['x', 'y'], with_delay_sec=0.02)
    endless = streams.endless_stream()

    async def watched():
        try:
            async for item in endless:
                yield item
        finally:
            _touch(mark)

    async for item in streams.merge(short, watched(), stop_on_first=True):
        yield item

async def merge_failing():
    async def good():
        for i in range(1000):
            yield f'ok{i}'
            await asyncio.sleep(0.01)

    async def bad():
        await asyncio.sleep(0.05)
        raise ValueError('source failed')
        yield  # an async generator

    async for item in streams.merge(good(), bad()):
        yield item

async def concat_slow_fast(dirname):
    produced = {'slow': 0}

    async def slow():
        for i in range(3):
            await asyncio.sleep(0.05)
            produced['slow'] += 1
            yield f'slow{i}'

    async def fast():
        for i in range(3):
            yield f'fast{i}'
        # Everything of `fast` is computed before anything of `slow` is: concurrency.
        _touch(os.path.join(dirname, 'fast_done'),
               f\"slow_items_before_fast_done={produced['slow']}\")

    async for part in streams.concat(slow(), fast()):
        yield part

async def split_two(content):
    stream1, stream2 = streams.split(ContentStream(content=content), n=2)

    async def tagged(tag, stream):
        async for item in stream:
            yield (tag, item)

    async for item in streams.concat(tagged(1, stream1), tagged(2, stream2)):
        yield item

async def split_mutation(with_copy):
    s1, s2 = streams.split(ContentStream(content=[{'n': 1}]), n=2, with_copy=with_copy)
    first = []
    async for item in s1:
        item['seen'] = True
        first.append(item)
    second = await streams.gather_stream(s2)
    return [first, second]

def content_stream():
    return ContentStream(content=['Hello', 'World'])

def stream_content_delayed():
    return streams.stream_content(content=['Hi', 'there'], with_delay_sec=0.5)

async def gather_text():
    async def model(input_stream):
        async for part in input_stream:
            yield ProcessorPart(text=part)

    input_stream = ContentStream(content=['Hello', ', ', 'World', '!'])
    parts = await streams.gather_stream(model(input_stream))
    return as_text(parts)

def enumerated(items):
    return streams.aenumerate(ContentStream(content=items), start=1)

async def queue_copy(items):
    q = asyncio.Queue()
    for item in items:
        q.put_nowait(item)
    q.put_nowait(None)
    # Builds an iterable over the parts of q until None is met.
    stream = streams.dequeue(q)
    # Adds the content of stream into the queue p, adds None when done.
    p = asyncio.Queue()
    task = asyncio.create_task(streams.enqueue(stream, p))
    async for item in streams.dequeue(p):
        yield item
    await task

async def queue_processor(inp, mark):
    q = asyncio.Queue()
    pump = asyncio.create_task(streams.enqueue(inp, q))
    try:
        async for v in streams.dequeue(q):
            yield {'in': v, 'out': v * 10}
    finally:
        pump.cancel()
        _touch(mark)

async def agent(inp, mark):
    try:
        async for v in streams.merge(inp, streams.endless_stream()):
            yield f'echo:{v}'
    finally:
        _touch(mark)

async def wait_forever(mark):
    try:
        yield 'ready'
        async for _ in streams.endless_stream():
            pass  # Never ends unless cancelled
    finally:
        _touch(mark)

async def merge_endless(dirname):
    a = _endless(os.path.join(dirname, 'a_closed'), 'a', 0.002)
    b = _endless(os.path.join(dirname, 'b_closed'), 'b', 0.003)
    try:
        async for item in streams.merge(a, b):
            yield item
    finally:
        _touch(os.path.join(dirname, 'gen_closed'))
">>.

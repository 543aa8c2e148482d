%% Distribution: pools addressed on other nodes (`pool => {Name, Node}'), cluster-wide
%% pools (`cluster => true', `pool => {cluster, Name}', OTP pg), remote streams through
%% the relay, and node failure.
%%
%% The test node (A) is made distributed if it is not. Two peer nodes B and C (OTP
%% `peer', one Python worker per pool) live for the whole suite; cases that stop a node
%% start their own peers. The peers get erlpy's ebin and this suite's directory on their
%% code path, so that small owner processes of this module can run on them. Every peer
%% is halted when its case or the suite ends, and its Python processes must be gone.
%%
%% The `erlang norun dist' blocks of docs/distribution.md (examples that need other
%% nodes) are evaluated by `docs_examples', with `B' and `C' bound to two fresh peers.
-module(erlpy_dist_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

suite() ->
    [{timetrap, {minutes, 3}}].

all() ->
    [
        remote_call_eval_exec,
        remote_batch_streams,
        remote_stream_start,
        remote_stream_cancel,
        remote_stream_owner_on_third_node_window,
        remote_owner_killed_cancels,
        remote_window_ack,
        relay_flow_control,
        relay_flow_control_many_streams,
        cluster_spread_from_every_node,
        cluster_exec_and_info,
        cluster_streams,
        node_down_mid_stream,
        routing_errors,
        docs_examples,
        {group, regressions}
    ].

groups() ->
    %% Run by all/0: product bugs these tests found, all fixed since; each case's doc names the bug.
    [{regressions, [], [remote_owner_on_third_node_no_window, info_of_dead_node,
                        remote_caller_killed_cancels_its_call,
                        remote_handles_and_sessions_are_the_callers]}].

%%====================================================================
%% Setup
%%====================================================================

init_per_suite(Config) ->
    Started =
        case node() of
            nonode@nohost ->
                _ = os:cmd("epmd -daemon"),
                {ok, _} = net_kernel:start([erlpy_ct, shortnames]),
                true;
            _ ->
                false
        end,
    ok = erlpy_test:start_app(),
    [B, C] = start_peers(["erlpy_dist_b", "erlpy_dist_c"]),
    [{started_dist, Started}, {b, B}, {c, C} | Config].

end_per_suite(Config) ->
    stop_peers([?config(b, Config), ?config(c, Config)]),
    %% No node of ours is left in epmd (a node leaves it once its VM has exited, which
    %% peer:stop/1 does not wait for).
    Ours = fun() -> {ok, Names} = net_adm:names(), [N || {N, _} <- Names, lists:prefix("erlpy_dist_", N)] end,
    _ = catch erlpy_test:wait_until(fun() -> Ours() =:= [] end, 5000),
    ?assertEqual([], Ours()),
    case ?config(started_dist, Config) of
        true -> net_kernel:stop();
        false -> ok
    end,
    ok.

init_per_testcase(_Case, Config) ->
    _ = erlpy_test:flush(),
    Config.

end_per_testcase(_Case, Config) ->
    %% Pools the cases start, on every node; peers the cases start are stopped by them.
    Base = [peer_node(?config(b, Config)), peer_node(?config(c, Config))],
    Pools = [shared, failover, cluster],
    _ = [catch py:stop_pool(P) || P <- Pools],
    _ = [catch erpc:call(N, py, stop_pool, [P]) || N <- Base, P <- Pools],
    Extra = [N || N <- nodes(), lists:prefix("erlpy_dist_", atom_to_list(N)), not lists:member(N, Base)],
    _ = [catch erpc:call(N, erlang, halt, [], 2000) || N <- Extra],
    _ = erlpy_test:flush(),
    ok.

start_peers(Prefixes) ->
    [start_peer(P) || P <- Prefixes].

start_peer(Prefix) ->
    start_peer(Prefix, #{default => #{size => 1}}).

start_peer(Prefix, Pools) ->
    Python = erlpy_test:python(),
    Ebin = filename:dirname(code:which(py)),
    Here = filename:dirname(code:which(?MODULE)),
    {ok, Peer, Node} = peer:start(#{
        name => peer:random_name(Prefix),
        args => ["-pa", Ebin, "-pa", Here, "-kernel", "logger_level", "notice"],
        env => [{"ERLPY_PYTHON", Python}]
    }),
    %% The peer sees the interpreter of the tests.
    Python = erpc:call(Node, os, getenv, ["ERLPY_PYTHON"]),
    ok = erpc:call(Node, application, load, [erlpy]),
    ok = erpc:call(Node, application, set_env, [erlpy, pools, Pools]),
    {ok, _} = erpc:call(Node, application, ensure_all_started, [erlpy], 60000),
    {Peer, Node}.

%% A peer is {ControllingProcess, Node}.
peer_node({_, Node}) -> Node.

%% The OS pids of every Python of a node, all pools.
python_pids(Node) ->
    Info = erpc:call(Node, py, info, []),
    [P || #{workers := Ws} <- maps:values(Info), #{os_pid := P} <- Ws, is_integer(P)].

stop_peers(Peers) ->
    Pids = lists:append([catch_pids(P) || P <- Peers]),
    _ = [catch peer:stop(P) || {P, _} <- Peers],
    ok = erlpy_test:wait_until(fun() -> not lists:any(fun erlpy_test:os_pid_alive/1, Pids) end).

catch_pids(Peer) ->
    try python_pids(peer_node(Peer)) catch _:_ -> [] end.

%%====================================================================
%% Helpers
%%====================================================================

%% Python code the cases use, exec'd into a pool.
helpers() ->
    <<"
import os, time

async def ticker(notify, tag):
    n = 0
    try:
        while True:
            yield n
            n += 1
            await asyncio.sleep(0.005)
    finally:
        erlang.send(notify, (erlang.atom('closed'), tag, os.getpid()))

def sync_ticker(notify, tag):
    n = 0
    try:
        while True:
            yield n
            n += 1
            time.sleep(0.005)
    finally:
        erlang.send(notify, (erlang.atom('closed'), tag, os.getpid()))

produced = 0

async def counting():
    global produced
    while True:
        produced += 1
        yield produced
        if produced % 256 == 0:
            await asyncio.sleep(0)

def where():
    return os.getpid()

def waiter(notify, tag):
    erlang.send(notify, (erlang.atom('started'), tag))
    try:
        while True:
            time.sleep(0.01)
    finally:
        erlang.send(notify, (erlang.atom('closed'), tag, os.getpid()))

async def awaiter(notify, tag):
    erlang.send(notify, (erlang.atom('started'), tag))
    try:
        await asyncio.sleep(3600)
    finally:
        erlang.send(notify, (erlang.atom('closed'), tag, os.getpid()))
">>.

%% Skip data until the terminal message (the data skipped are counted).
terminal(Ref) -> terminal(Ref, 0).
terminal(Ref, N) ->
    receive
        {py_stream, Ref, {data, _}} -> terminal(Ref, N + 1);
        {py_stream, Ref, Terminal} -> {Terminal, N}
    after 15000 -> {no_terminal, N}
    end.

%% Nothing more for Ref within Ms.
assert_silent(Ref, Ms) ->
    receive
        {py_stream, Ref, _} = M -> ct:fail({unexpected, M})
    after Ms -> ok
    end.

closed(Tag) ->
    receive {closed, Tag, OsPid} -> OsPid after 10000 -> ct:fail({not_closed, Tag}) end.

idle(Pool) ->
    erlpy_test:wait_until(fun() -> erlpy_test:in_flight(Pool) =:= 0 end).

members(Node, Name) ->
    erpc:call(Node, pg, get_members, [erlpy, {erlpy_pool, Name}]).

%% Wait until every node of Nodes sees exactly the pool members on Expected.
wait_members(Nodes, Name, Expected) ->
    Want = lists:sort(Expected),
    erlpy_test:wait_until(fun() ->
        lists:all(fun(N) -> lists:usort([erlang:node(P) || P <- members(N, Name)]) =:= Want end, Nodes)
    end, 15000).

start_pool_on(Node, Name, Opts) ->
    {ok, _} = erpc:call(Node, py, start_pool, [Name, Opts], 60000),
    ok.

worker_pid(Node, Pool) ->
    #{workers := [#{os_pid := P}]} = py:info({Pool, Node}),
    P.

%% A process on a peer that owns a stream: forwards what it gets once asked to collect.
remote_collector(Parent) ->
    receive {collect, Ref} -> Parent ! {collected, erlang:node(), erlpy_test:collect(Ref, 5000)} end.

%% A process on a peer that starts a stream on Pool and owns it until killed.
hold_stream(Parent, Pool, Args) ->
    {ok, Ref} = py:stream_start('__main__', ticker, Args, #{pool => Pool}),
    Parent ! {holding, self(), Ref},
    receive {py_stream, Ref, {data, _}} -> Parent ! {holder_got_data, Ref} end,
    receive stop -> ok end.

%%====================================================================
%% {Name, Node}
%%====================================================================

remote_call_eval_exec(Config) ->
    erlpy_test:doc("call, eval and exec with pool => {Name, B} run on B's worker"),
    B = peer_node(?config(b, Config)),
    BPid = worker_pid(B, default),
    {ok, BPid} = py:call(os, getpid, [], #{}, #{pool => {default, B}}),
    {ok, 4.0} = py:call(math, sqrt, [16], #{}, #{pool => {default, B}}),
    {ok, <<"{\"a\": 1}">>} = py:call(json, dumps, [#{a => 1}], #{}, #{pool => {default, B}, timeout => 5000}),
    {ok, 100} = py:eval(<<"x * y">>, #{x => 10, y => 10}, #{pool => {default, B}}),
    {ok, BPid} = py:eval(<<"__import__('os').getpid()">>, #{}, #{pool => {default, B}}),
    %% exec on B defines a function there, and only there.
    ok = py:exec(<<"def dist_remote_only(x): return ('b', x)">>, #{pool => {default, B}}),
    {ok, {<<"b">>, 7}} = py:call('__main__', dist_remote_only, [7], #{}, #{pool => {default, B}}),
    {error, {python, <<"AttributeError">>, _, _}} = py:call('__main__', dist_remote_only, [7]),
    %% Python errors come back as they are.
    {error, {python, <<"ZeroDivisionError">>, _, _}} = py:eval(<<"1/0">>, #{}, #{pool => {default, B}}),
    %% {default, node()} is the local pool.
    {ok, Local} = py:call(os, getpid, [], #{}, #{pool => {default, node()}}),
    ?assertNotEqual(BPid, Local),
    %% A timeout on B stops the Python work there; no late reply reaches us.
    {error, timeout} = py:eval(<<"__import__('time').sleep(10)">>, #{}, #{pool => {default, B}, timeout => 200}),
    ok = idle({default, B}),
    {ok, 2} = py:eval(<<"1 + 1">>, #{}, #{pool => {default, B}}),
    [] = erlpy_test:flush(),
    ok.

remote_batch_streams(Config) ->
    erlpy_test:doc("stream and stream_eval with pool => {Name, B}"),
    B = peer_node(?config(b, Config)),
    {ok, [0, 1, 2, 3, 4]} = py:stream(builtins, range, [5], #{}, #{pool => {default, B}}),
    {ok, [0, 1, 4]} = py:stream_eval(<<"(x**2 for x in range(n))">>, #{n => 3}, #{pool => {default, B}}),
    Long = lists:seq(0, 49999),
    {ok, Long} = py:stream_eval(<<"range(50000)">>, #{}, #{pool => {default, B}}),
    {error, {python, <<"ValueError">>, _, _}} =
        py:stream_eval(<<"(int(x) for x in ['1', 'x'])">>, #{}, #{pool => {default, B}}),
    ok.

remote_stream_start(Config) ->
    erlpy_test:doc("stream_start from A to a pool on B, owner on A: complete, in order, done"),
    B = peer_node(?config(b, Config)),
    ok = py:exec(helpers(), #{pool => {default, B}}),
    %% Longer than the relay's own window (8192): the relay must acknowledge.
    N = 30000,
    {ok, Ref} = py:stream_start(builtins, range, [N], #{pool => {default, B}}),
    ?assertEqual({done, lists:seq(0, N - 1)}, erlpy_test:collect(Ref)),
    assert_silent(Ref, 100),
    %% An async generator, with kwargs.
    ok = py:exec(<<"
async def dist_agen(n, step=1):
    for i in range(0, n, step):
        await asyncio.sleep(0)
        yield i
">>, #{pool => {default, B}}),
    {ok, Ref2} = py:stream_start('__main__', dist_agen, [10], #{pool => {default, B}, kwargs => #{step => 3}}),
    ?assertEqual({done, [0, 3, 6, 9]}, erlpy_test:collect(Ref2)),
    %% A Python error is the terminal message.
    {ok, Ref3} = py:stream_start(nosuch_module, gen, [], #{pool => {default, B}}),
    {{error, {python, <<"ModuleNotFoundError">>, _, _}}, []} = erlpy_test:collect(Ref3),
    %% Input streams across nodes.
    ok = py:exec(<<"
async def dist_shout(inbox):
    async for text in inbox:
        yield text.upper()
">>, #{pool => {default, B}}),
    {ok, Chat} = py:stream_start('__main__', dist_shout, [], #{pool => {default, B}, input => true}),
    ok = py:stream_send(Chat, <<"hi">>),
    [<<"HI">>] = erlpy_test:take(Chat, 1),
    ok = py:stream_send(Chat, <<"bye">>),
    ok = py:stream_close(Chat),
    {done, [<<"BYE">>]} = erlpy_test:collect(Chat),
    idle({default, B}).

remote_stream_cancel(Config) ->
    erlpy_test:doc("stream_cancel from A of a stream on B: {error, cancelled}, finally ran on B"),
    B = peer_node(?config(b, Config)),
    ok = py:exec(helpers(), #{pool => {default, B}}),
    BPid = worker_pid(B, default),
    lists:foreach(
        fun(Gen) ->
            {ok, Ref} = py:stream_start('__main__', Gen, [self(), Gen], #{pool => {default, B}}),
            [0, 1, 2] = erlpy_test:take(Ref, 3),
            ok = py:stream_cancel(Ref),
            {{error, cancelled}, _} = terminal(Ref),
            %% The finally block ran in B's Python.
            BPid = closed(Gen),
            assert_silent(Ref, 100),
            %% Cancelling again is fine and sends nothing.
            ok = py:stream_cancel(Ref),
            assert_silent(Ref, 100)
        end,
        [ticker, sync_ticker]
    ),
    idle({default, B}).

remote_stream_owner_on_third_node_window(Config) ->
    erlpy_test:doc("stream_start on A for a pool on B with owner => a process on C (window)"),
    B = peer_node(?config(b, Config)),
    C = peer_node(?config(c, Config)),
    Owner = spawn(C, ?MODULE, remote_collector, [self()]),
    %% A window lets the relay leave the pace to the owner.
    N = 300,
    {ok, Ref} = py:stream_start(builtins, range, [N], #{pool => {default, B}, owner => Owner, window => 1000}),
    Owner ! {collect, Ref},
    receive
        {collected, C, Got} -> ?assertEqual({done, lists:seq(0, N - 1)}, Got)
    after 20000 -> ct:fail(no_result_from_c)
    end,
    %% Nothing reached A.
    assert_silent(Ref, 100),
    idle({default, B}).

remote_owner_killed_cancels(Config) ->
    erlpy_test:doc("owner on A dies: the stream on B is cancelled, finally runs, in_flight 0"),
    B = peer_node(?config(b, Config)),
    ok = py:exec(helpers(), #{pool => {default, B}}),
    BPid = worker_pid(B, default),
    lists:foreach(
        fun(Gen) ->
            Owner = spawn(fun() -> receive {py_stream, _, {data, _}} -> exit(enough) end end),
            {ok, _Ref} = py:stream_start('__main__', Gen, [self(), Gen], #{pool => {default, B}, owner => Owner}),
            BPid = closed(Gen),
            ok = idle({default, B})
        end,
        [ticker, sync_ticker]
    ),
    %% Killed while idle in a receive that does not match.
    Owner2 = spawn(fun() -> receive never -> ok end end),
    {ok, _} = py:stream_start('__main__', ticker, [self(), killed], #{pool => {default, B}, owner => Owner2}),
    %% the generator runs: its first item has reached the owner
    ok = erlpy_test:wait_until(fun() -> element(2, process_info(Owner2, message_queue_len)) > 0 end),
    exit(Owner2, kill),
    BPid = closed(killed),
    ok = idle({default, B}).

remote_window_ack(Config) ->
    erlpy_test:doc("window => N and stream_ack/2 across nodes"),
    B = peer_node(?config(b, Config)),
    {ok, Win} = py:stream_start(builtins, range, [10], #{pool => {default, B}, window => 4}),
    [0, 1, 2, 3] = erlpy_test:take(Win, 4),
    assert_silent(Win, 300),
    ok = py:stream_ack(Win, 2),
    [4, 5] = erlpy_test:take(Win, 2),
    assert_silent(Win, 300),
    ok = py:stream_ack(Win, 10),
    {done, [6, 7, 8, 9]} = erlpy_test:collect(Win),
    %% A consumer that acknowledges each item.
    {ok, Sum} = py:stream_start(builtins, range, [2000], #{pool => {default, B}, window => 16}),
    AckLoop = fun AckLoop(R, Acc) ->
        receive
            {py_stream, R, {data, V}} -> ok = py:stream_ack(R, 1), AckLoop(R, Acc + V);
            {py_stream, R, done} -> Acc
        after 10000 -> stalled
        end
    end,
    1999000 = AckLoop(Sum, 0),
    idle({default, B}).

relay_flow_control(Config) ->
    erlpy_test:doc("owner on A never reads a stream on B: bounded mailbox, generator stops"),
    B = peer_node(?config(b, Config)),
    {Sleeper, Final, Backlog} = unread_streams(B, 1, 30),
    ct:log("produced ~b, owner's backlog ~b", [Final, Backlog]),
    ?assert(Backlog < 20000),
    ?assert(Final < 40000),
    ?assert(Backlog > 0),
    %% The owner dies: the stream ends on B.
    exit(Sleeper, kill),
    ok = idle({default, B}).

relay_flow_control_many_streams(Config) ->
    erlpy_test:doc("owner on A never reads 40 streams on B: the relays share one budget, so "
                   "the backlog is bounded per owner, not per stream (it was 40 x 8192)"),
    B = peer_node(?config(b, Config)),
    {Sleeper, Final, Backlog} = unread_streams(B, 40, 60),
    ct:log("40 streams: produced ~b, owner's backlog ~b", [Final, Backlog]),
    %% The owner's budget: 8192 * (1 + ln 40) + 40 * 32, about 40k; per stream it was 330k.
    ?assert(Backlog < 60000),
    ?assert(Backlog > 0),
    exit(Sleeper, kill),
    ok = idle({default, B}).

%% N endless streams on B to an owner on A that never reads, once B's generators have
%% stopped producing (checked every 300 ms, Tries times): {Owner, Produced, Backlog}.
unread_streams(B, N, Tries) ->
    ok = py:exec(helpers(), #{pool => {default, B}}),
    ok = py:exec(<<"produced = 0">>, #{pool => {default, B}}),
    Sleeper = spawn(fun() -> receive stop -> ok end end),
    [{ok, _} = py:stream_start('__main__', counting, [], #{pool => {default, B}, owner => Sleeper})
     || _ <- lists:seq(1, N)],
    Produced = fun() -> {ok, P} = py:eval(<<"produced">>, #{}, #{pool => {default, B}}), P end,
    Stopped = fun Stopped(Last, Left) ->
        timer:sleep(300),
        case Produced() of
            Last -> Last;
            Now when Left > 0 -> Stopped(Now, Left - 1);
            Now -> ct:fail({still_producing, Now})
        end
    end,
    Final = Stopped(Produced(), Tries),
    {message_queue_len, Backlog} = erlang:process_info(Sleeper, message_queue_len),
    {Sleeper, Final, Backlog}.

%%====================================================================
%% Cluster pools
%%====================================================================

%% `shared' on A, B and C, every node seeing all three.
start_shared(Config) ->
    B = peer_node(?config(b, Config)),
    C = peer_node(?config(c, Config)),
    {ok, _} = py:start_pool(shared, #{size => 1, cluster => true}),
    ok = start_pool_on(B, shared, #{size => 1, cluster => true}),
    ok = start_pool_on(C, shared, #{size => 1, cluster => true}),
    Nodes = [node(), B, C],
    ok = wait_members(Nodes, shared, Nodes),
    Nodes.

cluster_spread_from_every_node(Config) ->
    erlpy_test:doc("{cluster, shared} requests from A, B and C are served by all three nodes"),
    Nodes = start_shared(Config),
    Pids = lists:sort([worker_pid(N, shared) || N <- Nodes]),
    3 = length(lists:usort(Pids)),
    Req = [os, getpid, [], #{}, #{pool => {cluster, shared}}],
    lists:foreach(
        fun(Origin) ->
            Got = [begin {ok, P} = erpc:call(Origin, py, call, Req), P end || _ <- lists:seq(1, 60)],
            ct:log("from ~p: ~p", [Origin, [{P, length([X || X <- Got, X =:= P])} || P <- Pids]]),
            ?assertEqual({Origin, Pids}, {Origin, lists:usort(Got)})
        end,
        Nodes
    ).

cluster_exec_and_info(Config) ->
    erlpy_test:doc("exec on {cluster, shared} reaches every member; info lists the nodes"),
    Nodes = start_shared(Config),
    ok = py:exec(<<"def dist_everywhere(x):\n    import os\n    return (x, os.getpid())">>,
                 #{pool => {cluster, shared}}),
    lists:foreach(
        fun(N) ->
            Pid = worker_pid(N, shared),
            {ok, {1, Pid}} = py:call('__main__', dist_everywhere, [1], #{}, #{pool => {shared, N}}),
            %% From the member's own node too.
            {ok, {2, Pid}} = erpc:call(N, py, call, ['__main__', dist_everywhere, [2], #{}, #{pool => shared}])
        end,
        Nodes
    ),
    %% Every call through the cluster finds it.
    [3] = lists:usort([begin {ok, {X, _}} = py:call('__main__', dist_everywhere, [3], #{}, #{pool => {cluster, shared}}), X end
                       || _ <- lists:seq(1, 20)]),
    %% A failing exec returns the Python error.
    {error, {python, <<"NameError">>, _, _}} = py:exec(<<"undefined_name">>, #{pool => {cluster, shared}}),
    Info = py:info({cluster, shared}),
    ?assertEqual(lists:sort(Nodes), lists:sort(maps:keys(Info))),
    maps:foreach(fun(N, #{size := 1, workers := [#{os_pid := P}]}) -> P = worker_pid(N, shared) end, Info),
    %% Each member remembers the exec for its own restarts, but a pool started later
    %% (here: C's, stopped and started again) does not get it.
    C = lists:nth(3, Nodes),
    ok = erpc:call(C, py, stop_pool, [shared]),
    ok = start_pool_on(C, shared, #{size => 1, cluster => true}),
    ok = wait_members(Nodes, shared, Nodes),
    {error, {python, <<"AttributeError">>, _, _}} =
        py:call('__main__', dist_everywhere, [4], #{}, #{pool => {shared, C}}),
    Info2 = py:info({cluster, shared}),
    ?assertEqual(lists:sort(Nodes), lists:sort(maps:keys(Info2))),
    %% The same from B.
    ?assertEqual(lists:sort(Nodes), lists:sort(maps:keys(erpc:call(lists:nth(2, Nodes), py, info, [{cluster, shared}])))),
    %% info({Name, Node}).
    #{workers := [_]} = py:info({shared, lists:nth(3, Nodes)}),
    ok.

cluster_streams(Config) ->
    erlpy_test:doc("streams through {cluster, shared}: batch and true streams from A and B"),
    [_, B, _] = Nodes = start_shared(Config),
    lists:foreach(
        fun(_) ->
            {ok, Ref} = py:stream_start(builtins, range, [1000], #{pool => {cluster, shared}}),
            {done, Items} = erlpy_test:collect(Ref),
            ?assertEqual(lists:seq(0, 999), Items)
        end,
        lists:seq(1, 6)
    ),
    {ok, [0, 1, 2]} = py:stream(builtins, range, [3], #{}, #{pool => {cluster, shared}}),
    {ok, [0, 1, 2]} = erpc:call(B, py, stream_eval, [<<"range(3)">>, #{}, #{pool => {cluster, shared}}]),
    _ = [ok = idle({shared, N}) || N <- Nodes],
    ok.

%%====================================================================
%% Node failure
%%====================================================================

node_down_mid_stream(Config) ->
    erlpy_test:doc("a node halts mid-stream: exactly one nodedown error; the others serve"),
    B = peer_node(?config(b, Config)),
    DPeer = start_peer("erlpy_dist_d", #{default => #{size => 1}, failover => #{size => 1, cluster => true}}),
    D = peer_node(DPeer),
    DPythons = python_pids(D),
    {ok, _} = py:start_pool(failover, #{size => 1, cluster => true}),
    ok = start_pool_on(B, failover, #{size => 1, cluster => true}),
    Nodes = [node(), B, D],
    ok = wait_members([node(), B, D], failover, Nodes),
    ok = py:exec(helpers(), #{pool => {cluster, failover}}),
    ok = py:exec(helpers(), #{pool => {default, B}}),
    BPid = worker_pid(B, failover),
    BDefaultPid = worker_pid(B, default),
    %% A stream served on D, one on B, both owned here.
    {ok, OnD} = py:stream_start('__main__', ticker, [self(), d], #{pool => {failover, D}}),
    {ok, OnB} = py:stream_start('__main__', ticker, [self(), b], #{pool => {failover, B}}),
    %% A stream on B owned by a process on D.
    Holder = spawn(D, ?MODULE, hold_stream, [self(), {default, B}, [self(), held]]),
    HeldRef = receive {holding, Holder, R} -> R after 10000 -> ct:fail(no_holder) end,
    receive {holder_got_data, HeldRef} -> ok after 10000 -> ct:fail(holder_got_nothing) end,
    _ = erlpy_test:take(OnD, 5),
    _ = erlpy_test:take(OnB, 5),
    %% A call in flight on D.
    Me = self(),
    spawn(fun() -> Me ! {slow, py:eval(<<"__import__('time').sleep(30)">>, #{}, #{pool => {default, D}})} end),
    ok = erlpy_test:wait_until(fun() -> erlpy_test:in_flight({default, D}) =:= 1 end),
    %% D goes down (erlang:halt, as peer:stop does).
    ok = peer:stop(element(1, DPeer)),
    {{error, {worker_exited, {nodedown, D}}}, _} = terminal(OnD),
    receive {slow, SlowResult} -> {error, {nodedown, D}} = SlowResult after 10000 -> ct:fail(slow_call_stuck) end,
    assert_silent(OnD, 500),
    %% D's owner is gone: its stream on B was cancelled and closed.
    BDefaultPid = closed(held),
    ok = idle({default, B}),
    %% The stream on B goes on.
    [_, _, _] = erlpy_test:take(OnB, 3),
    ok = py:stream_cancel(OnB),
    {{error, cancelled}, _} = terminal(OnB),
    BPid = closed(b),
    %% D's Pythons are gone with it.
    ok = erlpy_test:wait_until(fun() -> not lists:any(fun erlpy_test:os_pid_alive/1, DPythons) end),
    %% Once pg noticed, the cluster is A and B; every request succeeds there, also from
    %% C, which has no member of its own.
    C = peer_node(?config(c, Config)),
    ok = wait_members([node(), B, C], failover, [node(), B]),
    Served = lists:usort([worker_pid(node(), failover), BPid]),
    Req = [os, getpid, [], #{}, #{pool => {cluster, failover}}],
    lists:foreach(
        fun(Origin) ->
            Got = [erpc:call(Origin, py, call, Req) || _ <- lists:seq(1, 60)],
            ?assertEqual(Served, lists:usort([P || {ok, P} <- Got])),
            ?assertEqual(60, length([ok || {ok, _} <- Got]))
        end,
        [node(), B, C]
    ),
    %% Addressing the dead node directly.
    {error, {nodedown, D}} = py:call(os, getpid, [], #{}, #{pool => {failover, D}}),
    {error, {nodedown, D}} = py:stream_start('__main__', ticker, [self(), x], #{pool => {failover, D}}),
    {error, {nodedown, D}} = py:eval(<<"1">>, #{}, #{pool => {default, D}}),
    {error, {nodedown, D}} = py:exec(<<"x = 1">>, #{pool => {default, D}}),
    ok.

routing_errors(Config) ->
    erlpy_test:doc("no_pool and nodedown errors of {Name, Node} and {cluster, Name}"),
    B = peer_node(?config(b, Config)),
    [_, Host] = string:split(atom_to_list(node()), "@"),
    Dead = list_to_atom("erlpy_dist_nobody@" ++ Host),
    {error, {no_pool, {cluster, nope}}} = py:call(math, sqrt, [4], #{}, #{pool => {cluster, nope}}),
    {error, {no_pool, {cluster, nope}}} = py:eval(<<"1">>, #{}, #{pool => {cluster, nope}}),
    {error, {no_pool, {cluster, nope}}} = py:exec(<<"x = 1">>, #{pool => {cluster, nope}}),
    {error, {no_pool, {cluster, nope}}} = py:stream_eval(<<"range(2)">>, #{}, #{pool => {cluster, nope}}),
    {error, {no_pool, {cluster, nope}}} = py:stream_start(builtins, range, [2], #{pool => {cluster, nope}}),
    %% A pool that exists only locally is not a cluster pool.
    {error, {no_pool, {cluster, default}}} = py:call(math, sqrt, [4], #{}, #{pool => {cluster, default}}),
    {error, {no_pool, nope}} = py:call(math, sqrt, [4], #{}, #{pool => {nope, B}}),
    {error, {no_pool, nope}} = py:stream_start(builtins, range, [2], #{pool => {nope, B}}),
    {error, {no_pool, nope}} = py:info({nope, B}),
    {error, {nodedown, Dead}} = py:call(math, sqrt, [4], #{}, #{pool => {default, Dead}}),
    {error, {nodedown, Dead}} = py:stream(builtins, range, [2], #{}, #{pool => {default, Dead}}),
    {error, {nodedown, Dead}} = py:stream_start(builtins, range, [2], #{pool => {default, Dead}}),
    %% A cluster with no member: an empty info map.
    #{} = py:info({cluster, nope}),
    %% `cluster' is reserved in {cluster, Name}: a pool named `cluster' on B cannot be
    %% addressed as {cluster, B} (that is the cluster pool named B); locally it works.
    ok = start_pool_on(B, cluster, #{size => 1}),
    {error, {no_pool, {cluster, B}}} = py:call(math, sqrt, [4], #{}, #{pool => {cluster, B}}),
    {ok, 2.0} = erpc:call(B, py, call, [math, sqrt, [4], #{}, #{pool => cluster}]),
    ok = erpc:call(B, py, stop_pool, [cluster]),
    %% A node without erlpy.
    {ok, Bare, BareNode} = peer:start(#{name => peer:random_name("erlpy_dist_bare")}),
    try
        {error, {no_erlpy, BareNode}} = py:call(math, sqrt, [4], #{}, #{pool => {default, BareNode}})
    after
        peer:stop(Bare)
    end,
    %% Options are checked before anything is sent.
    {error, {bad_option, {window, 0}}} = py:stream_start(builtins, range, [2], #{pool => {default, B}, window => 0}),
    %% Bad arguments are checked on the serving node and come back as errors.
    {error, {badarg, _}} = py:call(math, sqrt, [self()], #{1 => 2}, #{pool => {default, B}}),
    ok.

%%====================================================================
%% docs/distribution.md
%%====================================================================

docs_examples(_Config) ->
    erlpy_test:doc("every ```erlang norun dist block of docs/distribution.md runs with B and C"),
    Blocks = dist_blocks(),
    ?assertNotEqual([], Blocks),
    Peers = start_peers(["erlpy_dist_docb", "erlpy_dist_docc"]),
    try
        [B, C] = [peer_node(P) || P <- Peers],
        Bindings0 = erl_eval:add_binding('C', C, erl_eval:add_binding('B', B, erl_eval:new_bindings())),
        _ = lists:foldl(fun({Line, Text}, Bs) -> run_block(Line, Text, Bs) end, Bindings0, Blocks),
        {comment, io_lib:format("~b blocks", [length(Blocks)])}
    after
        _ = [catch py:stop_pool(P) || P <- [shared, ml]],
        stop_peers(Peers)
    end.

docs_file() ->
    Candidates =
        [filename:join(D, "docs/distribution.md") || D <- [os:getenv("PWD")], is_list(D)] ++
        [filename:join([code:lib_dir(erlpy), "src", "..", "..", "docs", "distribution.md"])],
    case [F || F <- Candidates, filelib:is_regular(F)] of
        [F | _] -> F;
        [] -> error({not_found, Candidates})
    end.

%% [{FirstLine, Text}] of the ```erlang norun dist blocks.
dist_blocks() ->
    {ok, Bin} = file:read_file(docs_file()),
    Lines = string:split(unicode:characters_to_list(Bin), "\n", all),
    dist_blocks(Lines, 1, none, [], []).

dist_blocks([], _, _, _, Acc) ->
    lists:reverse(Acc);
dist_blocks([Line | Rest], N, none, _, Acc) ->
    case string:lexemes(string:trim(Line), " \t") of
        ["```erlang", "norun", "dist" | _] -> dist_blocks(Rest, N + 1, {in, N + 1}, [], Acc);
        _ -> dist_blocks(Rest, N + 1, none, [], Acc)
    end;
dist_blocks([Line | Rest], N, {in, Start}, Body, Acc) ->
    case string:trim(Line) of
        "```" -> dist_blocks(Rest, N + 1, none, [], [{Start, lists:flatten(lists:join("\n", lists:reverse(Body)))} | Acc]);
        _ -> dist_blocks(Rest, N + 1, {in, Start}, [Line | Body], Acc)
    end.

run_block(Line, Text, Bindings) ->
    ct:log("docs/distribution.md:~b~n~ts", [Line, Text]),
    {ok, Tokens, _} = erl_scan:string(Text, Line),
    lists:foldl(
        fun(Ts, Bs) ->
            {ok, Exprs} = erl_parse:parse_exprs(Ts),
            lists:foldl(
                fun({call, _, {atom, _, f}, [{var, _, V}]}, B) -> erl_eval:del_binding(V, B);
                   (E, B) ->
                        try erl_eval:expr(E, B) of
                            {value, _, B1} -> B1
                        catch Class:Reason:Stack ->
                            ct:log("~p:~tp~n~tp", [Class, Reason, Stack]),
                            ct:fail({example_failed, {line, erl_anno:line(element(2, E))}, Class, Reason})
                        end
                end, Bs, Exprs)
        end, Bindings, split_dots(Tokens, [], [])).

split_dots([], [], Acc) -> lists:reverse(Acc);
split_dots([], Cur, _) -> ct:fail({missing_final_dot, element(2, hd(lists:reverse(Cur)))});
split_dots([{dot, _} = Dot | Rest], Cur, Acc) -> split_dots(Rest, [], [lists:reverse([Dot | Cur]) | Acc]);
split_dots([T | Rest], Cur, Acc) -> split_dots(Rest, [T | Cur], Acc).

%%====================================================================
%% regressions (run by all/0; the bugs they found are fixed)
%%====================================================================

remote_owner_on_third_node_no_window(Config) ->
    erlpy_test:doc("owner on C, pool on B, started from A, no window, > 512 items"),
    B = peer_node(?config(b, Config)),
    C = peer_node(?config(c, Config)),
    Owner = spawn(C, ?MODULE, remote_collector, [self()]),
    N = 2000,
    {ok, Ref} = py:stream_start(builtins, range, [N], #{pool => {default, B}, owner => Owner}),
    Owner ! {collect, Ref},
    receive
        {collected, C, {Terminal, Items}} ->
            ct:log("owner on C got ~b items, then ~p", [length(Items), Terminal]),
            ?assertEqual({done, lists:seq(0, N - 1)}, {Terminal, Items})
    after 20000 -> ct:fail(no_result_from_c)
    end.

info_of_dead_node(_Config) ->
    erlpy_test:doc("py:info({Pool, DeadNode}) returns an error instead of raising"),
    [_, Host] = string:split(atom_to_list(node()), "@"),
    Dead = list_to_atom("erlpy_dist_nobody@" ++ Host),
    ?assertEqual({error, {nodedown, Dead}}, catch py:info({default, Dead})).

remote_caller_killed_cancels_its_call(Config) ->
    erlpy_test:doc("a caller on A killed during a call on B's pool (timeout => infinity): the "
                   "Python work on B is cancelled, its finally runs: it ran on to its end, for "
                   "ever here (B's worker watched erpc's process, which outlived the caller)"),
    B = peer_node(?config(b, Config)),
    ok = py:exec(helpers(), #{pool => {default, B}}),
    BPid = worker_pid(B, default),
    Self = self(),
    lists:foreach(
        fun({Function, Call}) ->
            Caller = spawn(fun() -> Call(Function) end),
            receive {started, Function} -> ok after 10000 -> error({not_started, Function}) end,
            exit(Caller, kill),
            BPid = closed(Function),
            ok = idle({default, B})
        end,
        [{F, fun(Fn) -> py:call('__main__', Fn, [Self, Fn], #{}, #{pool => {default, B}, timeout => infinity}) end}
         || F <- [waiter, awaiter]] ++
        [{waiter_eval, fun(Fn) -> py:eval(<<"waiter(n, t)">>, #{n => Self, t => Fn},
                                          #{pool => {default, B}, timeout => infinity}) end}]).

remote_handles_and_sessions_are_the_callers(Config) ->
    erlpy_test:doc("return => ref and a session on B's pool belong to their caller on A: they "
                   "belonged to erpc's process on B, which exits at once, so they were gone on "
                   "first use (stale_ref, session_ended)"),
    B = peer_node(?config(b, Config)),
    {ok, H} = py:eval(<<"[1]">>, #{}, #{pool => {default, B}, return => ref}),
    ?assertEqual({ok, none}, py:call_method(H, append, [2])),
    ?assertEqual({ok, 2}, py:call_method(H, '__len__', [])),
    %% a request that carries it runs on its worker, whatever pool it names (the local
    %% pool called it stale)
    ?assertEqual({ok, 2}, py:call(builtins, len, [H])),
    ?assertEqual({ok, 2}, py:eval(<<"len(h)">>, #{h => H})),
    ?assertEqual({ok, 2}, py:call(builtins, len, [H], #{}, #{pool => no_such_pool_here})),
    {ok, Items} = py:stream_start(builtins, iter, [H]),
    ?assertEqual({done, [1, 2]}, erlpy_test:collect(Items)),
    {ok, S} = py:session_start(#{pool => {default, B}}),
    ok = py:exec(<<"x = 41">>, #{session => S}),
    ?assertEqual({ok, 42}, py:eval(<<"x + 1">>, #{}, #{session => S})),
    %% and they still go with their owner
    Self = self(),
    Owner = spawn(fun() -> Self ! py:eval(<<"[3]">>, #{}, #{pool => {default, B}, return => ref}),
                           receive stop -> ok end end),
    {ok, H2} = receive {ok, _} = M -> M after 10000 -> error(no_handle) end,
    ?assertEqual({ok, 1}, py:call_method(H2, '__len__', [])),
    Owner ! stop,
    ok = erlpy_test:wait_until(fun() -> py:call_method(H2, '__len__', []) =/= {ok, 1} end),
    ?assertMatch({error, {stale_ref, _}}, py:call_method(H2, '__len__', [])),
    ok = py:release(H),
    ok = py:session_stop(S).


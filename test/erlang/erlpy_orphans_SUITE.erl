%% No orphans: a Python worker never outlives the VM that started it.
%%
%% Each case starts erlpy in a `peer' node (the erlpy ebin on its code path, ERLPY_PYTHON
%% in its environment) with a pool of five workers: one idle, one in a sync call sleeping
%% in C (time.sleep), one in a pure-Python busy loop, one in C code that holds the GIL
%% (sum over a huge range: not even erlpy's own loop thread can run), and one streaming to
%% an owner in the peer that never reads. Each busy Python writes its OS pid to a file
%% once it is busy. Then the node dies: erlang:halt/0 through erpc, a `kill -9' of its OS
%% process, or a clean init:stop/0. Every Python must be gone within a few seconds (the
%% cases wait up to 10 s and log how long it took).
%%
%% How: Python exits when its pipe closes, and its supervisor (the port's process, see
%% _boot.py) ends it when the pipe closes, with SIGTERM then SIGKILL, which covers a Python
%% that cannot run any code of its own any more (the GIL case).
-module(erlpy_orphans_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(M, erlpy_orphans_helpers).
-define(ROLES, [sleep_in_c, python_loop, gil_held, stream]).

all() ->
    [
        halt_via_erpc,
        kill9_of_vm,
        init_stop
    ].

init_per_suite(Config) ->
    Priv = ?config(priv_dir, Config),
    ok = file:write_file(filename:join(Priv, "erlpy_orphans_helpers.py"), helpers()),
    Started =
        case node() of
            nonode@nohost ->
                _ = os:cmd("epmd -daemon"),
                Name = list_to_atom("erlpy_orphans_" ++ os:getpid()),
                {ok, _} = net_kernel:start([Name, shortnames]),
                true;
            _ ->
                false
        end,
    [{started_distribution, Started} | Config].

end_per_suite(Config) ->
    case ?config(started_distribution, Config) of
        true -> net_kernel:stop();
        _ -> ok
    end,
    ok.

init_per_testcase(Case, Config) ->
    Dir = filename:join(?config(priv_dir, Config), atom_to_list(Case)),
    ok = filelib:ensure_path(Dir ++ "/"),
    [{dir, Dir} | Config].

%% A case that failed before its node died: halt the node (and so its Pythons).
end_per_testcase(_Case, _Config) ->
    [catch erpc:call(N, erlang, halt, [], 5000)
     || N <- nodes(), lists:prefix(atom_to_list(?MODULE), atom_to_list(N))],
    ok.

%%====================================================================
%% cases
%%====================================================================

halt_via_erpc(Config) ->
    erlpy_test:doc("erlang:halt() of a node with idle and busy workers (sleep in C, Python "
                   "loop, GIL held in C, streaming): every Python exits"),
    orphans(Config, fun(Node, _) ->
        ?assertError({erpc, noconnection}, erpc:call(Node, erlang, halt, []))
    end).

kill9_of_vm(Config) ->
    erlpy_test:doc("kill -9 of a node's OS process with idle and busy workers: every Python "
                   "exits"),
    orphans(Config, fun(_, BeamPid) ->
        _ = os:cmd("kill -9 " ++ BeamPid)
    end).

init_stop(Config) ->
    erlpy_test:doc("init:stop() of a node with idle and busy workers: every Python exits"),
    orphans(Config, fun(Node, _) ->
        ok = erpc:call(Node, init, stop, [])
    end).

orphans(Config, Kill) ->
    Dir = ?config(dir, Config),
    {Peer, Node} = start_peer(Config),
    BeamPid = erpc:call(Node, os, getpid, []),
    Pool = #{size => 5, path => [?config(priv_dir, Config)]},
    ok = erpc:call(Node, application, load, [erlpy]),
    ok = erpc:call(Node, application, set_env, [erlpy, pools, #{default => Pool}]),
    {ok, _} = erpc:call(Node, application, ensure_all_started, [erlpy], 30000),
    #{workers := Ws} = erpc:call(Node, py, info, [default]),
    All = [O || #{os_pid := O} <- Ws],
    ?assertEqual(5, length(lists:usort(All))),
    Busy = [{Role, make_busy(Node, Dir, Role)} || Role <- ?ROLES],
    ct:log("VM ~s, workers ~p, busy ~p", [BeamPid, All, Busy]),
    [?assert(lists:member(O, All)) || {_, O} <- Busy],
    ?assertEqual(4, length(lists:usort([O || {_, O} <- Busy]))),
    ?assert(lists:all(fun erlpy_test:os_pid_alive/1, All)),
    T0 = erlang:monotonic_time(millisecond),
    Kill(Node, BeamPid),
    Roles = [{O, proplists:get_value(O, [{P, R} || {R, P} <- Busy], idle)} || O <- All],
    Gone = wait_gone(Roles, T0, 10000),
    ct:log("exited after (ms): ~p", [Gone]),
    ?assertEqual([], [R || {_, R, alive} <- Gone]),
    ok = erlpy_test:wait_until(fun() -> not erlpy_test:os_pid_alive(list_to_integer(BeamPid)) end),
    catch peer:stop(Peer),
    ok.

%% Start one busy request of the given kind in the peer and wait until its Python is busy;
%% returns that Python's OS pid. Requests go to the least busy worker, so each lands on a
%% worker of its own.
make_busy(Node, Dir, Role) ->
    Mark = iolist_to_binary(filename:join(Dir, atom_to_list(Role))),
    Fun = atom_to_binary(Role),
    case Role of
        stream ->
            ok = erpc:call(Node, ?MODULE, peer_stream_owner, [?M, Mark]);
        _ ->
            ok = erpc:cast(Node, py, call, [?M, Fun, [Mark], #{}, #{timeout => infinity}])
    end,
    ok = erlpy_test:wait_until(fun() -> filelib:is_file(Mark) end, 20000),
    {ok, Bin} = file:read_file(Mark),
    binary_to_integer(Bin).

%% Runs in the peer: a stream owner that never reads.
peer_stream_owner(Module, Mark) ->
    Parent = self(),
    spawn(fun() ->
        {ok, _} = py:stream_start(Module, stream, [Mark]),
        Parent ! started,
        receive never -> ok end
    end),
    receive started -> ok after 10000 -> error(stream_not_started) end.

%% Wait until each OS pid is gone; [{OsPid, Role, Ms | alive}].
wait_gone(Roles, T0, Timeout) ->
    Deadline = T0 + Timeout,
    wait_gone(Roles, Deadline, T0, []).

wait_gone([], _, _, Acc) ->
    lists:reverse(Acc);
wait_gone(Roles, Deadline, T0, Acc) ->
    Now = erlang:monotonic_time(millisecond),
    {Dead, Alive} = lists:partition(fun({O, _}) -> not erlpy_test:os_pid_alive(O) end, Roles),
    Acc1 = [{O, R, Now - T0} || {O, R} <- Dead] ++ Acc,
    case Alive =/= [] andalso Now < Deadline of
        true ->
            timer:sleep(20),
            wait_gone(Alive, Deadline, T0, Acc1);
        false ->
            lists:reverse([{O, R, alive} || {O, R} <- Alive] ++ Acc1)
    end.

start_peer(_Config) ->
    Ebin = filename:dirname(code:which(erlpy_worker)),
    {ok, Peer, Node} = peer:start(#{
        name => peer:random_name(?MODULE),
        args => ["-pa", Ebin, "-pa", filename:dirname(code:which(?MODULE))],
        env => [{"ERLPY_PYTHON", erlpy_test:python()}]
    }),
    {Peer, Node}.

helpers() ->
    <<"
import asyncio
import os
import time


def _mark(path):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)


def sleep_in_c(mark):
    _mark(mark)
    time.sleep(600)


def python_loop(mark):
    _mark(mark)
    n = 0
    while True:
        n += 1


def gil_held(mark):
    _mark(mark)
    # C code that never releases the GIL nor checks for signals or thread switches
    return sum(range(10**15))


async def stream(mark):
    _mark(mark)
    i = 0
    while True:
        yield i
        i += 1
        await asyncio.sleep(0)
">>.

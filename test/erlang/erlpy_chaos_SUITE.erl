%% Chaos: clients issue every kind of request while their pool's Pythons are killed, make
%% children and background processes, and have their streams cancelled and their stream
%% owners killed.
%%
%% A pool of 3 workers. Client processes issue calls (sync, async, of a function defined
%% by py:exec), evals, collected streams (py:stream, py:stream_eval), started streams,
%% handles (return => ref, used as object and argument) and sessions,
%% each with a token of its own from which the right answer follows (an echo of the token;
%% the items {Token, 0} .. {Token, N - 1} with N taken from the token). Every started
%% stream has an owner process of its own, which checks each item as it comes and, after
%% the terminal message, anything else that reaches its mailbox; clients do the same after
%% each answer. Meanwhile a chaos process, at random intervals, makes a Python fork a
%% child that sleeps, start `sleep 300' with subprocess.Popen and with os.system('... &'),
%% kills a random worker's Python (kill -9), cancels a random started stream, or kills a
%% random stream owner. A sampler notes every OS pid the pool's workers ever had.
%%
%% Counted at the end (ct:log shows the figures), each must be 0:
%% - lost: a request without an answer, a stream without a terminal message (its owner
%%   alive), a client that never reported;
%% - duplicated: a second answer, a message for a stream after its terminal message;
%% - misrouted: an answer that does not match its token, items out of order or of another
%%   token, a message for a reference the process does not own;
%% - objects held: once every client has exited, what the worker's Pythons hold for
%%   handles and sessions.
%% Timeouts, cancellations, {worker_exited, _}, {stale_ref, _} and session_ended are
%% allowed answers. Then the pool is stopped, and no process may be left (within 5 s) in
%% the process group of any Python the pool ever had (each Python leads its own group).
%%
%% ERLPY_CHAOS_SECONDS sets how long the chaos lasts (default 20).
-module(erlpy_chaos_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

-define(M, erlpy_chaos_helpers).
-define(TAG_VAR, "ERLPY_CHAOS_TAG").
-define(POOL, chaos).
-define(CLIENTS, 6).
-define(TIMEOUT, 5000).
%% How long an owner waits for its stream's terminal message.
-define(STREAM_DEADLINE, 15000).

suite() ->
    [{timetrap, {minutes, 10}}].

all() ->
    [chaos].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    ok = file:write_file(filename:join(?config(priv_dir, Config), "erlpy_chaos_helpers.py"),
                         helpers()),
    Config.

end_per_suite(_Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    Tag = "chaos-" ++ integer_to_list(erlang:unique_integer([positive])),
    [{tag, Tag} | Config].

end_per_testcase(_Case, Config) ->
    _ = py:stop_pool(?POOL),
    Left = erlpy_test:kill_tagged(?TAG_VAR, ?config(tag, Config)),
    Left =:= [] orelse ct:log("killed processes left behind: ~p", [Left]),
    _ = erlpy_test:flush(),
    ok.

chaos_seconds() ->
    case os:getenv("ERLPY_CHAOS_SECONDS") of
        false -> 20;
        "" -> 20;
        S -> list_to_integer(S)
    end.

%%====================================================================
%% The case
%%====================================================================

chaos(Config) ->
    Seconds = chaos_seconds(),
    erlpy_test:doc(lists:flatten(io_lib:format(
        "~b s of chaos (kill -9 of Pythons, forked children, background processes, streams "
        "cancelled, owners killed) under calls, evals and streams of ~b clients: nothing "
        "lost, duplicated or misrouted; after stop_pool no process left in any worker's "
        "process group", [Seconds, ?CLIENTS]))),
    T0 = now_ms(),
    {ok, _} = py:start_pool(?POOL, #{
        size => 3,
        cancel_grace => 500,
        path => [?config(priv_dir, Config)],
        env => [{?TAG_VAR, ?config(tag, Config)}]
    }),
    ok = py:exec(<<"def mecho(token):\n    return token\n">>, #{pool => ?POOL}),
    Streams = ets:new(chaos_streams, [public, set]),
    Sampler = spawn_link(fun() -> sampler(sets:new()) end),
    Deadline = T0 + Seconds * 1000,
    Parent = self(),
    _Chaos = spawn_link(fun() -> chaos_loop(Parent, Streams, Deadline, #{}) end),
    Clients = [begin
                   {Pid, Mon} = spawn_monitor(fun() -> client(Parent, I, Streams, Deadline) end),
                   {Pid, Mon, I}
               end || I <- lists:seq(1, ?CLIENTS)],
    Reports = [await_client(C, Deadline + ?STREAM_DEADLINE + 10000) || C <- Clients],
    Actions = receive {chaos_done, A} -> A after 10000 -> chaos_stuck end,
    %% Every client has exited: the handles and sessions they left went with them.
    Held = wait_no_objects(now_ms() + 15000),
    ct:log("objects held for handles and sessions after the clients exited: ~p", [Held]),
    Sampler ! {stop, self()},
    Seen = receive {sampled, S} -> S after 5000 -> [] end,
    Counts = count(Reports),
    ct:log("chaos for ~b s: actions ~p~nresults ~p~nprocess groups of the Pythons seen ~p",
           [Seconds, Actions, maps:without([problems], Counts), Seen]),
    ct:log("first problems: ~p", [lists:sublist(maps:get(problems, Counts), 30)]),
    ok = py:stop_pool(?POOL),
    Left = erlpy_test:wait_groups_empty(Seen, 5000),
    ct:log("left in the process groups of the Pythons 5 s after stop_pool: ~p~n~ts", [Left,
           [os:cmd("ps -o pid,ppid,pgid,sid,stat,etime,args -p " ++ integer_to_list(P)) || P <- Left]]),
    ct:log("the case took ~b ms", [now_ms() - T0]),
    ?assert(maps:get(ok, Counts) > 0),
    %% All at once, so that a failure shows each of them. An error other than the ones
    %% chaos explains (worker_exited, cancelled, timeout) is a bug too: lost exec state, say.
    ?assertEqual(#{lost => 0, duplicated => 0, misrouted => 0, other_errors => 0,
                   left_in_process_groups => [], objects_held => 0},
                 (maps:with([lost, duplicated, misrouted, other_errors], Counts))#{
                     left_in_process_groups => Left, objects_held => Held}).

await_client({Pid, Mon, I}, Deadline) ->
    receive
        {client_done, Pid, Results, Stray} ->
            erlang:demonitor(Mon, [flush]),
            {I, Results, Stray};
        {'DOWN', Mon, process, Pid, Reason} ->
            {I, [{client, I, {client_crashed, Reason}}], []}
    after max(0, Deadline - now_ms()) ->
        exit(Pid, kill),
        {I, [{client, I, lost_client}], []}
    end.

%%====================================================================
%% Clients
%%====================================================================

client(Parent, I, Streams, Deadline) ->
    rand:seed(exsss, {I, erlang:unique_integer(), 42}),
    Results = client_loop(I, Streams, Deadline, 1, []),
    timer:sleep(300),
    Parent ! {client_done, self(), Results, drain(50)}.

client_loop(I, Streams, Deadline, Seq, Acc) ->
    case now_ms() >= Deadline of
        true ->
            lists:reverse(Acc);
        false ->
            Token = {I, Seq},
            Kind = lists:nth(rand:uniform(10), [call, slow_call, acall, mcall, eval,
                                                collect, collect_eval, stream, handle,
                                                session]),
            Result = request(Kind, Token, Streams),
            %% Anything in the mailbox now came after the answer: a duplicate or a stray.
            Stray = [{stray, M} || M <- drain(50)],
            client_loop(I, Streams, Deadline, Seq + 1, [{Kind, Token, Result} | Stray ++ Acc])
    end.

opts() -> #{pool => ?POOL, timeout => ?TIMEOUT}.

%% Items a stream of this token yields.
length_of({_, Seq}) -> Seq rem 300 + 1.

request(call, Token, _) ->
    echo_result(Token, py:call(?M, echo, [Token], #{}, opts()));
request(slow_call, Token, _) ->
    echo_result(Token, py:call(?M, slow_echo, [Token, 0.05], #{}, opts()));
request(acall, Token, _) ->
    echo_result(Token, py:call(?M, aecho, [Token, 0.02], #{}, opts()));
request(mcall, Token, _) ->
    echo_result(Token, py:call('__main__', mecho, [Token], #{}, opts()));
request(eval, Token, _) ->
    echo_result(Token, py:eval(<<"t">>, #{t => Token}, opts()));
request(collect, Token, _) ->
    N = 10 * length_of(Token),
    list_result(Token, N, py:stream(?M, tok_gen, [Token, N], #{}, opts()));
request(collect_eval, Token, _) ->
    N = 10 * length_of(Token),
    list_result(Token, N, py:stream_eval(<<"((t, i) for i in range(n))">>, #{t => Token, n => N},
                                         opts()));
request(handle, Token, _) ->
    %% A handle made, used as an object and as an argument, released half the time (the
    %% others go with the client, when it exits).
    case py:eval(<<"[t]">>, #{t => Token}, (opts())#{return => ref}) of
        {ok, H} ->
            R1 = py:call_method(H, '__getitem__', [0], #{}, opts()),
            R2 = py:eval(<<"h[0]">>, #{h => H}, opts()),
            _ = rand:uniform(2) =:= 1 andalso py:release(H),
            both_results(Token, R1, R2);
        Error ->
            echo_result(Token, Error)
    end;
request(session, Token, _) ->
    %% A session that keeps the token in its namespace, stopped half the time.
    case py:session_start(opts()) of
        {ok, S} ->
            Keep = <<"def keep(v):\n    global t\n    t = v\n    return v\n">>,
            R1 = case py:exec(Keep, (opts())#{session => S}) of
                     ok -> py:call('__main__', keep, [Token], #{}, (opts())#{session => S});
                     Error -> Error
                 end,
            R2 = py:eval(<<"t">>, #{}, (opts())#{session => S}),
            _ = rand:uniform(2) =:= 1 andalso py:session_stop(S),
            both_results(Token, R1, R2);
        Error ->
            echo_result(Token, Error)
    end;
request(stream, Token, Streams) ->
    Client = self(),
    {Owner, Mon} = spawn_monitor(fun() -> owner(Client, Token, Streams) end),
    receive
        {owner_report, Owner, Result} ->
            erlang:demonitor(Mon, [flush]),
            Result;
        {'DOWN', Mon, process, Owner, killed} ->
            owner_killed;
        {'DOWN', Mon, process, Owner, Reason} ->
            {other_error, {owner_crashed, Reason}}
    after ?TIMEOUT + ?STREAM_DEADLINE + 2000 ->
        exit(Owner, kill),
        lost
    end.

both_results(Token, R1, R2) ->
    case {echo_result(Token, R1), echo_result(Token, R2)} of
        {ok, ok} -> ok;
        {ok, Other} -> Other;
        {Other, _} -> Other
    end.

echo_result(Token, {ok, Token}) -> ok;
echo_result(Token, {ok, Other}) -> {misrouted, Token, Other};
echo_result(_, {error, _} = Error) -> error_class(Error).

list_result(Token, N, {ok, Items}) ->
    case Items =:= [{Token, I} || I <- lists:seq(0, N - 1)] of
        true -> ok;
        false -> {misrouted, Token, lists:sublist(Items, 5)}
    end;
list_result(_, _, {error, _} = Error) ->
    error_class(Error).

error_class({error, timeout}) -> {allowed, timeout};
error_class({error, cancelled}) -> {allowed, cancelled};
error_class({error, {worker_exited, _}}) -> {allowed, worker_exited};
error_class({error, {stale_ref, _}}) -> {allowed, stale_ref};
error_class({error, session_ended}) -> {allowed, session_ended};
error_class(Other) -> {other_error, Other}.

%% A stream owner: starts the stream, checks every item, reports its terminal message and
%% whatever reached it after that.
owner(Client, Token, Streams) ->
    N = length_of(Token),
    {Fun, Opts} = case rand:uniform(4) of
                      1 -> {tok_gen, #{}};
                      2 -> {atok_gen, #{}};
                      3 -> {tok_gen, #{window => 7}};
                      4 -> {atok_gen, #{window => 7}}
                  end,
    Window = maps:is_key(window, Opts),
    Result =
        case py:stream_start(?M, Fun, [Token, N, 0.002], maps:merge(opts(), Opts)) of
            {ok, Ref} ->
                true = ets:insert(Streams, {Ref, self()}),
                R = read_stream(Ref, Token, Window, 0, now_ms() + ?STREAM_DEADLINE),
                ets:delete(Streams, Ref),
                timer:sleep(200),
                After = drain(50),
                case [M || M <- After, element(1, M) =:= py_stream, element(2, M) =:= Ref] of
                    [] when After =:= [] -> stream_class(R, N);
                    [] -> {misrouted, Token, {stray, After}};
                    Dup -> {duplicated, Token, Dup}
                end;
            {error, _} = Error ->
                error_class(Error)
        end,
    Client ! {owner_report, self(), Result}.

read_stream(Ref, Token, Window, Next, Deadline) ->
    receive
        {py_stream, Ref, {data, {Token, Next}}} ->
            Window andalso py:stream_ack(Ref, 1),
            read_stream(Ref, Token, Window, Next + 1, Deadline);
        {py_stream, Ref, {data, Other}} ->
            {misrouted, Token, {item, Next, Other}};
        {py_stream, Ref, Terminal} ->
            {terminal, Terminal, Next};
        {py_stream, OtherRef, _} = M when OtherRef =/= Ref ->
            {misrouted, Token, {not_mine, M}}
    after max(0, Deadline - now_ms()) ->
        lost
    end.

stream_class({terminal, done, N}, N) -> ok;
stream_class({terminal, done, Got}, N) -> {misrouted, {done_after, Got, of_, N}};
stream_class({terminal, {error, _} = E, _}, _) -> error_class(E);
stream_class(Other, _) -> Other.

%%====================================================================
%% Chaos and sampling
%%====================================================================

chaos_loop(Parent, Streams, Deadline, Actions) ->
    case now_ms() >= Deadline of
        true ->
            Parent ! {chaos_done, Actions};
        false ->
            timer:sleep(100 + rand:uniform(300)),
            Action = lists:nth(rand:uniform(6), [fork, popen, system, kill_python,
                                                 cancel_stream, kill_owner]),
            Done = try act(Action, Streams) catch C:R -> {raised, C, R} end,
            chaos_loop(Parent, Streams, Deadline,
                       maps:update_with({Action, Done}, fun(X) -> X + 1 end, 1, Actions))
    end.

act(fork, _) -> outcome(py:call(?M, fork_sleeper, [300], #{}, opts()));
act(popen, _) -> outcome(py:call(?M, popen_sleeper, [300], #{}, opts()));
act(system, _) -> outcome(py:call(?M, system_sleeper, [300], #{}, opts()));
act(kill_python, _) ->
    case catch erlpy_test:os_pids(?POOL) of
        [_ | _] = Pids ->
            Pid = lists:nth(rand:uniform(length(Pids)), Pids),
            is_integer(Pid) andalso os:cmd("kill -9 " ++ integer_to_list(Pid)),
            done;
        _ ->
            no_pids
    end;
act(cancel_stream, Streams) ->
    case ets:tab2list(Streams) of
        [] -> none;
        L -> {Ref, _} = lists:nth(rand:uniform(length(L)), L), py:stream_cancel(Ref), done
    end;
act(kill_owner, Streams) ->
    case ets:tab2list(Streams) of
        [] -> none;
        L -> {_, Owner} = lists:nth(rand:uniform(length(L)), L), exit(Owner, kill), done
    end.

outcome({ok, _}) -> ok;
outcome({error, {E, _}}) -> E;
outcome({error, E}) -> E.

%% The process group of every Python the pool's workers have had.
sampler(Seen) ->
    receive
        {stop, From} -> From ! {sampled, lists:sort(sets:to_list(Seen))}
    after 20 ->
        Pids = case catch erlpy_test:os_pids(?POOL) of
                   L when is_list(L) -> [P || P <- L, is_integer(P)];
                   _ -> []
               end,
        %% The process group of each, which it leads and everything it starts is in (a
        %% Python not yet past READY is given by its supervisor's pid, which leads a group
        %% of its own too, once erl_child_setup's fork has made it one: until then its
        %% group is erl_child_setup's, which lives as long as the VM).
        Groups = [P || P <- Pids, erlpy_test:pgid(P) =:= P],
        sampler(lists:foldl(fun sets:add_element/2, Seen, Groups))
    end.

%%====================================================================
%% Counting
%%====================================================================

count(Reports) ->
    Zero = #{ok => 0, lost => 0, duplicated => 0, misrouted => 0, owner_killed => 0,
             allowed => #{}, other_errors => 0, requests => 0, problems => []},
    lists:foldl(fun({_I, Results, Stray}, Acc) ->
        Acc1 = lists:foldl(fun count_one/2, Acc, Results),
        %% After a client's last answer: anything is a late or stray message.
        lists:foldl(fun(M, A) -> problem(stray_classify(M), {late, M}, A) end, Acc1, Stray)
    end, Zero, Reports).

count_one({stray, M}, Acc) ->
    problem(stray_classify(M), {stray, M}, Acc);
count_one({client, I, What}, Acc) ->
    problem(lost, {client, I, What}, Acc);
count_one({Kind, Token, Result}, Acc0) ->
    Acc = maps:update_with(requests, fun(X) -> X + 1 end, Acc0),
    case Result of
        ok -> bump(ok, Acc);
        owner_killed -> bump(owner_killed, Acc);
        {allowed, Why} -> Acc#{allowed := maps:update_with(Why, fun(X) -> X + 1 end, 1,
                                                           maps:get(allowed, Acc))};
        {other_error, _} -> problem(other_errors, {Kind, Token, Result}, Acc);
        lost -> problem(lost, {Kind, Token}, Acc);
        {misrouted, _, _} -> problem(misrouted, {Kind, Token, Result}, Acc);
        {misrouted, _} -> problem(misrouted, {Kind, Token, Result}, Acc);
        {duplicated, _, _} -> problem(duplicated, {Kind, Token, Result}, Acc)
    end.

%% A message a client finds in its mailbox: a late reply (through an alias, or a stream
%% message) is a duplicate; anything else is misrouted.
stray_classify({Ref, _}) when is_reference(Ref) -> duplicated;
stray_classify({py_stream, _, _}) -> misrouted;
stray_classify(_) -> misrouted.

%% What is in the mailbox, removed, up to N messages (a sender that does not stop must
%% not keep this going).
drain(0) ->
    [more];
drain(N) ->
    receive M -> [M | drain(N - 1)] after 0 -> [] end.

bump(Key, Acc) -> maps:update_with(Key, fun(X) -> X + 1 end, Acc).

problem(Key, What, Acc) ->
    Acc1 = bump(Key, Acc),
    Acc1#{problems := [{Key, What} | maps:get(problems, Acc1)]}.

%%====================================================================
%% OS processes
%%====================================================================

now_ms() -> erlang:monotonic_time(millisecond).

%% Objects the pool's Pythons hold for handles and sessions, once that is 0 or at Deadline.
wait_no_objects(Deadline) ->
    Held = lists:sum([objects_held(W, I) || #{pid := W, index := I} <- erlpy_test:workers(?POOL)]),
    case Held > 0 andalso now_ms() < Deadline of
        true -> timer:sleep(100), wait_no_objects(Deadline);
        false -> Held
    end.

objects_held(Worker, Index) ->
    case erlpy_pool:checkout_worker(?POOL, Worker, Index) of
        {ok, Worker, Index} ->
            Id = erlang:unique_integer([positive]),
            Code = <<"len(__import__('erlpy._handles')._handles.objects)">>,
            Request = erlpy_codec:message([2, Id, Code, #{}], none),
            case erlpy_worker:call(Worker, Id, Request, 10000) of
                {ok, N} when is_integer(N) -> N;
                Other -> ct:log("objects_held: ~p", [Other]), 1
            end;
        stale ->
            1
    end.



%%====================================================================
%% Python helpers
%%====================================================================

helpers() ->
    <<"
import asyncio
import os
import subprocess
import time


def echo(token):
    return token


def slow_echo(token, delay):
    time.sleep(delay)
    return token


async def aecho(token, delay):
    await asyncio.sleep(delay)
    return token


def tok_gen(token, n, delay=0):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield (token, i)


async def atok_gen(token, n, delay=0):
    for i in range(n):
        await asyncio.sleep(delay)
        yield (token, i)


def fork_sleeper(seconds):
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(seconds)
        finally:
            os._exit(0)
    return pid


def popen_sleeper(seconds):
    return subprocess.Popen(['sleep', str(seconds)]).pid


def system_sleeper(seconds):
    return os.system(f'sleep {seconds} &')
">>.

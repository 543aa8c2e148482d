%% Helpers shared by the Common Test suites.
-module(erlpy_test).
-export([doc/1, collect/1, collect/2, flush/0, wait_until/1, wait_until/2,
         python/0, start_app/0, os_pid_alive/1, start_app_with_path/1, restore_app/1,
         take/2, take/3, catch_all/1, pmap/2, nest/2,
         workers/1, os_pids/1, in_flight/1, restarts/1,
         os_processes/0, group_members/1, wait_groups_empty/2, kill_tagged/2, pgid/1]).

%% A one-line description of a test case, shown in the CT log (as ranch's ct_helper does).
doc(Text) -> ct:comment(Text), ct:log("~ts", [Text]).

%% Everything a stream owner receives for Ref: {Terminal, Items}.
collect(Ref) -> collect(Ref, 30000).
collect(Ref, Timeout) -> collect(Ref, Timeout, []).
collect(Ref, Timeout, Acc) ->
    receive
        {py_stream, Ref, {data, V}} -> collect(Ref, Timeout, [V | Acc]);
        {py_stream, Ref, Terminal} -> {Terminal, lists:reverse(Acc)}
    after Timeout -> {no_terminal, lists:reverse(Acc)}
    end.

%% All messages in the mailbox, removed.
flush() ->
    receive M -> [M | flush()] after 0 -> [] end.

%% Poll Fun until it returns true (tests must not assert timings; they may wait).
wait_until(Fun) -> wait_until(Fun, 10000).
wait_until(Fun, Timeout) when Timeout =< 0 -> Fun() orelse error(wait_until_timeout);
wait_until(Fun, Timeout) ->
    case Fun() of
        true -> ok;
        _ -> timer:sleep(20), wait_until(Fun, Timeout - 20)
    end.

%% The interpreter the tests use (the project virtualenv, set by the Makefile).
python() -> os:getenv("ERLPY_PYTHON", "python3").

start_app() ->
    {ok, _} = application:ensure_all_started(erlpy),
    ok.

%% (Re)start erlpy with a default pool of 2 that has Dir on its sys.path, whatever ran
%% before; returns what restore_app/1 needs to put the configuration back.
start_app_with_path(Dir) ->
    _ = application:stop(erlpy),
    _ = application:load(erlpy),
    Saved = application:get_env(erlpy, pools),
    ok = application:set_env(erlpy, pools, #{default => #{size => 2, path => [Dir]}}),
    {ok, _} = application:ensure_all_started(erlpy),
    Saved.

restore_app(Saved) ->
    ok = application:stop(erlpy),
    case Saved of
        {ok, Pools} -> application:set_env(erlpy, pools, Pools);
        undefined -> application:unset_env(erlpy, pools)
    end,
    ok.

os_pid_alive(OsPid) ->
    filelib:is_dir("/proc/" ++ integer_to_list(OsPid)) andalso
        not lists:prefix("Z", state_of(OsPid)).

state_of(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        {ok, Stat} ->
            [_, Rest] = binary:split(Stat, <<") ">>),
            binary_to_list(binary:part(Rest, 0, 1));
        _ -> "X"
    end.

%% The next N data items of stream Ref (an error if it ends first).
take(Ref, N) -> take(Ref, N, 10000).
take(_, 0, _) -> [];
take(Ref, N, Timeout) ->
    receive
        {py_stream, Ref, {data, V}} -> [V | take(Ref, N - 1, Timeout)];
        {py_stream, Ref, Other} -> error({unexpected_terminal, Other})
    after Timeout -> error({no_item, N})
    end.

%% What F returns, or {raised, Class, Reason}.
catch_all(F) ->
    try F() of
        R -> R
    catch
        C:R:_ -> {raised, C, R}
    end.

%% F applied to each element in its own process; results in order.
pmap(F, L) ->
    Self = self(),
    Refs = [begin
                Ref = make_ref(),
                spawn_link(fun() -> Self ! {Ref, F(X)} end),
                Ref
            end || X <- L],
    [receive {Ref, R} -> R after 30000 -> error(pmap_timeout) end || Ref <- Refs].

%% N containers (list, tuple, map or mixed) nested in each other around an integer.
nest(Kind, N) -> nest(Kind, N, 0).
nest(_, 0, Inner) -> Inner;
nest(list, N, Inner) -> nest(list, N - 1, [Inner]);
nest(tuple, N, Inner) -> nest(tuple, N - 1, {Inner});
nest(map, N, Inner) -> nest(map, N - 1, #{k => Inner});
nest(mixed, N, Inner) ->
    Next = case N rem 3 of 0 -> [Inner]; 1 -> {Inner}; 2 -> #{k => Inner} end,
    nest(mixed, N - 1, Next).

%% A pool's workers as py:info/1 shows them, and sums over them.
workers(Pool) ->
    #{workers := Ws} = py:info(Pool),
    Ws.

os_pids(Pool) -> [O || #{os_pid := O} <- workers(Pool)].

in_flight(Pool) -> lists:sum([F || #{in_flight := F} <- workers(Pool)]).

restarts(Pool) -> lists:sum([R || #{restarts := R} <- workers(Pool)]).

%% OS processes, from /proc (Linux).

%% The processes left in the groups Pgids once they are empty, or Timeout ms have passed
%% (a process killed a moment ago may still be on its way out).
wait_groups_empty(Pgids, Timeout) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    wait_groups_empty_until(Pgids, Deadline).

wait_groups_empty_until(Pgids, Deadline) ->
    Left = group_members(Pgids),
    case Left =/= [] andalso erlang:monotonic_time(millisecond) < Deadline of
        true -> timer:sleep(50), wait_groups_empty_until(Pgids, Deadline);
        false -> Left
    end.

%% Live (not zombie) processes whose process group is one of Pgids.
group_members(Pgids) ->
    [Pid || {Pid, Pgid, State} <- os_processes(), lists:member(Pgid, Pgids), State =/= $Z].

%% The process group of OS process Pid (a worker's Python leads its own), or
%% undefined if it is gone.
pgid(Pid) ->
    case [G || {P, G, _} <- os_processes(), P =:= Pid] of
        [G] -> G;
        [] -> undefined
    end.

%% {Pid, Pgid, State} of every process, from /proc/PID/stat.
os_processes() ->
    {ok, Names} = file:list_dir("/proc"),
    lists:filtermap(fun(Name) ->
        case string:to_integer(Name) of
            {Pid, ""} ->
                case file:read_file("/proc/" ++ Name ++ "/stat") of
                    {ok, Stat} -> parse_stat(Pid, Stat);
                    _ -> false
                end;
            _ ->
                false
        end
    end, Names).

parse_stat(Pid, Stat) ->
    %% "pid (comm) state ppid pgrp ...": comm may hold anything, so cut at the last ")".
    case binary:matches(Stat, <<")">>) of
        [] ->
            false;
        Matches ->
            {Pos, _} = lists:last(Matches),
            Rest = binary:part(Stat, Pos + 2, byte_size(Stat) - Pos - 2),
            case binary:split(Rest, <<" ">>, [global]) of
                [<<State, _/binary>>, _PPid, Pgrp | _] -> {true, {Pid, binary_to_integer(Pgrp), State}};
                _ -> false
            end
    end.

%% Kill (-9) every process whose environment has Var=Tag (a pool's `env' reaches everything
%% its Pythons start); returns their pids.
kill_tagged(Var, Tag) ->
    Needle = iolist_to_binary([Var, "=", Tag, 0]),
    Pids = [Pid || {Pid, _, _} <- os_processes(),
                   case file:read_file("/proc/" ++ integer_to_list(Pid) ++ "/environ") of
                       {ok, Env} -> binary:match(<<0, Env/binary>>, <<0, Needle/binary>>) =/= nomatch;
                       _ -> false
                   end],
    [os:cmd("kill -9 " ++ integer_to_list(Pid)) || Pid <- Pids],
    Pids.

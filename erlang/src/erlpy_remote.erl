%% @private
%% @doc A request from another node's caller, run on the pool's node (py:remote/4 calls
%% run/3 here through erpc).
%%
%% A worker gives up a request whose caller dies (it monitors the caller). erpc's process
%% on this node, not the caller, would be the one it watches, and it outlives the caller:
%% so the request runs in a process of its own, which this one ends when the caller dies
%% or its node goes away (a monitor of a remote process fires then too). The worker sees
%% that process die and cancels the Python work, as for a local caller.
-module(erlpy_remote).

-export([run/3]).

-spec run(pid(), atom(), list()) -> term().
run(Caller, Function, Args) ->
    Watch = erlang:monitor(process, Caller),
    {Pid, Ref} = spawn_monitor(fun() ->
        exit(try {result, apply(py, Function, Args)}
             catch Class:Reason:Stack -> {raised, Class, Reason, Stack}
             end)
    end),
    receive
        {'DOWN', Ref, process, Pid, {result, Result}} ->
            erlang:demonitor(Watch, [flush]),
            Result;
        {'DOWN', Ref, process, Pid, {raised, Class, Reason, Stack}} ->
            erlang:demonitor(Watch, [flush]),
            erlang:raise(Class, Reason, Stack);
        {'DOWN', Ref, process, Pid, Reason} ->
            erlang:demonitor(Watch, [flush]),
            exit(Reason);
        {'DOWN', Watch, process, Caller, Reason} ->
            exit(Pid, kill),
            exit({caller_down, Reason})
    end.

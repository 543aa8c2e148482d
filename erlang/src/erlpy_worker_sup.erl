%% @private
%% @doc The workers of one pool, `{erlpy_worker, N}' for N in 1..size.
%%
%% A Python crash is handled inside the worker (it restarts its port); this supervisor
%% only restarts workers whose Erlang process failed.
-module(erlpy_worker_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

-spec start_link(erlpy_pool:name()) -> supervisor:startlink_ret().
start_link(Name) ->
    supervisor:start_link(?MODULE, Name).

-spec init(erlpy_pool:name()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(Name) ->
    #{size := Size} = Meta = erlpy_pool:meta(Name),
    Workers = [
        #{
            id => {erlpy_worker, N},
            start => {erlpy_worker, start_link, [Name, N, Meta]},
            shutdown => 5000
        }
     || N <- lists:seq(1, Size)
    ],
    %% As ranch does for acceptors: allow more restarts for bigger pools.
    Intensity = 1 + ceil(math:log2(Size + 1)),
    {ok, {#{strategy => one_for_one, intensity => Intensity, period => 5}, Workers}}.

%% @private
%% @doc The workers of one pool, one `erlpy_worker' per index 1..size.
%%
%% A Python crash is handled inside the worker (it restarts its port); this supervisor
%% only restarts workers whose Erlang process failed. It is a `simple_one_for_one'
%% supervisor so that a pool stops its workers all at once: each waits for its Python to
%% exit (a few milliseconds), which one after the other added up with the pool's size.
-module(erlpy_worker_sup).
-behaviour(supervisor).

-export([start_link/1, init/1]).

-spec start_link(erlpy_pool:name()) -> supervisor:startlink_ret().
start_link(Name) ->
    case supervisor:start_link(?MODULE, Name) of
        {ok, Sup} ->
            #{size := Size} = Meta = erlpy_pool:meta(Name),
            start_workers(Sup, Meta, lists:seq(1, Size));
        Other ->
            Other
    end.

-spec start_workers(pid(), erlpy_pool:meta(), [pos_integer()]) -> supervisor:startlink_ret().
start_workers(Sup, _, []) ->
    {ok, Sup};
start_workers(Sup, Meta, [N | Ns]) ->
    case supervisor:start_child(Sup, [N, Meta]) of
        {ok, _} ->
            start_workers(Sup, Meta, Ns);
        {error, Reason} ->
            unlink(Sup),
            exit(Sup, shutdown),
            {error, Reason}
    end.

-spec init(erlpy_pool:name()) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init(Name) ->
    #{size := Size} = erlpy_pool:meta(Name),
    Worker = #{
        id => erlpy_worker,
        start => {erlpy_worker, start_link, [Name]},
        shutdown => 5000
    },
    %% As ranch does for acceptors: allow more restarts for bigger pools.
    Intensity = 1 + ceil(math:log2(Size + 1)),
    {ok, {#{strategy => simple_one_for_one, intensity => Intensity, period => 5}, [Worker]}}.

%% @private
%% @doc Top supervisor: the `pg' scope of cluster-wide pools, then one `erlpy_pool_sup'
%% per pool, added at run time.
-module(erlpy_sup).
-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> supervisor:startlink_ret().
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    ok = erlpy_relay:new_table(),  % lives as long as this supervisor, the application
    Scope = #{id => pg, start => {pg, start_link, [erlpy_cluster:scope()]}},
    {ok, {#{strategy => one_for_one, intensity => 10, period => 10}, [Scope]}}.

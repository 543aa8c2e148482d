%% @private
-module(erlpy_app).
-behaviour(application).

-export([start/2, stop/1]).

-include_lib("kernel/include/logger.hrl").

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    %% Failures of pools started before are from an earlier life of the application.
    erlpy_pool_sup:forget_failures(),
    warn_unknown_env(application:get_all_env(erlpy)),
    {ok, Sup} = erlpy_sup:start_link(),
    case start_pools(configured_pools()) of
        ok -> {ok, Sup};
        {error, _} = Error -> Error
    end.

-spec stop(term()) -> ok.
stop(_State) ->
    ok.

%% erlpy reads `pools' and `defaults' only: anything else in its environment was meant for
%% one of them (`{python, ...}' for `defaults', most likely), and would be silently ignored.
-spec warn_unknown_env([{atom(), term()}]) -> ok.
warn_unknown_env(Env) ->
    Options = erlpy_pool:option_names(),
    _ = [case lists:member(Key, Options) of
             true ->
                 ?LOG_WARNING("erlpy: ~p in the erlpy application environment is not read: a pool "
                              "option goes in `defaults' (every pool), as {erlpy, [{defaults, #{~p => "
                              "...}}]} or, in Elixir, config :erlpy, defaults: %{~p: ...}; or in "
                              "`pools' for one pool", [Key, Key, Key]);
             false ->
                 ?LOG_WARNING("erlpy: ~p in the erlpy application environment is not read: erlpy "
                              "reads `pools' and `defaults' (docs/pools.md)", [Key])
         end
         || {Key, _} <- Env, not lists:member(Key, [pools, defaults])],
    ok.

%% The `default' pool plus whatever `{pools, #{Name => Opts}}' asks for.
-spec configured_pools() -> [{atom(), map() | list()}].
configured_pools() ->
    Pools =
        case application:get_env(erlpy, pools, #{}) of
            M when is_map(M) -> M;
            L when is_list(L) -> maps:from_list(L)
        end,
    [{Name, Opts} || {Name, Opts} <- maps:to_list(maps:merge(#{default => #{}}, Pools)),
                     Opts =/= disabled].

-spec start_pools([{atom(), map() | list()}]) -> ok | {error, term()}.
start_pools([]) ->
    ok;
start_pools([{Name, Opts} | Rest]) ->
    case py:start_pool(Name, Opts) of
        {ok, _} -> start_pools(Rest);
        {error, Reason} ->
            %% The application does not start (application:ensure_all_started/1 returns
            %% this reason); one line first says why and what to do.
            ?LOG_ERROR("erlpy: pool ~ts cannot start: ~ts", [atom_to_binary(Name), why(Reason)]),
            {error, {pool, Name, Reason}}
    end.

-spec why(term()) -> unicode:chardata().
why({python_start_failed, #{message := Message}}) when is_binary(Message) ->
    Message;
why(Reason) ->
    io_lib:print(Reason, 1, 1000000, -1).

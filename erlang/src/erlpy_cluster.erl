%% @private
%% @doc Cluster-wide pools: a pool started with `cluster => true' joins the `pg' group
%% `{erlpy_pool, Name}' (scope `erlpy'); `pool => {cluster, Name}' picks a member on any
%% node, request by request. pg drops the members of a node that goes down.
-module(erlpy_cluster).

-export([scope/0, join/2, members/1, pick/1]).

-spec scope() -> atom().
scope() -> erlpy.

-spec join(atom(), pid()) -> ok.
join(Name, Pool) ->
    pg:join(scope(), {erlpy_pool, Name}, Pool).

-spec members(atom()) -> [pid()].
members(Name) ->
    pg:get_members(scope(), {erlpy_pool, Name}).

%% @doc The node of a member to send the next request to, chosen at random so that every
%% node's pool shares the load.
-spec pick(atom()) -> {ok, node()} | error.
pick(Name) ->
    case members(Name) of
        [] -> error;
        Members -> {ok, node(lists:nth(rand:uniform(length(Members)), Members))}
    end.

%% @private
%% @doc Where a pool sends the calls to `erlpy.batched' functions (docs/serving.md).
%%
%% Python batches the calls that reach one worker; calls spread over the pool's workers
%% would make small batches on each. So a worker's Python says when a call reached a
%% batched function (`BATCHED Module Function MaxSize', once per name and Python process),
%% and the pool records `{Module, Function}' in its configuration (which every caller
%% reads from `persistent_term' anyway: ordinary calls pay nothing for it while the table
%% is empty, and one map lookup once it is not) with a home worker picked by hashing the
%% names. Later calls to it go to the home worker while
%% it is live and has fewer than `2 x MaxSize' requests in flight (a batch running and a
%% full one waiting); beyond that, or while the home worker is draining or cannot start
%% Python, they go to the least busy worker as any call does, and its batcher batches
%% what it gets. So under light load the items of every caller meet in one worker and
%% batches fill; under a load one worker cannot keep up with, a second worker batches the
%% overflow in parallel.
%%
%% The table only grows, up to 1,000 names (it starts empty with each `erlpy_pool'
%% process): a function that stops being batched keeps its home worker, which is
%% harmless.
-module(erlpy_batching).

-export([add/3, checkout/2, info/1]).
-export_type([function_key/0, table/0]).

-type function_key() :: {Module :: binary(), Function :: binary()}.
-type table() :: #{function_key() => {Home :: pos_integer(), SpillAt :: pos_integer()}}.

%% Names a pool remembers at most (each new one rewrites the pool's persistent_term).
-define(MAX_FUNCTIONS, 1000).

%% @doc The pool's configuration with `Key' recorded as batched in batches of `MaxSize'
%% (`unchanged' if it was, or if the table is full).
-spec add(function_key(), pos_integer(), erlpy_pool:meta()) -> erlpy_pool:meta() | unchanged.
add({Module, Function} = Key, MaxSize, #{batched := Table, size := Size} = Meta) when
    is_binary(Module), is_binary(Function), is_integer(MaxSize), MaxSize > 0
->
    Entry = {erlang:phash2(Key, Size) + 1, 2 * MaxSize},
    case Table of
        #{Key := Entry} -> unchanged;
        _ when map_size(Table) >= ?MAX_FUNCTIONS -> unchanged;
        _ -> Meta#{batched := Table#{Key => Entry}}
    end;
add(_, _, _) ->
    unchanged.

%% @doc The worker for a call of `Key': its home worker if it is batched and the home
%% worker can take it, else the least busy (erlpy_pool:checkout/1).
-spec checkout(erlpy_pool:meta(), function_key()) ->
    {ok, pid(), pos_integer()} | {error, overloaded | no_workers}.
checkout(#{batched := Table, tab := Tab, counters := Counters} = Meta, Key) ->
    case Table of
        #{Key := {Home, SpillAt}} ->
            %% Draining or failed workers count 2^40 requests: never under SpillAt.
            case atomics:add_get(Counters, Home, 1) of
                InFlight when InFlight =< SpillAt ->
                    case element(Home + 1, hd(ets:lookup(Tab, workers))) of
                        Worker when is_pid(Worker) ->
                            {ok, Worker, Home};
                        _ ->
                            atomics:sub(Counters, Home, 1),
                            erlpy_pool:checkout(Meta)
                    end;
                _ ->
                    atomics:sub(Counters, Home, 1),
                    erlpy_pool:checkout(Meta)
            end;
        _ ->
            erlpy_pool:checkout(Meta)
    end.

%% @doc For py:info/1: each batched function's home worker and the requests in flight
%% there beyond which its calls go elsewhere.
-spec info(erlpy_pool:meta()) -> #{function_key() => #{worker := pos_integer(),
                                                       spill_at := pos_integer()}}.
info(#{batched := Table}) ->
    maps:map(fun(_, {Home, SpillAt}) -> #{worker => Home, spill_at => SpillAt} end, Table).

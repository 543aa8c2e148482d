%% @private
%% @doc One pool: its state (`erlpy_pool') first, then its workers, `rest_for_one', so
%% workers never outlive the table they registered in.
-module(erlpy_pool_sup).
-behaviour(supervisor).

-export([start_link/2, init/1]).

%% @doc Starts the pool and returns once every worker's Python is up, so that a pool that
%% cannot start (no interpreter, `msgpack' missing, `init' code failing) is an error here
%% rather than a pool that fails every request.
-spec start_link(erlpy_pool:name(), map() | list()) -> {ok, pid()} | {error, term()}.
start_link(Name, Opts) ->
    case erlpy_pool:validate(Opts) of
        {ok, Config} ->
            case supervisor:start_link(?MODULE, {Name, Config}) of
                {ok, Sup} -> await_workers(Sup, Name, Config);
                Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

-spec await_workers(pid(), erlpy_pool:name(), map()) -> {ok, pid()} | {error, term()}.
await_workers(Sup, Name, #{start_timeout := Timeout}) ->
    Workers = erlpy_pool:workers(erlpy_pool:meta(Name)),
    case [E || W <- Workers, {error, _} = E <- [erlpy_worker:await_ready(W, Timeout)]] of
        [] ->
            {ok, Sup};
        [Error | _] ->
            unlink(Sup),
            Ref = erlang:monitor(process, Sup),
            exit(Sup, shutdown),
            receive
                {'DOWN', Ref, process, Sup, _} -> ok
            end,
            Error
    end.

-spec init({erlpy_pool:name(), map()}) ->
    {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({Name, Config}) ->
    Pool = #{
        id => erlpy_pool,
        start => {erlpy_pool, start_link, [Name, Config]},
        shutdown => 5000
    },
    Workers = #{
        id => erlpy_worker_sup,
        start => {erlpy_worker_sup, start_link, [Name]},
        type => supervisor,
        shutdown => infinity
    },
    {ok, {#{strategy => rest_for_one, intensity => 3, period => 10}, [Pool, Workers]}}.

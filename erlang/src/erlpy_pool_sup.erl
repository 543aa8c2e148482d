%% @private
%% @doc One pool: its state (`erlpy_pool') first, then its workers, `rest_for_one', so
%% workers never outlive the table they registered in.
-module(erlpy_pool_sup).
-behaviour(supervisor).

-export([start_link/2, start_link/3, await_started/2, init/1, start_failure/1, forget_failures/0,
         failed/2]).

-define(FAILED(Name), {erlpy_pool, Name, start_failed}).

%% @doc Starts the pool and returns once every worker's Python is up, so that a pool that
%% cannot start (no interpreter, `msgpack' missing, `init' code failing) is an error here
%% rather than a pool that fails every request. Why a pool could not start is remembered
%% until it starts: requests to it are answered `{no_pool, Name, Reason}' meanwhile.
-spec start_link(erlpy_pool:name(), term()) -> {ok, pid()} | {error, term()}.
start_link(Name, Opts) ->
    start_link(Name, Opts, wait).

%% @doc With `nowait', returns as soon as the pool's processes run, before their Pythons
%% are up: py:start_pool/2 then waits in its caller (await_started/2), so that a slow
%% start (`init' code, `start_timeout') does not hold erlpy's supervisor, and with it
%% every other pool's start and stop.
-spec start_link(erlpy_pool:name(), term(), wait | nowait) -> {ok, pid()} | {error, term()}.
start_link(Name, Opts, Wait) ->
    Result =
        case erlpy_pool:validate(Opts) of
            {ok, Config0} ->
                %% The pool's `venv', built or updated if need be (erlpy_venv).
                case erlpy_venv:ensure(Config0) of
                    {ok, Config} ->
                        case supervisor:start_link(?MODULE, {Name, Config}) of
                            {ok, Sup} when Wait =:= nowait -> {ok, Sup};
                            {ok, Sup} -> await_workers(Sup, Name, Config);
                            Error -> Error
                        end;
                    {error, _} = Error ->
                        Error
                end;
            {error, _} = Error ->
                Error
        end,
    remember(Name, Result).

%% @doc Remember a start failure found before the pool's start (erlpy_venv:prepare/2).
-spec failed(erlpy_pool:name(), {error, term()}) -> {error, term()}.
failed(Name, {error, _} = Error) ->
    remember(Name, Error).

-spec remember(erlpy_pool:name(), {ok, pid()} | {error, term()}) -> {ok, pid()} | {error, term()}.
remember(Name, Result) ->
    case Result of
        {ok, _} ->
            _ = persistent_term:erase(?FAILED(Name));
        {error, Reason} ->
            persistent_term:get(?FAILED(Name), undefined) =:= Reason orelse
                persistent_term:put(?FAILED(Name), Reason)
    end,
    Result.

%% @doc Why the pool `Name' failed to start, if its last start failed.
-spec start_failure(term()) -> {ok, term()} | error.
start_failure(Name) ->
    case persistent_term:get(?FAILED(Name), undefined) of
        undefined -> error;
        Reason -> {ok, Reason}
    end.

%% @doc Forget why pools failed to start (the application starts afresh).
-spec forget_failures() -> ok.
forget_failures() ->
    _ = [persistent_term:erase(Key) || {{erlpy_pool, _, start_failed} = Key, _} <- persistent_term:get()],
    ok.

-spec await_workers(pid(), erlpy_pool:name(), map()) -> {ok, pid()} | {error, term()}.
await_workers(Sup, Name, Config) ->
    case ready(Name, Config) of
        ok -> {ok, Sup};
        {error, _} = Error -> stop(Sup), Error
    end.

%% @doc The second half of a `nowait' start, for py:start_pool/2's caller: waits for the
%% workers' Pythons; a pool that cannot start is stopped and taken out of erlpy's
%% supervisor, and the failure remembered, as a `wait' start does. The wait runs in a
%% process of its own, so that a start that fails is cleaned up even if the caller is
%% killed meanwhile (as it is when erlpy's supervisor starts the pool).
-spec await_started(erlpy_pool:name(), pid()) -> {ok, pid()} | {error, term()}.
await_started(Name, Sup) ->
    {Pid, Mon} = spawn_monitor(fun() -> exit({started, await(Name, Sup)}) end),
    receive
        {'DOWN', Mon, process, Pid, {started, Result}} -> Result;
        {'DOWN', Mon, process, Pid, Reason} -> {error, Reason}
    end.

-spec await(erlpy_pool:name(), pid()) -> {ok, pid()} | {error, term()}.
await(Name, Sup) ->
    Result =
        case erlpy_pool:meta(Name) of
            undefined -> {error, {worker_exited, shutdown}};  % stopped meanwhile
            Meta -> ready(Name, Meta)
        end,
    case Result of
        ok ->
            {ok, Sup};
        {error, _} = Error ->
            _ = supervisor:terminate_child(erlpy_sup, {erlpy_pool, Name}),
            _ = supervisor:delete_child(erlpy_sup, {erlpy_pool, Name}),
            remember(Name, Error)
    end.

-spec ready(erlpy_pool:name(), map()) -> ok | {error, term()}.
ready(Name, #{start_timeout := Timeout} = Config) ->
    Workers = erlpy_pool:workers(erlpy_pool:meta(Name)),
    case [E || W <- Workers, {error, _} = E <- [erlpy_worker:await_ready(W, Timeout)]] of
        [] ->
            ok;
        [{error, {python_start_failed, Detail}} | _] ->
            {error, {python_start_failed, erlpy_python:explain(Detail, maps:get(python, Config))}};
        [Error | _] ->
            Error
    end.

-spec stop(pid()) -> ok.
stop(Sup) ->
    unlink(Sup),
    Ref = erlang:monitor(process, Sup),
    exit(Sup, shutdown),
    receive
        {'DOWN', Ref, process, Sup, _} -> ok
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

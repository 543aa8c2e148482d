%% @private
%% @doc A pool's shared state and its routing.
%%
%% The gen_server owns the pool's ETS table (worker pids and the `exec' log) and publishes
%% the pool's configuration in `persistent_term'. Callers do not go through it: they pick
%% the least busy worker themselves from per-worker in-flight counters (`atomics') and
%% talk to that worker directly, so routing costs no process hop.
-module(erlpy_pool).
-behaviour(gen_server).

-export([start_link/2, meta/1, validate/1, option_names/0, is_ms/2, is_proplist/1]).
-export([stream_started/3, stream_ended/2]).
-export([register_worker/3, checkout/1, checkout/2, checkout_worker/3, done/2, draining/3, workers/1,
         batched/3,
         indexed_workers/1, new_atom_fun/1,
         exec_log/1]).
-export([exec/3, info/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).
-export_type([meta/0, name/0]).

-type name() :: atom().
-type meta() :: #{
    name := name(),
    pool := pid(),
    tab := ets:tid(),
    counters := atomics:atomics_ref(),
    size := pos_integer(),
    python := string(),
    path := [string()],
    env := [{string(), string() | false}],
    cd := string() | undefined,
    init := [binary()],
    max_queue := non_neg_integer(),
    none_atom := atom(),
    max_atoms := non_neg_integer(),
    cancel_grace := pos_integer(),
    start_timeout := pos_integer(),
    max_requests := pos_integer() | infinity,
    max_memory := pos_integer() | infinity,
    max_refs := pos_integer() | infinity,
    poll_us := non_neg_integer(),
    cluster := boolean(),
    venv := string() | undefined,
    requirements := [erlpy_venv_spec:requirement()],
    %% The erlpy.batched functions and their home workers (erlpy_batching).
    batched := erlpy_batching:table()
}.

-include("erlpy_protocol.hrl").

-define(KEY(Name), {?MODULE, Name}).
%% How long a worker polls for the next request after its last answer before it sleeps
%% (docs/performance.md): long enough to cover the caller's turn-around between calls
%% that come back to back; an idle worker then sleeps and costs no CPU.
-define(DEFAULT_POLL_US, 200).
-define(MAX_POLL_US, 100000).
%% The exec log outlives this process (and the workers): a pool that restarts keeps it.
-define(LOG_KEY(Name), {?MODULE, Name, exec_log}).
%% While a worker drains before being recycled, or cannot start Python, callers see it as
%% very busy and go elsewhere (a pool of one still uses it: it is the least busy).
-define(DRAINING, (1 bsl 40)).

%% A timeout Erlang's timers take (is_ms/2), in a guard.
-define(IS_MS(T, Min), (is_integer(T) andalso T >= Min andalso T =< 16#FFFFFFFF)).

%%====================================================================
%% API
%%====================================================================

-spec start_link(name(), map()) -> {ok, pid()} | {error, term()}.
start_link(Name, Config) ->
    gen_server:start_link(?MODULE, {Name, Config}, []).

-spec meta(term()) -> meta() | undefined.
meta(Name) ->
    persistent_term:get(?KEY(Name), undefined).

%% @doc Check pool options; returns the configuration with defaults filled in. The
%% application's `defaults' (`{erlpy, [{defaults, #{...}}]}') come under `Opts': a key the
%% pool sets wins. Directories (`path', `cd') and `python' are resolved here, when the pool
%% starts: `{priv, App, SubDir}' is `SubDir' in App's priv directory, a relative name is
%% relative to the pool's `cd' (for `path'), else to the VM's working directory.
-spec validate(term()) -> {ok, map()} | {error, {bad_option, {term(), term()}} | term()}.
validate(Opts) ->
    try
        Own = options_map(Opts),
        AppDefaults = options_map(application:get_env(erlpy, defaults, #{})),
        Config0 = maps:fold(fun check/3, defaults(), maps:without([name], maps:merge(AppDefaults, Own))),
        Config = resolve_dirs(Config0),
        %% `venv' alone runs the environment's interpreter (erlpy_venv:ensure/1 checks it).
        case erlpy_venv_spec:interpreter(Config) of
            {venv, VenvPython} -> {ok, Config#{python := VenvPython}};
            base ->
                case erlpy_python:find(maps:get(python, Config)) of
                    {ok, Python} -> {ok, Config#{python := Python}};
                    {error, Reason} -> {error, {python_start_failed, Reason}}
                end
        end
    catch
        throw:{bad_option, {_, _}} = Bad -> {error, Bad}
    end.

%% @doc The names of the pool options.
-spec option_names() -> [atom()].
option_names() ->
    maps:keys(defaults()).

-spec defaults() -> map().
defaults() ->
    #{
        size => erlang:system_info(schedulers_online),
        python => undefined,
        path => [],
        env => [],
        cd => undefined,
        init => [],
        max_queue => 50000,
        none_atom => none,
        max_atoms => 10000,
        cancel_grace => 2000,
        start_timeout => 30000,
        max_requests => infinity,
        max_memory => infinity,
        max_refs => 100000,
        poll_us => ?DEFAULT_POLL_US,
        cluster => false,
        venv => undefined,
        requirements => []
    }.

%% Options are a map or a proplist; anything else is `{bad_option, {options, Term}}'.
-spec options_map(term()) -> map().
options_map(Map) when is_map(Map) ->
    Map;
options_map(List) when is_list(List) ->
    case is_proplist(List) of
        true -> proplists:to_map(List);
        false -> throw({bad_option, {options, List}})
    end;
options_map(Other) ->
    throw({bad_option, {options, Other}}).

%% @doc Whether `List' is a proper list of atoms and pairs.
-spec is_proplist(list()) -> boolean().
is_proplist(List) ->
    try length(List) of
        _ -> lists:all(fun(X) -> is_atom(X) orelse (is_tuple(X) andalso tuple_size(X) =:= 2) end, List)
    catch
        error:badarg -> false  % an improper list
    end.

%% @doc Whether `T' is a whole number of milliseconds, at least `Min', that Erlang's timers
%% take: at most 2^32-1 (about 49 days); a longer one would crash the timer waiting for it.
-spec is_ms(term(), non_neg_integer()) -> boolean().
is_ms(T, Min) ->
    ?IS_MS(T, Min).

-spec check(term(), term(), map()) -> map().
check(size, N, C) when is_integer(N), N > 0 -> C#{size := N};
check(python, P, C) when is_list(P); is_binary(P) -> C#{python := string(P, python)};
check(python, {priv, _, _} = P, C) -> C#{python := P};
check(path, Ps, C) when is_list(Ps) ->
    %% A list of directories; a single directory as a string is a common slip.
    io_lib:printable_unicode_list(Ps) andalso Ps =/= [] andalso throw({bad_option, {path, Ps}}),
    C#{path := [dir(P, path) || P <- Ps]};
check(env, Env, C) when is_map(Env) -> C#{env := [env_pair(KV, Env) || KV <- maps:to_list(Env)]};
check(env, Env, C) when is_list(Env) -> C#{env := [env_pair(KV, Env) || KV <- Env]};
check(cd, Dir, C) -> C#{cd := dir(Dir, cd)};
check(init, Code, C) when is_binary(Code) -> C#{init := [Code]};
check(init, Code, C) when is_list(Code) ->
    %% One piece of code as a string, or a list of pieces.
    case io_lib:printable_unicode_list(Code) of
        true -> C#{init := [code(Code, Code)]};
        false -> C#{init := [code(X, Code) || X <- Code]}
    end;
check(max_queue, N, C) when is_integer(N), N >= 0 -> C#{max_queue := N};
check(none_atom, A, C) when is_atom(A), A =/= true, A =/= false -> C#{none_atom := A};
check(max_atoms, N, C) when is_integer(N), N >= 0 -> C#{max_atoms := N};
check(cancel_grace, N, C) when ?IS_MS(N, 1) -> C#{cancel_grace := N};
check(start_timeout, N, C) when ?IS_MS(N, 1) -> C#{start_timeout := N};
check(max_requests, N, C) when N =:= infinity; is_integer(N), N > 0 -> C#{max_requests := N};
check(max_memory, N, C) when N =:= infinity; is_integer(N), N > 0 -> C#{max_memory := N};
check(max_refs, N, C) when N =:= infinity; is_integer(N), N > 0 -> C#{max_refs := N};
check(poll_us, N, C) when is_integer(N), N >= 0, N =< ?MAX_POLL_US -> C#{poll_us := N};
check(cluster, B, C) when is_boolean(B) -> C#{cluster := B};
check(venv, Dir, C) -> C#{venv := dir(Dir, venv)};
check(requirements, Reqs, C) -> C#{requirements := erlpy_venv_spec:check_requirements(Reqs)};
check(Key, Value, _) -> throw({bad_option, {Key, Value}}).

%% A directory as given: a string, or `{priv, App, SubDir}' (resolved by resolve_dirs/1).
-spec dir(term(), atom()) -> string() | {priv, atom(), string()}.
dir({priv, App, Sub} = Dir, Key) when is_atom(App) ->
    {priv, App, string(Sub, Key, Dir)};
dir(Dir, Key) ->
    string(Dir, Key, Dir).

-spec string(term(), atom()) -> string().
string(S, Key) ->
    string(S, Key, S).

%% `Value' is what the error names: the whole option value the text came from.
-spec string(term(), atom(), term()) -> string().
string(S, Key, Value) when is_list(S); is_binary(S) ->
    try unicode:characters_to_list(S) of
        L when is_list(L) -> L;
        _ -> throw({bad_option, {Key, Value}})
    catch
        error:_ -> throw({bad_option, {Key, Value}})
    end;
string(_, Key, Value) ->
    throw({bad_option, {Key, Value}}).

-spec code(term(), term()) -> binary().
code(Code, Value) ->
    try unicode:characters_to_binary(Code) of
        B when is_binary(B) -> B;
        _ -> throw({bad_option, {init, Value}})
    catch
        error:_ -> throw({bad_option, {init, Value}})
    end.

-spec env_pair(term(), term()) -> {string(), string() | false}.
env_pair({K, false}, Env) -> {string(K, env, Env), false};
env_pair({K, V}, Env) -> {string(K, env, Env), string(V, env, Env)};
env_pair(_, Env) -> throw({bad_option, {env, Env}}).

%% `cd' first (relative to the VM's working directory), then `path' (relative to `cd'
%% when given) and `python'. Directories must exist. `venv' and local `requirements' are
%% relative to `cd' too; requirements need a `venv'.
-spec resolve_dirs(map()) -> map().
resolve_dirs(#{venv := undefined, requirements := [_ | _] = Reqs}) ->
    throw({bad_option, {requirements, [Spec || {Spec, _} <- Reqs]}});
resolve_dirs(#{cd := Cd0, path := Paths0, python := Python0, venv := Venv0, requirements := Reqs0} = C) ->
    {ok, Cwd} = file:get_cwd(),
    Cd = case Cd0 of
        undefined -> undefined;
        _ -> existing_dir(Cd0, Cwd, cd)
    end,
    Base = case Cd of
        undefined -> Cwd;
        _ -> Cd
    end,
    Python = case Python0 of
        {priv, _, _} -> resolve(Python0, Cwd, python);
        _ -> Python0
    end,
    Venv = case Venv0 of
        undefined -> undefined;
        _ -> resolve(Venv0, Base, venv)
    end,
    Reqs = erlpy_venv_spec:resolve_requirements(Reqs0, fun(R) -> resolve(R, Base, requirements) end),
    C#{cd := Cd, path := [existing_dir(P, Base, path) || P <- Paths0], python := Python,
       venv := Venv, requirements := Reqs}.

-spec existing_dir(string() | {priv, atom(), string()}, string(), atom()) -> string().
existing_dir(Dir0, Base, Key) ->
    Dir = resolve(Dir0, Base, Key),
    filelib:is_dir(Dir) orelse throw({bad_option, {Key, Dir}}),
    Dir.

-spec resolve(string() | {priv, atom(), string()}, string(), atom()) -> string().
resolve({priv, App, Sub} = Dir, _Base, Key) ->
    case code:priv_dir(App) of
        Priv when is_list(Priv) -> filename:join(Priv, Sub);
        {error, _} -> throw({bad_option, {Key, Dir}})
    end;
resolve(Dir, Base, _Key) ->
    filename:absname(Dir, Base).

%% @doc Called by a worker when it starts: callers can reach it from now on, and the pool
%% watches it (its streams' owners hear of its death: stream_started/3).
-spec register_worker(meta(), pos_integer(), pid()) -> ok.
register_worker(#{tab := Tab, counters := Counters, pool := Pool}, Index, Pid) ->
    atomics:put(Counters, Index, 0),
    true = ets:update_element(Tab, workers, {Index + 1, Pid}),
    gen_server:cast(Pool, {watch, Pid}).

%% @doc Called by a worker for each stream it starts. The worker sends the stream's
%% terminal message and then calls stream_ended/2; if the worker's process dies first
%% (killed, crashed), the pool sends its owner `{error, {worker_exited, Reason}}'.
-spec stream_started(meta(), reference(), pid()) -> ok.
stream_started(#{tab := Tab}, Ref, Owner) ->
    true = ets:insert(Tab, {{stream, self(), Ref}, Owner}),
    ok.

-spec stream_ended(meta(), reference()) -> ok.
stream_ended(#{tab := Tab}, Ref) ->
    try ets:delete(Tab, {stream, self(), Ref}) of
        true -> ok
    catch
        error:badarg -> ok  % the pool's process is gone, and its table with it
    end.

%% @doc Pick the least busy worker and count the request as in flight on it.
-spec checkout(meta()) -> {ok, pid(), pos_integer()} | {error, overloaded | no_workers}.
checkout(#{tab := Tab, counters := Counters, size := Size, max_queue := MaxQueue}) ->
    [Workers] = ets:lookup(Tab, workers),
    Start = erlang:phash2(self(), Size),
    case least_busy(Counters, Workers, Size, Start, 0, none, 0) of
        {_, none, _} ->
            {error, no_workers};
        {Min, _, Total} when Min > 0, Total - Size >= MaxQueue ->
            {error, overloaded};
        {_, Index, _} ->
            atomics:add(Counters, Index, 1),
            {ok, element(Index + 1, Workers), Index}
    end.

-spec least_busy(atomics:atomics_ref(), tuple(), pos_integer(), non_neg_integer(),
                 non_neg_integer(), none | {integer(), pos_integer()}, integer()) ->
    {integer(), none | pos_integer(), integer()}.
least_busy(_, _, Size, _, Size, none, Total) ->
    {0, none, Total};
least_busy(_, _, Size, _, Size, {Min, Index}, Total) ->
    {Min, Index, Total};
least_busy(Counters, Workers, Size, Start, Step, Best, Total) ->
    Index = (Start + Step) rem Size + 1,
    N = atomics:get(Counters, Index),
    Best1 =
        case {is_pid(element(Index + 1, Workers)), Best} of
            {false, _} -> Best;
            {true, none} -> {N, Index};
            {true, {Min, _}} when N < Min -> {N, Index};
            {true, _} -> Best
        end,
    least_busy(Counters, Workers, Size, Start, Step + 1, Best1, Total + max(N rem ?DRAINING, 0)).

%% @doc The worker for a call of function `Key' (`none': not a call): for an erlpy.batched
%% function, its home worker (erlpy_batching); else the least busy.
-spec checkout(meta(), erlpy_batching:function_key() | none) ->
    {ok, pid(), pos_integer()} | {error, overloaded | no_workers}.
checkout(#{batched := Batched} = Meta, Key) when map_size(Batched) > 0, Key =/= none ->
    erlpy_batching:checkout(Meta, Key);
checkout(Meta, _) ->
    checkout(Meta).

%% @doc A worker's Python found that `Key' is an erlpy.batched function (in batches of at
%% most `MaxSize'): route its later calls to one worker (erlpy_batching).
-spec batched(meta(), erlpy_batching:function_key(), pos_integer()) -> ok.
batched(#{pool := Pool}, Key, MaxSize) ->
    gen_server:cast(Pool, {batched, Key, MaxSize}).

%% @doc Take worker `Index' of pool `Pool' for a request on its handles: `stale' unless
%% `Worker' still is that worker.
-spec checkout_worker(atom(), pid(), pos_integer()) -> {ok, pid(), pos_integer()} | stale.
checkout_worker(Pool, Worker, Index) ->
    case meta(Pool) of
        #{tab := Tab, counters := Counters} ->
            case ets:lookup(Tab, workers) of
                [Workers] when element(Index + 1, Workers) =:= Worker ->
                    atomics:add(Counters, Index, 1),
                    {ok, Worker, Index};
                _ ->
                    stale
            end;
        _ ->
            stale
    end.

%% @doc Mark worker `Index' as draining (or not): it gets new requests only as a last resort.
-spec draining(meta(), pos_integer(), boolean()) -> ok.
draining(#{counters := Counters}, Index, true) -> atomics:add(Counters, Index, ?DRAINING);
draining(#{counters := Counters}, Index, false) -> atomics:sub(Counters, Index, ?DRAINING).

%% @doc A request on worker `Index' ended.
-spec done(meta(), pos_integer()) -> ok.
done(#{counters := Counters}, Index) ->
    atomics:sub(Counters, Index, 1).

-spec workers(meta()) -> [pid()].
workers(Meta) ->
    [W || {W, _} <- indexed_workers(Meta)].

%% @doc The function the decoder calls for a name that is not an atom yet: creates it
%% while the pool's `max_atoms' budget lasts.
-spec new_atom_fun(meta()) -> erlpy_codec:new_atom_fun().
new_atom_fun(#{counters := Counters, size := Size, max_atoms := Max}) ->
    Slot = Size + 1,
    fun(Name) ->
        case atomics:add_get(Counters, Slot, 1) =< Max of
            true ->
                try
                    binary_to_atom(Name, utf8)
                catch
                    error:_ ->
                        atomics:sub(Counters, Slot, 1),
                        throw({badarg, {bad_atom, Name}})
                end;
            false ->
                atomics:sub(Counters, Slot, 1),
                throw({badarg, {too_many_atoms, Max}})
        end
    end.

-spec exec_log(meta()) -> [binary()].
exec_log(#{tab := Tab}) ->
    ets:lookup_element(Tab, exec_log, 2).

%% @doc Run `Code' on every worker; remember it for workers started later if all succeed.
-spec exec(meta(), binary(), timeout()) -> ok | {error, term()}.
exec(#{pool := Pool}, Code, Timeout) ->
    try
        gen_server:call(Pool, {exec, Code, Timeout}, infinity_or(Timeout))
    catch
        %% The pool stopped meanwhile: as a call in flight is answered (the next one
        %% finds no pool).
        exit:{Reason, {gen_server, call, _}} when Reason =:= shutdown; Reason =:= noproc;
                                                 Reason =:= normal; element(1, Reason) =:= shutdown ->
            {error, {worker_exited, shutdown}}
    end.

-spec worker_info(pid()) -> [map()].
worker_info(Worker) ->
    try
        [erlpy_worker:info(Worker)]
    catch
        exit:_ -> []
    end.

-spec infinity_or(timeout()) -> timeout().
infinity_or(infinity) -> infinity;
infinity_or(T) -> T + 5000.

%% @doc A worker that stops while we ask (its pool is stopping) is left out.
-spec info(meta()) -> map().
info(#{counters := Counters, size := Size} = Meta) ->
    Workers = [Info || W <- workers(Meta), Info <- worker_info(W)],
    InFlight = lists:sum([atomics:get(Counters, I) rem ?DRAINING || I <- lists:seq(1, Size)]),
    Python = lists:usort([V || #{python := V} <- Workers, V =/= <<>>]),
    #{
        size => Size,
        workers => Workers,
        queued => max(0, InFlight - Size),
        python => case Python of [V] -> V; _ -> Python end,
        atoms_created => atomics:get(Counters, Size + 1),
        batched => erlpy_batching:info(Meta)
    }.

%%====================================================================
%% gen_server
%%====================================================================

-spec init({name(), map()}) -> {ok, meta()}.
init({Name, Config}) ->
    %% Trap exits so terminate/2 runs on shutdown and the pool disappears from
    %% persistent_term with it.
    process_flag(trap_exit, true),
    Size = maps:get(size, Config),
    Tab = ets:new(erlpy_pool, [set, public, {read_concurrency, true}]),
    true = ets:insert(Tab, [list_to_tuple([workers | lists:duplicate(Size, undefined)]),
                            {exec_log, persistent_term:get(?LOG_KEY(Name), [])}]),
    Meta = Config#{
        name => Name,
        pool => self(),
        tab => Tab,
        counters => atomics:new(Size + 1, [{signed, true}]),
        batched => #{}
    },
    persistent_term:put(?KEY(Name), Meta),
    maps:get(cluster, Config) andalso erlpy_cluster:join(Name, self()),
    {ok, Meta}.

-spec handle_call(term(), gen_server:from(), meta()) -> {reply, term(), meta()}.
handle_call({exec, Code, Timeout}, _From, Meta) ->
    Index = length(exec_log(Meta)) + 1,
    Failed = run_exec(indexed_workers(Meta), Code, Index, Timeout, Meta),
    %% A Python that died while running it (killed, say) gets one more try once restarted.
    Crashed = [{W, I} || {{W, I}, {error, {worker_exited, _}}} <- Failed],
    Reply =
        case Failed -- [F || {WI, _} = F <- Failed, lists:member(WI, Crashed)] of
            [] ->
                case run_exec(Crashed, Code, Index, Timeout, Meta) of
                    [] -> log_exec(Code, Meta);
                    [{_, Error} | _] -> Error
                end;
            [{_, Error} | _] ->
                Error
        end,
    {reply, Reply, Meta};
handle_call(_, _, Meta) ->
    {reply, {error, badarg}, Meta}.

-spec handle_cast(term(), meta()) -> {noreply, meta()}.
handle_cast({batched, Key, MaxSize}, #{name := Name} = Meta) ->
    %% Callers read the configuration from persistent_term: this is how they learn it.
    case erlpy_batching:add(Key, MaxSize, Meta) of
        unchanged ->
            {noreply, Meta};
        Meta1 ->
            persistent_term:put(?KEY(Name), Meta1),
            {noreply, Meta1}
    end;
handle_cast({watch, Worker}, Meta) ->
    _ = erlang:monitor(process, Worker),
    {noreply, Meta};
handle_cast(_, Meta) ->
    {noreply, Meta}.

%% A worker's process died: the streams it had not ended get their terminal message here.
-spec handle_info(term(), meta()) -> {noreply, meta()}.
handle_info({'DOWN', _, process, Worker, Reason}, #{tab := Tab} = Meta) ->
    Orphans = ets:match_object(Tab, {{stream, Worker, '_'}, '_'}),
    _ = [begin
             true = ets:delete(Tab, Key),
             Owner ! {py_stream, Ref, {error, {worker_exited, Reason}}}
         end || {{stream, _, Ref} = Key, Owner} <- Orphans],
    {noreply, Meta};
handle_info(_, Meta) ->
    {noreply, Meta}.

-spec run_exec([{pid(), pos_integer()}], binary(), pos_integer(), timeout(), meta()) ->
    [{{pid(), pos_integer()}, {error, term()}}].
run_exec([], _, _, _, _) ->
    [];
run_exec(Targets, Code, Index, Timeout, #{counters := Counters} = Meta) ->
    Id = erlang:unique_integer([positive]),
    NoneAtom = maps:get(none_atom, Meta),
    Request = erlpy_codec:message([?OP_EXEC, Id, Code, erlpy_frame:timeout_field(Timeout, NoneAtom)],
                                  NoneAtom),
    _ = [atomics:add(Counters, I, 1) || {_, I} <- Targets],
    Results = erlpy_worker:exec([W || {W, _} <- Targets], {Id, Request, Index}, Timeout),
    [{Target, Error} || {Target, {error, _} = Error} <- lists:zip(Targets, Results)].

%% Every worker ran it: workers started from now on replay it too.
-spec log_exec(binary(), meta()) -> ok.
log_exec(Code, #{name := Name, tab := Tab} = Meta) ->
    Log = exec_log(Meta) ++ [Code],
    persistent_term:put(?LOG_KEY(Name), Log),
    true = ets:insert(Tab, {exec_log, Log}),
    %% A worker whose Python restarted after it ran the code has replayed the log without
    %% it: it runs it now.
    lists:foreach(fun erlpy_worker:exec_sync/1, workers(Meta)).

-spec terminate(term(), meta()) -> ok.
terminate(Reason, #{name := Name}) ->
    _ = persistent_term:erase(?KEY(Name)),
    %% Stopped on purpose: the next pool of this name starts afresh. Killed or crashed:
    %% the supervisor starts it again, with its log.
    Stopped = Reason =:= shutdown orelse Reason =:= normal orelse
        (is_tuple(Reason) andalso element(1, Reason) =:= shutdown),
    Stopped andalso persistent_term:erase(?LOG_KEY(Name)),
    ok.

-spec indexed_workers(meta()) -> [{pid(), pos_integer()}].
indexed_workers(#{tab := Tab}) ->
    [Row] = ets:lookup(Tab, workers),
    [_ | Ws] = tuple_to_list(Row),
    [{W, I} || {W, I} <- lists:zip(Ws, lists:seq(1, length(Ws))), is_pid(W)].

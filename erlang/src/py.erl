%% @doc Run Python from Erlang: call, evaluate, and stream from a pool of Python workers.
%%
%% ```
%% {ok, 4.0} = py:call(math, sqrt, [16]),
%% {ok, 100} = py:eval(<<"x * y">>, #{x => 10, y => 10}),
%% {ok, Ref} = py:stream_start(builtins, iter, [[1, 2, 3]]),
%% receive {py_stream, Ref, {data, 1}} -> ok end.
%% '''
%%
%% Every function takes an options map (or a timeout in milliseconds, where shown) with
%% `pool => Name | {Name, Node} | {cluster, Name}' (default `default') and
%% `timeout => Ms | infinity' (default 30000). See docs/ for the guides.
%%
%% What raises and what returns an error (docs/errors.md): a request's data and options
%% are checked and refused with `{error, Reason}' (`{badarg, Detail}',
%% `{bad_option, {Key, Value}}'); an argument that names or handles erlpy's own things (a
%% pool name given to start_pool/2, stop_pool/1, info/1 or child_spec/1, a stream
%% reference, a stream_ack/2 count, a registered function's name or fun) of the wrong type
%% is a mistake in the program, and raises `badarg', as a BIF does.
-module(py).

%% Calls
-export([call/3, call/4, call/5]).
-export([eval/1, eval/2, eval/3]).
-export([exec/1, exec/2]).
-export([reload/1, reload/2]).
%% Streams
-export([stream/3, stream/4, stream/5]).
-export([stream_eval/1, stream_eval/2, stream_eval/3]).
-export([stream_start/3, stream_start/4]).
-export([stream_cancel/1, stream_send/2, stream_close/1, stream_ack/2]).
%% Erlang functions callable from Python
-export([session_start/1, session_stop/1]).
-export([call_method/3, call_method/4, call_method/5, getattr/2, getattr/3, release/1]).
-export([register_function/2, unregister_function/1]).
%% Pools
-export([start_pool/2, stop_pool/1, child_spec/1, info/0, info/1]).
%% Python environments of pools (docs/python-environments.md)
-export([build_venv/1, build_venvs/0]).

-export_type([pool/0, opts/0, error/0, name/0, code/0, ref/0, session/0]).

-include("erlpy_protocol.hrl").

-type name() :: atom() | binary().
-type code() :: unicode:chardata().
%% A handle: a Python object kept in one worker (docs/state.md).
-type ref() :: {'$erlpy_ref', atom(), pid(), pos_integer(), pos_integer()}.
%% A session: a private namespace on one worker (docs/state.md).
-type session() :: {'$erlpy_session', ref()}.
%% A local pool, a pool on another node, or a cluster-wide pool (started with
%% `cluster => true' on any number of nodes).
-type pool() :: atom() | {atom(), node()} | {cluster, atom()}.
-type opts() :: #{pool => pool(), timeout => timeout(), atom() => term()} | [{atom(), term()}].
-type error() ::
    timeout
    | overloaded
    | cancelled
    | {python, Type :: binary(), Message :: binary(), Traceback :: binary()}
    | {worker_exited, term()}
    | {badarg, term()}
    | {bad_option, {Key :: term(), Value :: term()}}
    | {no_pool, term()}
    | {no_pool, term(), Why :: term()}
    | {not_started, erlpy}
    | {python_start_failed, term()}
    | {nodedown, node()}
    | {stale_ref, term()}
    | {max_refs, pos_integer()}
    | session_ended.

-define(DEFAULT_TIMEOUT, 30000).
%% Options of the requests whose result may be kept as a handle.
-define(RETURN_OPTS, [return, owner, session]).

%%====================================================================
%% Calls
%%====================================================================

%% @doc Call `Module.Function(*Args)'.
%%
%% `{ok, 4.0} = py:call(math, sqrt, [16])'
-spec call(Module :: name(), Function :: name(), Args :: list()) -> {ok, term()} | {error, error()}.
call(Module, Function, Args) ->
    call(Module, Function, Args, #{}, #{}).

%% @doc Call `Module.Function(*Args, **Kwargs)'.
%%
%% `{ok, Json} = py:call(json, dumps, [#{a => 1}], #{indent => 2})'
-spec call(name(), name(), list(), Kwargs :: map()) -> {ok, term()} | {error, error()}.
call(Module, Function, Args, Kwargs) ->
    call(Module, Function, Args, Kwargs, #{}).

%% @doc Call with options, or a timeout in milliseconds.
-spec call(name() | ref(), name(), list(), map(), opts() | timeout()) ->
    {ok, term()} | {error, error()}.
call(Module, Function, Args, Kwargs, Opts) ->
    run(call, [Module, Function, Args, Kwargs], at(Module, Opts), ?RETURN_OPTS, fun(O) ->
        Fields = [target(Module, O), name(Function), list(Args), kwargs(Kwargs)],
        {kind(O), op(O, ?OP_CALL, ?OP_CALL_REF), Fields, O}
    end).

%% @doc Re-import `Module' on every worker of the pool: calls made after `ok' run its new
%% code, on every worker, and so do Pythons started later. The new code is loaded on
%% every worker first and installed only if it loaded everywhere: a failure returns the
%% Python error and leaves the old code running on every worker.
%%
%% ```
%% ok = py:reload(json),
%% {ok, <<"[1]">>} = py:call(json, dumps, [[1]]),
%% {error, {python, <<"ModuleNotFoundError">>, _, _}} = py:reload(no_such_module).
%% '''
-spec reload(name()) -> ok | {error, error()}.
reload(Module) ->
    reload(Module, #{}).

-spec reload(name(), opts() | timeout()) -> ok | {error, error()}.
reload(Module, Opts0) ->
    case options(Opts0, []) of
        {ok, Opts} ->
            on_every_worker(reload, Module, Opts, fun(Meta, Timeout) ->
                reload_on(Meta, name(Module), Timeout)
            end);
        {error, _} = Error ->
            Error
    end.

%% Run a request on every worker of a pool (exec, reload): on each member pool of a
%% cluster, on the pool's node, or here with `Local(Meta, Timeout)'.
-spec on_every_worker(exec | reload, term(), map(),
                      fun((erlpy_pool:meta(), timeout()) -> ok | {error, error()})) ->
    ok | {error, error()}.
on_every_worker(Function, Arg, #{pool := {cluster, Name}} = Opts, _) ->
    Nodes = [node(P) || P <- erlpy_cluster:members(Name)],
    Results = [remote(N, Function, [Arg, Opts#{pool := {Name, N}}], Opts) || N <- Nodes],
    case [E || {error, _} = E <- Results] of
        [] when Nodes =:= [] -> {error, {no_pool, {cluster, Name}}};
        [] -> ok;
        [Error | _] -> Error
    end;
on_every_worker(Function, Arg, #{pool := {Name, Node}} = Opts, _) when Node =/= node() ->
    remote(Node, Function, [Arg, Opts#{pool := Name}], Opts);
on_every_worker(Function, Arg, #{pool := {Name, _}} = Opts, Local) ->
    on_every_worker(Function, Arg, Opts#{pool := Name}, Local);
on_every_worker(_, _, #{timeout := Timeout} = Opts, Local) ->
    with_pool(Opts, fun(Meta) ->
        try
            Local(Meta, Timeout)
        catch
            throw:{badarg, Detail} -> {error, {badarg, Detail}}
        end
    end).

-spec reload_on(erlpy_pool:meta(), binary(), timeout()) -> ok | {error, error()}.
reload_on(Meta, Module, Timeout) ->
    Token = erlang:unique_integer([positive]),
    Workers = erlpy_pool:indexed_workers(Meta),
    Prepared = on_workers(Meta, Workers, prepare, [Token, Module], Timeout),
    case [E || {error, _} = E <- Prepared] of
        [] ->
            Committed = on_workers(Meta, Workers, commit, [Token], Timeout),
            case [E || {error, _} = E <- Committed] of
                [] -> ok;
                [Error | _] -> Error
            end;
        [Error | _] ->
            _ = on_workers(Meta, Workers, abort, [Token], Timeout),
            Error
    end.

%% Call erlpy._reload.Function(*Args) on each of these workers, at the same time.
-spec on_workers(erlpy_pool:meta(), [{pid(), pos_integer()}], atom(), list(), timeout()) ->
    [{ok, term()} | {error, term()}].
on_workers(#{name := Pool, none_atom := NoneAtom}, Workers, Function, Args, Timeout) ->
    Calls = [spawn_monitor(fun() ->
                 Id = erlang:unique_integer([positive]),
                 Request = erlpy_codec:message(
                     [?OP_CALL, Id, <<"erlpy._reload">>, atom_to_binary(Function), Args, #{}],
                     NoneAtom),
                 Result =
                     case erlpy_pool:checkout_worker(Pool, Worker, Index) of
                         {ok, Worker, Index} -> erlpy_worker:call(Worker, Id, Request, Timeout);
                         stale -> {ok, gone}
                     end,
                 exit({result, Result})
             end) || {Worker, Index} <- Workers],
    [receive
         {'DOWN', Mon, process, Pid, {result, Result}} -> Result;
         {'DOWN', Mon, process, Pid, Reason} -> {error, {worker_exited, Reason}}
     end || {Pid, Mon} <- Calls].

%% @doc Start a session: a private namespace on one worker of the pool, in which the
%% calls, evals, execs and streams given `#{session => Session}' run. It ends with
%% `session_stop/1', when its owner (`owner', default the caller) dies, or when its
%% worker's Python exits; later uses get `{error, session_ended}'.
%%
%% ```
%% {ok, S} = py:session_start(#{}),
%% ok = py:exec(<<"history = []">>, #{session => S}),
%% {ok, 1} = py:eval(<<"history.append('hi') or len(history)">>, #{}, #{session => S}),
%% {error, {python, <<"NameError">>, _, _}} = py:eval(<<"history">>),
%% ok = py:session_stop(S),
%% {error, session_ended} = py:eval(<<"history">>, #{}, #{session => S}).
%% '''
-spec session_start(opts()) -> {ok, session()} | {error, error()}.
session_start(Opts0) ->
    case options(Opts0, [owner]) of
        {ok, Opts} ->
            case call('erlpy._handles', new_session, [], #{}, Opts#{return => ref}) of
                {ok, Handle} -> {ok, ?SESSION(Handle)};
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc End a session: its namespace is dropped. Stopping it twice is fine.
-spec session_stop(session()) -> ok.
session_stop(?SESSION(Handle)) ->
    release(Handle);
session_stop(Session) ->
    erlang:error(badarg, [Session]).

%% @doc Call method `Method' of the object a handle names, in the worker that holds it.
%%
%% ```
%% {ok, Counter} = py:call(collections, 'Counter', [], #{}, #{return => ref}),
%% {ok, none} = py:call_method(Counter, update, [<<"abca">>]),
%% {ok, 2} = py:call_method(Counter, get, [<<"a">>]),
%% ok = py:release(Counter).
%% '''
-spec call_method(ref(), name(), list()) -> {ok, term()} | {error, error()}.
call_method(Ref, Method, Args) ->
    call_method(Ref, Method, Args, #{}, #{}).

-spec call_method(ref(), name(), list(), map()) -> {ok, term()} | {error, error()}.
call_method(Ref, Method, Args, Kwargs) ->
    call_method(Ref, Method, Args, Kwargs, #{}).

-spec call_method(ref(), name(), list(), map(), opts() | timeout()) ->
    {ok, term()} | {error, error()}.
call_method(?HANDLE(_, _, _, _) = Ref, Method, Args, Kwargs, Opts) ->
    call(Ref, Method, Args, Kwargs, Opts);
call_method(Ref, Method, Args, Kwargs, Opts) ->
    erlang:error(badarg, [Ref, Method, Args, Kwargs, Opts]).

%% @doc An attribute of the object a handle names (`return => ref' keeps it as a handle).
-spec getattr(ref(), name()) -> {ok, term()} | {error, error()}.
getattr(Ref, Name) ->
    getattr(Ref, Name, #{}).

-spec getattr(ref(), name(), opts() | timeout()) -> {ok, term()} | {error, error()}.
getattr(?HANDLE(_, _, _, _) = Ref, Name, Opts) ->
    call(builtins, getattr, [Ref, name(Name)], #{}, at(Ref, Opts));
getattr(Ref, Name, Opts) ->
    erlang:error(badarg, [Ref, Name, Opts]).

%% @doc Let the worker drop the object a handle names; later uses of the handle get
%% `{error, {stale_ref, _}}'. Releasing a handle twice, or a stale one, is fine.
-spec release(ref()) -> ok.
release(?HANDLE(_, Worker, _, Id)) ->
    Worker ! {'$erlpy_release', Id},
    ok;
release(Ref) ->
    erlang:error(badarg, [Ref]).

%% @doc Evaluate a Python expression.
%%
%% `{ok, 2} = py:eval(<<"1 + 1">>)'
-spec eval(code()) -> {ok, term()} | {error, error()}.
eval(Code) ->
    eval(Code, #{}, #{}).

%% @doc Evaluate an expression with local variables (atom or binary keys).
%%
%% `{ok, 100} = py:eval(<<"x * y">>, #{x => 10, y => 10})'
-spec eval(code(), Locals :: map()) -> {ok, term()} | {error, error()}.
eval(Code, Locals) ->
    eval(Code, Locals, #{}).

-spec eval(code(), map(), opts() | timeout()) -> {ok, term()} | {error, error()}.
eval(Code, Locals, Opts) ->
    run(eval, [Code, Locals], at(none, Opts), ?RETURN_OPTS, fun
        (#{session := ?SESSION(Handle)} = O) ->
            Fields = [code(Code), locals(Locals), Handle, maps:get(return, O, value) =:= ref],
            {kind(O), ?OP_EVAL_IN, Fields, O};
        (O) ->
            {kind(O), op(O, ?OP_EVAL, ?OP_EVAL_REF), [code(Code), locals(Locals)], O}
    end).

%% @doc Run statements in `__main__' on every worker of the pool. The pool remembers them
%% and replays them on every worker it starts later, so definitions survive restarts.
%%
%% `ok = py:exec(<<"def double(x): return 2 * x">>)'
-spec exec(code()) -> ok | {error, error()}.
exec(Code) ->
    exec(Code, #{}).

-spec exec(code(), opts() | timeout()) -> ok | {error, error()}.
exec(Code, Opts0) ->
    case options(at(none, Opts0), [session]) of
        {ok, #{session := ?SESSION(Handle)} = Opts} ->
            Result = run(exec, [Code], Opts, [session], fun(O) ->
                {call, ?OP_EXEC_IN, [code(Code), Handle], O}
            end),
            case Result of
                {ok, _} -> ok;
                Other -> Other
            end;
        {ok, Opts} ->
            %% Every member pool of a cluster runs it and remembers it.
            on_every_worker(exec, Code, Opts, fun(Meta, Timeout) ->
                erlpy_pool:exec(Meta, code(Code), Timeout)
            end);
        {error, _} = Error ->
            Error
    end.

%%====================================================================
%% Streams
%%====================================================================

%% @doc Collect everything a generator, iterator or iterable (sync or async) yields.
%%
%% `{ok, [0, 1, 2]} = py:stream(builtins, range, [3])'
-spec stream(name(), name(), list()) -> {ok, list()} | {error, error()}.
stream(Module, Function, Args) ->
    stream(Module, Function, Args, #{}, #{}).

-spec stream(name(), name(), list(), map()) -> {ok, list()} | {error, error()}.
stream(Module, Function, Args, Kwargs) ->
    stream(Module, Function, Args, Kwargs, #{}).

-spec stream(name(), name(), list(), map(), opts() | timeout()) -> {ok, list()} | {error, error()}.
stream(Module, Function, Args, Kwargs, Opts) ->
    run(stream, [Module, Function, Args, Kwargs], at(Module, Opts), [session], fun(O) ->
        Fields = [target(Module, O), name(Function), list(Args), kwargs(Kwargs), ?COLLECT_CREDIT, false],
        {collect, ?OP_STREAM_CALL, Fields, O}
    end).

%% @doc Evaluate an expression that gives an iterable, iterator or (async) generator, and
%% collect what it yields.
%%
%% `{ok, [0, 1, 4]} = py:stream_eval(<<"(x**2 for x in range(3))">>)'
-spec stream_eval(code()) -> {ok, list()} | {error, error()}.
stream_eval(Code) ->
    stream_eval(Code, #{}, #{}).

-spec stream_eval(code(), map()) -> {ok, list()} | {error, error()}.
stream_eval(Code, Locals) ->
    stream_eval(Code, Locals, #{}).

-spec stream_eval(code(), map(), opts() | timeout()) -> {ok, list()} | {error, error()}.
stream_eval(Code, Locals, Opts) ->
    run(stream_eval, [Code, Locals], at(none, Opts), [session], fun
        (#{session := ?SESSION(Handle)} = O) ->
            {collect, ?OP_STREAM_EVAL_IN, [code(Code), locals(Locals), ?COLLECT_CREDIT, Handle], O};
        (O) ->
            {collect, ?OP_STREAM_EVAL, [code(Code), locals(Locals), ?COLLECT_CREDIT], O}
    end).

%% @doc Start a stream and return its reference at once. The owner (default: the caller)
%% receives `{py_stream, Ref, {data, Value}}' for each item, then exactly one of
%% `{py_stream, Ref, done}' or `{py_stream, Ref, {error, Reason}}'.
-spec stream_start(name(), name(), list()) -> {ok, reference()} | {error, error()}.
stream_start(Module, Function, Args) ->
    stream_start(Module, Function, Args, #{}).

%% @doc Options: `owner => Pid', `kwargs => Map', `input => true', `window => N',
%% `idle_timeout => Ms', `pool', `timeout' (for starting only).
-spec stream_start(name(), name(), list(), opts()) -> {ok, reference()} | {error, error()}.
stream_start(Module, Function, Args, Opts0) ->
    Extra = [owner, kwargs, input, window, idle_timeout, session],
    case options(at(Module, Opts0), Extra) of
        {ok, Opts} ->
            case route(Opts) of
                {local, Local} ->
                    elsewhere(ended(Local, start_stream(Module, Function, Args, Local)),
                              [Args, maps:get(kwargs, Local, #{})],
                              fun(Node, Pool) ->
                                  remote_stream(Node, Module, Function, Args, Local#{pool := Pool})
                              end);
                {remote, Node, Remote} ->
                    remote_stream(Node, Module, Function, Args, Remote);
                {error, _} = Error ->
                    Error
            end;
        {error, _} = Error ->
            Error
    end.

-spec remote_stream(node(), name(), name(), list(), map()) -> {ok, reference()} | {error, error()}.
remote_stream(Node, Module, Function, Args, Remote) ->
    Owner = maps:get(owner, Remote, self()),
    relay(Node, [Module, Function, Args], Remote#{owner => Owner}).

%% @doc Stop a stream: its owner receives `{py_stream, Ref, {error, cancelled}}' once the
%% generator has been closed (its `finally' blocks have run). `ok' also for a stream that
%% already ended.
-spec stream_cancel(reference()) -> ok.
stream_cancel(Ref) when is_reference(Ref) ->
    erlpy_worker:stream_command(Ref, cancel);
stream_cancel(Ref) ->
    erlang:error(badarg, [Ref]).

%% @doc Send a value to the input of a stream started with `input => true'.
-spec stream_send(reference(), term()) -> ok.
stream_send(Ref, Value) when is_reference(Ref) ->
    erlpy_worker:stream_command(Ref, {send, Value});
stream_send(Ref, Value) ->
    erlang:error(badarg, [Ref, Value]).

%% @doc End the input of a stream started with `input => true'.
-spec stream_close(reference()) -> ok.
stream_close(Ref) when is_reference(Ref) ->
    erlpy_worker:stream_command(Ref, close);
stream_close(Ref) ->
    erlang:error(badarg, [Ref]).

%% @doc Grant `N' more items to a stream started with `window'.
-spec stream_ack(reference(), pos_integer()) -> ok.
stream_ack(Ref, N) when is_reference(Ref), is_integer(N), N > 0 ->
    erlpy_worker:stream_command(Ref, {ack, N});
stream_ack(Ref, N) ->
    erlang:error(badarg, [Ref, N]).

%%====================================================================
%% Erlang functions callable from Python
%%====================================================================

%% @doc Let Python call `Fun' as `erlpy.erlang.call(Name, *Args)'. A fun of arity 1
%% receives the argument list: `py:register_function(add, fun([A, B]) -> A + B end)'.
-spec register_function(name(), fun() | {module(), atom()}) -> ok.
register_function(Name, Fun) when (is_atom(Name) orelse is_binary(Name)) andalso
                                  (is_function(Fun) orelse
                                   (is_tuple(Fun) andalso tuple_size(Fun) =:= 2 andalso
                                    is_atom(element(1, Fun)) andalso is_atom(element(2, Fun)))) ->
    erlpy_functions:register(Name, Fun);
register_function(Name, Fun) ->
    erlang:error(badarg, [Name, Fun]).

-spec unregister_function(name()) -> ok.
unregister_function(Name) when is_atom(Name); is_binary(Name) ->
    erlpy_functions:unregister(Name);
unregister_function(Name) ->
    erlang:error(badarg, [Name]).

%%====================================================================
%% Pools
%%====================================================================

%% @doc Start a named pool under erlpy's supervisor; returns once its workers are up.
%%
%% `{ok, _} = py:start_pool(ml, #{size => 2})'
-spec start_pool(atom(), map() | list()) -> {ok, pid()} | {error, term()}.
start_pool(Name, Opts) when not is_atom(Name) ->
    erlang:error(badarg, [Name, Opts]);
start_pool(Name, Opts) ->
    %% A `venv' is built here, in the caller, rather than in erlpy's supervisor.
    case erlpy_venv:prepare(Name, Opts) of
        ok ->
            Spec = (pool_spec(Name, Opts))#{start => {erlpy_pool_sup, start_link, [Name, Opts, nowait]}},
            try supervisor:start_child(erlpy_sup, Spec) of
                {ok, Sup} -> erlpy_pool_sup:await_started(Name, Sup);
                Result -> started(Name, Opts, Result)
            catch
                exit:{noproc, _} -> {error, {not_started, erlpy}}
            end;
        {error, _} = Error ->
            Error
    end.

-spec started(atom(), term(), supervisor:startchild_ret()) -> {ok, pid()} | {error, term()}.
started(Name, Opts, Result) ->
    case Result of
        {error, already_present} ->
            _ = supervisor:delete_child(erlpy_sup, {erlpy_pool, Name}),
            start_pool(Name, Opts);
        {error, {{already_started, _}, _}} ->
            {error, {already_started, Name}};
        {error, {already_started, _}} ->
            {error, {already_started, Name}};
        {error, {Reason, Child}} when element(1, Child) =:= child ->
            {error, Reason};
        Other ->
            Other
    end.

%% @doc Stop a pool started with start_pool/2 (or by the application). Its Python
%% processes are stopped; requests in flight get `{error, {worker_exited, shutdown}}'.
-spec stop_pool(atom()) -> ok | {error, {no_pool, atom()} | {not_started, erlpy}}.
stop_pool(Name) when not is_atom(Name) ->
    erlang:error(badarg, [Name]);
stop_pool(Name) ->
    case catch supervisor:terminate_child(erlpy_sup, {erlpy_pool, Name}) of
        {'EXIT', {noproc, _}} ->
            {error, {not_started, erlpy}};
        ok ->
            _ = supervisor:delete_child(erlpy_sup, {erlpy_pool, Name}),
            ok;
        {error, not_found} ->
            {error, {no_pool, Name}}
    end.

%% @doc A child spec for a pool in your own supervision tree: `name' plus pool options,
%% as a map or a proplist. Elixir: `{:py, name: :ml, size: 4}'.
-spec child_spec(map() | list()) -> supervisor:child_spec().
child_spec(Opts) ->
    Name =
        case Opts of
            #{name := N} -> N;
            [_ | _] -> try proplists:get_value(name, Opts) catch error:_ -> undefined end;
            _ -> undefined
        end,
    case is_atom(Name) andalso Name =/= undefined of
        true -> pool_spec(Name, Opts);
        false -> erlang:error(badarg, [Opts])
    end.

-spec pool_spec(atom(), map() | list()) -> supervisor:child_spec().
pool_spec(Name, Opts) ->
    #{
        id => {erlpy_pool, Name},
        start => {erlpy_pool_sup, start_link, [Name, Opts]},
        type => supervisor,
        shutdown => infinity
    }.

%% @doc Build (or update, or check) the virtualenv of a pool ahead of its start: the name
%% of a pool of the application's `pools' (with its `defaults'), or pool options with
%% `venv'. Returns the interpreter the pool will run (docs/python-environments.md).
-spec build_venv(atom() | map() | list()) -> {ok, binary()} | {error, term()}.
build_venv(Pool) ->
    erlpy_venv:build(Pool).

%% @doc build_venv/1 for every pool of the application's environment that has a `venv'.
-spec build_venvs() -> {ok, [{atom(), binary()}]} | {error, {atom(), term()}}.
build_venvs() ->
    erlpy_venv:build_all().

%% @doc A map from pool name to info/1 of that pool.
-spec info() -> #{atom() => map()}.
info() ->
    maps:from_list([
        {Name, Info}
     || {{erlpy_pool, Name}, Meta} <- persistent_term:get(), is_map(Meta),
        Info <- [info(Name)], is_map(Info)
    ]).

%% @doc `size', `workers' (each with `os_pid', `in_flight', `restarts', ...), `queued'
%% and `python' (the version).
-spec info(pool()) -> map() | {error, {no_pool, term()} | {nodedown, node()}}.
info({cluster, Name}) ->
    maps:from_list([{node(P), info({Name, node(P)})} || P <- erlpy_cluster:members(Name)]);
info({Name, Node}) when Node =/= node() ->
    remote(Node, info, [Name], #{timeout => ?DEFAULT_TIMEOUT});
info({Name, _}) ->
    info(Name);
info(Name) when not is_atom(Name) ->
    erlang:error(badarg, [Name]);
info(Name) ->
    %% A pool stopping or restarting while we look is, for that moment, no pool.
    with_pool(#{pool => Name}, fun(Meta) ->
        try
            erlpy_pool:info(Meta)
        catch
            error:badarg -> {error, {no_pool, Name}}
        end
    end).

%%====================================================================
%% Internal
%%====================================================================

-type request() :: {call | collect | {ref, pid()}, Op :: integer(), Fields :: list(), map()}.

%% Run one request: here, or on the node the `pool' option names.
-spec run(atom(), list(), opts() | timeout(), [atom()], fun((map()) -> request())) ->
    {ok, term()} | {error, error()}.
run(Function, Args, Opts0, Extra, Build) ->
    case options(Opts0, Extra) of
        {ok, Opts} ->
            case route(Opts) of
                {local, Local} ->
                    elsewhere(with_pool(Local, fun(Meta) -> ended(Local, send(Build, Local, Meta)) end),
                              Args,
                              fun(Node, Pool) -> run_remote(Node, Function, Args, Local#{pool := Pool}) end);
                {remote, Node, Remote} -> run_remote(Node, Function, Args, Remote);
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

-spec run_remote(node(), atom(), list(), map()) -> {ok, term()} | {error, error()}.
run_remote(Node, Function, Args, Remote0) ->
    %% What a request keeps in Python (return => ref, a session) belongs to its caller
    %% here, not to the process erpc runs it in there.
    Remote = case Remote0 of
                 #{return := ref, owner := _} -> Remote0;
                 #{return := ref} -> Remote0#{owner => self()};
                 _ -> Remote0
             end,
    remote(Node, Function, Args ++ [Remote], Remote).

%% The result of a request run here; if it found no pool here, or a handle of no worker
%% here, and what it carries holds a handle of another node's worker, `Run(Node, Pool)'
%% runs it there instead, on the worker that holds it, as a request carrying handles
%% always runs (looked for only now, on the way to an error).
-spec elsewhere(Result, term(), fun((node(), atom()) -> Result)) -> Result.
elsewhere({error, Why} = Error, Carried, Run) when element(1, Why) =:= stale_ref;
                                                   element(1, Why) =:= no_pool ->
    case foreign_handle(Carried) of
        {ok, ?HANDLE(Pool, Worker, _, _)} -> Run(node(Worker), Pool);
        error -> Error
    end;
elsewhere(Result, _, _) ->
    Result.

-spec foreign_handle(term()) -> {ok, term()} | error.
foreign_handle(?HANDLE(_, Worker, _, _) = Handle) when is_pid(Worker), node(Worker) =/= node() ->
    {ok, Handle};
foreign_handle([H | T]) ->
    case foreign_handle(H) of
        error -> foreign_handle(T);
        Found -> Found
    end;
foreign_handle(T) when is_tuple(T) ->
    foreign_handle(tuple_to_list(T));
foreign_handle(M) when is_map(M) ->
    foreign_handle(maps:to_list(M));
foreign_handle(_) ->
    error.

%% Where the `pool' option sends a request: here, or to another node (with the pool's
%% local name).
-spec route(map()) -> {local, map()} | {remote, node(), map()} | {error, {no_pool, term()}}.
route(#{pool := {cluster, Name}} = Opts) ->
    case erlpy_cluster:pick(Name) of
        {ok, Node} -> route(Opts#{pool := {Name, Node}});
        error -> {error, {no_pool, {cluster, Name}}}
    end;
route(#{pool := {Name, Node}} = Opts) when Node =:= node() ->
    {local, Opts#{pool := Name}};
route(#{pool := {Name, Node}} = Opts) ->
    {remote, Node, Opts#{pool := Name}};
route(Opts) ->
    {local, Opts}.

-spec send(fun((map()) -> request()), map(), erlpy_pool:meta()) ->
    {ok, term()} | {error, error()}.
send(Build, Opts, #{none_atom := NoneAtom} = Meta) ->
    Id = erlang:unique_integer([positive]),
    try
        {Kind, Op, Fields, #{timeout := Timeout}} = Build(Opts),
        %% The last field is the time the caller has left (erlpy.time_left() in Python).
        Message = [Op, Id | Fields ++ [erlpy_frame:timeout_field(Timeout, NoneAtom)]],
        {Kind, Timeout, function_key(Op, Fields), erlpy_codec:message(Message, NoneAtom)}
    of
        {Kind, Timeout, Key, Request} ->
            case checkout(Meta, Key) of
                {ok, Worker, _} when Kind =:= call -> erlpy_worker:call(Worker, Id, Request, Timeout);
                {ok, Worker, _} when Kind =:= collect ->
                    erlpy_worker:collect(Worker, Id, Request, Timeout, decoder(Meta));
                {ok, Worker, _} ->
                    {ref, Owner} = Kind,
                    erlpy_worker:call_ref(Worker, Id, Request, Owner, Timeout);
                {error, no_workers} -> {error, {worker_exited, no_workers}};
                {error, _} = Error -> Error
            end
    catch
        throw:{badarg, Detail} ->
            _ = erase(?HANDLE_KEY),
            {error, {badarg, Detail}}
    end.

%% The worker for a request just encoded: the one of the handles it carries, if any (the
%% codec noted it), else the pool's choice (for a call of an erlpy.batched function, the
%% function's worker; else the least busy).
-spec checkout(erlpy_pool:meta(), erlpy_batching:function_key() | none) ->
    {ok, pid(), pos_integer()} | {error, term()}.
checkout(Meta, Key) ->
    case erase(?HANDLE_KEY) of
        undefined ->
            erlpy_pool:checkout(Meta, Key);
        {Pool, Worker, Index} ->
            case erlpy_pool:checkout_worker(Pool, Worker, Index) of
                stale -> {error, {stale_ref, Worker}};
                Ok -> Ok
            end
    end.

%% What names a call's function, for the pool's routing of erlpy.batched functions: the
%% module and function names of a call (not of an eval, a stream, a handle's method).
-spec function_key(integer(), list()) -> erlpy_batching:function_key() | none.
function_key(Op, [Module, Function | _]) when
    (Op =:= ?OP_CALL orelse Op =:= ?OP_CALL_REF), is_binary(Module), is_binary(Function)
->
    {Module, Function};
function_key(_, _) ->
    none.

%% Whether a call's result comes back or stays in Python as a handle, and its owner.
-spec kind(map()) -> call | {ref, pid()}.
kind(#{return := ref} = Opts) -> {ref, maps:get(owner, Opts, self())};
kind(_) -> call.

-spec op(map(), integer(), integer()) -> integer().
op(#{return := ref}, _, Ref) -> Ref;
op(_, Op, _) -> Op.

%% A request on a handle, or in a session, goes to the node of its worker, in its pool.
-spec at(term(), term()) -> term().
at(?HANDLE(Pool, Worker, _, _), Opts) when is_map(Opts) ->
    Opts#{pool => {Pool, node(Worker)}};
at(_, #{session := ?SESSION(Handle)} = Opts) ->
    at(Handle, Opts);
at(_, Opts) when is_map(Opts) ->
    Opts;
at(?HANDLE(_, _, _, _) = Ref, Timeout) when is_integer(Timeout); Timeout =:= infinity ->
    at(Ref, #{timeout => Timeout});
at(Module, Opts) when is_list(Opts) ->
    case options(Opts, [owner, kwargs, input, window, idle_timeout | ?RETURN_OPTS]) of
        {ok, Map} when is_map_key(session, Map); element(1, Module) =:= '$erlpy_ref' ->
            at(Module, Map);
        _ ->
            Opts
    end;
at(_, Opts) ->
    Opts.

%% What a call or stream names: a module, a handle's object (its methods), or in a
%% session, `__main__' is the session's namespace.
%% A handle goes as a 1-tuple: Python tells it from a name whatever the object is.
-spec target(term(), map()) -> binary() | {ref()} | {ref(), binary()}.
target(?HANDLE(_, _, _, _) = Ref, _) ->
    {Ref};
target(Module, #{session := ?SESSION(Handle)}) when Module =:= '__main__'; Module =:= <<"__main__">> ->
    {Handle};
target(Module, #{session := ?SESSION(Handle)}) ->
    %% Another module is the worker's; the session goes along to be checked (an ended
    %% session is session_ended for every later use).
    {Handle, name(Module)};
target(Module, _) ->
    name(Module).

%% The id of the handle of the session a request runs in, if any.
-spec session_id(map()) -> pos_integer() | undefined.
session_id(#{session := ?SESSION(?HANDLE(_, _, _, Id))}) -> Id;
session_id(_) -> undefined.

%% A request in a session whose namespace is gone (stopped, its owner dead, its Python
%% restarted): the session has ended.
-spec ended(map(), Result) -> Result | {error, session_ended}.
ended(#{session := ?SESSION(?HANDLE(_, Worker, _, Id))}, {error, {stale_ref, Stale}}) when
    Stale =:= Id; Stale =:= Worker
->
    {error, session_ended};
ended(_, Result) ->
    Result.

%% How a collecting caller decodes the chunks of items its worker forwards.
-spec decoder(erlpy_pool:meta()) -> fun((binary(), [term()]) -> [term()]).
decoder(#{none_atom := NoneAtom} = Meta) ->
    NewAtom = erlpy_pool:new_atom_fun(Meta),
    fun(Chunk, Acc) -> erlpy_codec:decode_items(Chunk, Acc, NoneAtom, NewAtom) end.

-spec start_stream(name(), name(), list(), map()) -> {ok, reference()} | {error, error()}.
start_stream(Module, Function, Args, Opts) ->
    with_pool(Opts, fun(#{none_atom := NoneAtom} = Meta) ->
        Window = maps:get(window, Opts, infinity),
        Credit = erlpy_stream:initial_credit(Window),
        Id = erlang:unique_integer([positive]),
        try
            Fields = [
                target(Module, Opts), name(Function), list(Args), kwargs(maps:get(kwargs, Opts, #{})),
                Credit, maps:get(input, Opts, false) =:= true
            ],
            erlpy_codec:message([?OP_STREAM_CALL, Id | Fields], NoneAtom)
        of
            Request ->
                Stream = #{
                    owner => maps:get(owner, Opts, self()),
                    request => Request,
                    window => Window,
                    input => maps:get(input, Opts, false),
                    idle_timeout => maps:get(idle_timeout, Opts, infinity),
                    session => session_id(Opts)
                },
                case checkout(Meta, none) of
                    {ok, Worker, _} ->
                        erlpy_worker:stream_start(Worker, Id, Stream, maps:get(timeout, Opts));
                    {error, no_workers} ->
                        {error, {worker_exited, no_workers}};
                    {error, _} = Error ->
                        Error
                end
        catch
            throw:{badarg, Detail} ->
                _ = erase(?HANDLE_KEY),
                {error, {badarg, Detail}}
        end
    end).

%% A pool being stopped may vanish between the lookup and its use: that is no_pool too.
%% The relay of a remote stream runs on the owner's node, where it can watch the owner's
%% mailbox; if erlpy is not loaded there, here.
-spec relay(node(), [term()], map()) -> {ok, reference()} | {error, term()}.
relay(Node, MFA, #{owner := Owner} = Opts) when node(Owner) =/= node() ->
    try
        erpc:call(node(Owner), erlpy_relay, start, [Node, MFA, Opts])
    catch
        error:{exception, undef, _} -> erlpy_relay:start(Node, MFA, Opts);
        error:{erpc, noconnection} -> {error, {nodedown, node(Owner)}}
    end;
relay(Node, MFA, Opts) ->
    erlpy_relay:start(Node, MFA, Opts).

-spec with_pool(map(), fun((erlpy_pool:meta()) -> Result)) -> Result | {error, error()}.
with_pool(#{pool := Name}, Fun) ->
    case erlpy_pool:meta(Name) of
        undefined ->
            no_pool(Name);
        Meta ->
            try
                Fun(Meta)
            catch
                error:badarg:Stack ->
                    case erlpy_pool:meta(Name) of
                        undefined -> {error, {no_pool, Name}};
                        _ -> erlang:raise(error, badarg, Stack)
                    end
            end
    end.

%% Why there is no pool `Name': its start failed (and why), erlpy is not running, or no
%% such pool was started.
-spec no_pool(term()) -> {error, error()}.
no_pool(Name) ->
    case erlpy_pool_sup:start_failure(Name) of
        {ok, Reason} ->
            {error, {no_pool, Name, Reason}};
        error ->
            case whereis(erlpy_sup) of
                undefined -> {error, {not_started, erlpy}};
                _ -> {error, {no_pool, Name}}
            end
    end.

-spec remote(node(), atom(), list(), map()) -> term().
remote(Node, Function, Args, Opts) ->
    Timeout =
        case maps:get(timeout, Opts) of
            infinity -> infinity;
            T -> T + 5000
        end,
    try
        erpc:call(Node, erlpy_remote, run, [self(), Function, Args], Timeout)
    catch
        error:{erpc, noconnection} -> {error, {nodedown, Node}};
        error:{erpc, timeout} -> {error, timeout};
        error:{exception, undef, _} -> {error, {no_erlpy, Node}}
    end.

%% Options: a map, a proplist, or a timeout. Unknown keys are an error, not ignored.
-spec options(term(), [atom()]) -> {ok, map()} | {error, {bad_option, term()}}.
options(Timeout, Extra) when is_integer(Timeout); Timeout =:= infinity ->
    options(#{timeout => Timeout}, Extra);
options(List, Extra) when is_list(List) ->
    case erlpy_pool:is_proplist(List) of
        true -> options(proplists:to_map(List), Extra);
        false -> {error, {bad_option, {options, List}}}
    end;
options(Opts, Extra) when is_map(Opts) ->
    Defaults = #{pool => default, timeout => ?DEFAULT_TIMEOUT},
    case [K || K <- maps:keys(Opts), not valid_option(K, maps:get(K, Opts), Extra)] of
        [] -> {ok, maps:merge(Defaults, Opts)};
        [Bad | _] -> {error, {bad_option, {Bad, maps:get(Bad, Opts)}}}
    end;
options(Other, _) ->
    {error, {bad_option, {options, Other}}}.

-spec valid_option(term(), term(), [atom()]) -> boolean().
valid_option(pool, P, _) -> is_atom(P) orelse (is_tuple(P) andalso tuple_size(P) =:= 2 andalso
                                               is_atom(element(1, P)) andalso is_atom(element(2, P)));
valid_option(timeout, T, _) -> T =:= infinity orelse erlpy_pool:is_ms(T, 0);
valid_option(K, V, Extra) ->
    lists:member(K, Extra) andalso
        case K of
            owner -> is_pid(V);
            kwargs -> is_map(V) orelse is_list(V);
            input -> is_boolean(V);
            window -> is_integer(V) andalso V > 0;
            idle_timeout -> V =:= infinity orelse erlpy_pool:is_ms(V, 1);
            return -> V =:= ref orelse V =:= value;
            session -> is_tuple(V) andalso tuple_size(V) =:= 2 andalso
                           element(1, V) =:= '$erlpy_session' andalso
                           tuple_size(element(2, V)) =:= 5 andalso
                           element(1, element(2, V)) =:= '$erlpy_ref'
        end.

-spec name(term()) -> binary().
name(Name) when is_atom(Name) -> atom_to_binary(Name);
name(Name) when is_binary(Name) -> Name;
name(Name) -> throw({badarg, {bad_name, Name}}).

-spec list(term()) -> list().
list(Args) when is_list(Args) -> Args;
list(Args) -> throw({badarg, {bad_args, Args}}).

%% Keyword arguments: a map or a proplist with atom or binary keys.
-spec kwargs(term()) -> map().
kwargs(Map) when is_map(Map) ->
    names(Map, bad_kwargs);
kwargs(List) when is_list(List) ->
    case erlpy_pool:is_proplist(List) andalso lists:all(fun is_tuple/1, List) of
        true -> names(maps:from_list(lists:reverse(List)), bad_kwargs);
        false -> throw({badarg, {bad_kwargs, List}})
    end;
kwargs(Other) ->
    throw({badarg, {bad_kwargs, Other}}).

-spec names(map(), atom()) -> map().
names(Map, Why) ->
    maps:foreach(
        fun(K, _) -> is_atom(K) orelse is_binary(K) orelse throw({badarg, {Why, K}}) end,
        Map
    ),
    Map.

-spec locals(term()) -> map().
locals(Map) when is_map(Map) ->
    names(Map, bad_local);
locals(List) when is_list(List) ->
    try kwargs(List) of
        Map -> names(Map, bad_local)
    catch
        throw:_ -> throw({badarg, {bad_locals, List}})
    end;
locals(Other) ->
    throw({badarg, {bad_locals, Other}}).

-spec code(term()) -> binary().
code(Code) when is_binary(Code) -> Code;
code(Code) ->
    try unicode:characters_to_binary(Code) of
        B when is_binary(B) -> B;
        _ -> throw({badarg, {bad_code, Code}})
    catch
        error:_ -> throw({badarg, {bad_code, Code}})
    end.

%% @private
%% @doc Erlang functions that Python may call with `erlpy.erlang.call(Name, *Args)'.
%%
%% Only registered names are callable. Registrations are rare and read on every callback,
%% which is what `persistent_term' is for.
-module(erlpy_functions).

-export([register/2, unregister/1, run_async/5]).

-include("erlpy_protocol.hrl").

-type callable() :: fun(([term()]) -> term()) | {module(), atom()} | function().

-spec register(atom() | binary(), callable()) -> ok.
register(Name, Fun) when is_function(Fun); tuple_size(Fun) =:= 2 ->
    persistent_term:put({?MODULE, name(Name)}, Fun).

-spec unregister(atom() | binary()) -> ok.
unregister(Name) ->
    _ = persistent_term:erase({?MODULE, name(Name)}),
    ok.

%% @doc Run a callback for `Worker' in a new process, so that the function may itself call
%% into Python without deadlocking the worker, and send back the encoded reply. The
%% process is linked to the worker, which ends it when nobody waits for it any more.
-spec run_async(pid(), integer(), term(), term(), atom()) -> pid().
run_async(Worker, CallbackId, Name, Args, NoneAtom) ->
    spawn_link(fun() ->
        {Ok, Value} = run(Name, Args),
        Worker ! {'$erlpy_callback_done', CallbackId, reply(CallbackId, Ok, Value, NoneAtom)}
    end).

%% The encoded REPLY. A value that cannot go to Python is a badarg error, whose detail
%% (which names the value) becomes text if it cannot go either: a reply always goes.
-spec reply(integer(), boolean(), term(), atom()) -> iodata().
reply(CallbackId, Ok, Value, NoneAtom) ->
    try
        erlpy_codec:message([?OP_REPLY, CallbackId, Ok, Value], NoneAtom)
    catch
        throw:{badarg, Detail} ->
            Error = {badarg, format_reason(Detail)},
            erlpy_codec:message([?OP_REPLY, CallbackId, false, Error], NoneAtom)
    end.

-spec run(term(), term()) -> {boolean(), term()}.
run(Name, Args) when is_binary(Name), is_list(Args) ->
    case persistent_term:get({?MODULE, Name}, undefined) of
        undefined ->
            {false, {not_registered, Name}};
        Fun ->
            try
                {true, apply_registered(Fun, Args)}
            catch
                Class:Reason -> {false, {Class, format_reason(Reason)}}
            end
    end;
run(Name, _) ->
    {false, {not_registered, Name}}.

%% Funs of arity 1 get the argument list, as in erlang_python: fun([X, Y]) -> X + Y end.
-spec apply_registered(callable(), [term()]) -> term().
apply_registered(Fun, Args) when is_function(Fun, 1) -> Fun(Args);
apply_registered({M, F}, Args) -> apply(M, F, Args);
apply_registered(Fun, Args) -> apply(Fun, Args).

-spec format_reason(term()) -> term().
format_reason(Reason) ->
    try erlpy_codec:encode(Reason, undefined) of
        _ -> Reason
    catch
        throw:_ -> iolist_to_binary(io_lib:format("~0p", [Reason]))
    end.

-spec name(atom() | binary()) -> binary().
name(Name) when is_atom(Name) -> atom_to_binary(Name);
name(Name) when is_binary(Name) -> Name.

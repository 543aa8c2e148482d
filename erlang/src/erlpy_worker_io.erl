%% @private
%% @doc What an erlpy_worker does, whatever its state: it takes requests into its table of
%% requests in flight (erlpy_inflight), performs the effects the table returns (messages
%% to callers and owners, monitors, gen_statem timeouts, flow control per owner), reads
%% Python's messages, and queues its own for Python, written as one frame once the
%% mailbox is drained. The state machine itself is erlpy_worker.
-module(erlpy_worker_io).

-export([release/2, down/2, drop_handles/1]).
-export([accept/2, perform/2, effects/2, recheck_owner/2, fail_all/2, internal/3, message/2,
         enqueue/2, flush/1, encode/2, python_pid/1, processes/1]).

-include("erlpy_protocol.hrl").
-include("erlpy_worker.hrl").
-include_lib("kernel/include/logger.hrl").

-type id() :: pos_integer().

%%====================================================================
%% Requests and their effects
%%====================================================================

%% A request goes to Python.
-spec accept(erlpy_inflight:request(), #data{}) -> #data{}.
accept({'$erlpy_call', Alias, Id, {Caller, Request}}, #data{table = T} = D) ->
    Mon = erlang:monitor(process, Caller),
    enqueue(Request, D#data{table = erlpy_inflight:add_call(Id, Alias, Mon, undefined, T)});
accept({'$erlpy_call', Alias, Id, {Caller, Request, {ref, Owner}}}, #data{table = T} = D) ->
    Mon = erlang:monitor(process, Caller),
    RefCalls = D#data.ref_calls,
    enqueue(Request, D#data{table = erlpy_inflight:add_call(Id, Alias, Mon, undefined, T),
                            ref_calls = RefCalls#{Id => Owner}});
accept({'$erlpy_exec', Alias, Id, {Caller, Request, Index}}, #data{table = T} = D) ->
    Mon = erlang:monitor(process, Caller),
    enqueue(Request, D#data{table = erlpy_inflight:add_call(Id, Alias, Mon, Index, T)});
accept({'$erlpy_collect', Alias, Id, {Caller, Request}}, #data{table = T} = D) ->
    %% A caller that dies (killed, not timed out) takes its stream with it, like an owner.
    Mon = erlang:monitor(process, Caller),
    enqueue(Request, D#data{table = erlpy_inflight:add_collect(Id, Alias, Mon, T)});
accept({'$erlpy_stream', Alias, Id, #{owner := Owner, request := Request} = Opts}, D) ->
    Ref = alias(),
    ok = erlpy_pool:stream_started(D#data.meta, Ref, Owner),
    Mon = erlang:monitor(process, Owner),
    enqueue(Request, perform(erlpy_inflight:add_stream(Id, Alias, Ref, Mon, Opts, D#data.table), D)).

-spec perform({erlpy_inflight:table(), [erlpy_inflight:effect()]}, #data{}) -> #data{}.
perform({T, Effects}, D) ->
    effects(Effects, D#data{table = T}).

-spec effects([erlpy_inflight:effect()], #data{}) -> #data{}.
effects([], D) -> D;
effects([E | Es], D) -> effects(Es, effect(E, D)).

-spec effect(erlpy_inflight:effect(), #data{}) -> #data{}.
effect({reply, Alias, Reply}, D) ->
    Alias ! {Alias, Reply},
    D;
effect({items, {collect, Alias}, _, Chunk}, D) ->
    Alias ! {Alias, {chunk, Chunk}},
    D;
effect({items, Owner, Ref, Items}, D) ->
    send_items(Owner, Ref, Items),
    D;
effect({final, {collect, Alias}, _, Final}, D) ->
    Alias ! {Alias, Final},
    D;
effect({final, Owner, Ref, Final}, D) ->
    Owner ! {py_stream, Ref, Final},
    %% After sending: were this process killed in between, its owner would hear twice
    %% rather than never.
    ok = erlpy_pool:stream_ended(D#data.meta, Ref),
    D;
effect({demonitor, Mon}, D) ->
    erlang:demonitor(Mon, [flush]),
    D;
effect({done, _}, #data{meta = Meta, index = Index, served = Served} = D) ->
    erlpy_pool:done(Meta, Index),
    D#data{served = Served + 1};
effect({python, Message}, D) ->
    enqueue(encode(Message, D), D);
effect({unalias, Ref}, D) ->
    unalias(Ref),
    D;
effect({input, Id, Value}, D) ->
    try encode([?OP_INPUT, Id, [Value]], D) of
        Message -> enqueue(Message, D)
    catch
        throw:{badarg, Reason} -> perform(erlpy_inflight:cancel(Id, {badarg, Reason}, D#data.table), D)
    end;
effect({grace, Id}, #data{meta = #{cancel_grace := Grace}} = D) ->
    action({{timeout, {grace, Id}}, Grace, Id}, D);
effect({stop_grace, Id}, D) ->
    action({{timeout, {grace, Id}}, cancel}, D);
effect({idle, Id, infinity}, D) ->
    action({{timeout, {idle, Id}}, cancel}, D);
effect({idle, Id, Ms}, D) ->
    action({{timeout, {idle, Id}}, Ms, Id}, D);
effect({gate, Owner, Id, Ref}, #data{owners = Owners} = D) ->
    D#data{owners = erlpy_owner:gate(Owner, Id, Ref, Owners)};
effect({ungate, Owner, Id}, #data{owners = Owners} = D) ->
    case erlpy_owner:ungate(Owner, Id, Owners) of
        {keep, Owners1} -> D#data{owners = Owners1};
        {cancel, Owners1} -> action({{timeout, {owner, Owner}}, cancel}, D#data{owners = Owners1})
    end;
effect({credit_due, Owner, Id, Ref}, #data{owners = Owners} = D) ->
    case erlpy_owner:want(Owner, Id, Ref, Owners) of
        {grant, Target, Owners1} ->
            D1 = D#data{owners = Owners1},
            perform(erlpy_inflight:grant(Id, Target, D1#data.table), D1);
        {hold, none, Owners1} ->
            D#data{owners = Owners1};
        {hold, Delay, Owners1} ->
            %% The owner's timer asks again for all its held streams.
            action({{timeout, {owner, Owner}}, Delay, Owner}, D#data{owners = Owners1})
    end;
effect({internal, Kind, {error, Error}}, D) ->
    D#data{start_error = {Kind, Error}};
effect({internal, _, _}, D) ->
    D;
effect({exec_ran, Index}, #data{execs = Execs} = D) ->
    D#data{execs = max(Index, Execs)}.

-spec action(gen_statem:action(), #data{}) -> #data{}.
action(Action, #data{actions = Actions} = D) ->
    D#data{actions = [Action | Actions]}.

-spec send_items(pid(), reference(), [term()]) -> ok.
send_items(Owner, Ref, [Item | Items]) ->
    Owner ! {py_stream, Ref, {data, Item}},
    send_items(Owner, Ref, Items);
send_items(_, _, []) ->
    ok.

%% @doc The owner's timer fired: ask again for each of its held streams.
-spec recheck_owner(pid(), #data{}) -> #data{}.
recheck_owner(Owner, #data{owners = Owners} = D) ->
    {Held, Owners1} = erlpy_owner:recheck(Owner, Owners),
    lists:foldl(fun(Id, Acc) -> effects(erlpy_inflight:credit(Id, Acc#data.table), Acc) end,
                D#data{owners = Owners1}, Held).

%% Every request in flight gets exactly one answer; Python's callbacks are killed.
-spec fail_all(term(), #data{}) -> #data{}.
fail_all(Error, D0) ->
    D = drop_handles(D0),
    D1 = perform(erlpy_inflight:fail_all(Error, D#data.table), D),
    maps:foreach(fun(_, Pid) -> exit(Pid, kill) end, D1#data.callbacks),
    D1#data{out = [], out_size = 0, callbacks = #{}}.

%% A request of the worker's own.
-spec internal(setup | init | exec, fun((id()) -> list()), #data{}) -> #data{}.
internal(Kind, Message, D) ->
    Id = erlang:unique_integer([positive]),
    enqueue(encode(Message(Id), D), D#data{table = erlpy_inflight:add_internal(Id, Kind, D#data.table)}).

-spec message(erlpy_frame:message(), #data{}) -> #data{}.
message([?OP_RESULT, Id, Value], #data{ref_calls = RefCalls} = D) when map_size(RefCalls) > 0 ->
    case maps:take(Id, RefCalls) of
        {Owner, RefCalls1} -> handle_made(Id, Owner, D#data{ref_calls = RefCalls1});
        error -> perform(erlpy_inflight:result(Id, {ok, Value}, D#data.table), D)
    end;
message([?OP_RESULT, Id, Value], D) ->
    perform(erlpy_inflight:result(Id, {ok, Value}, D#data.table), D);
message([?OP_DATA, Id, Items], D) ->
    perform(erlpy_inflight:data(Id, Items, D#data.table), D);
message([?OP_DONE, Id], D) ->
    perform(erlpy_inflight:result(Id, done, D#data.table), D);
message([Op, Id | _] = Message, #data{ref_calls = RefCalls} = D) when
    (Op =:= ?OP_ERROR orelse Op =:= ?OP_FAIL), is_map_key(Id, RefCalls)
->
    message(Message, D#data{ref_calls = maps:remove(Id, RefCalls)});
message([?OP_ERROR, Id, Type, Message, Traceback], D) ->
    perform(erlpy_inflight:result(Id, {error, {python, Type, Message, Traceback}}, D#data.table), D);
message([?OP_FAIL, Id, Reason], D) ->
    perform(erlpy_inflight:result(Id, {error, Reason}, D#data.table), D);
message([?OP_LOG, Level, Text], D) ->
    log(Level, Text, D);
message([?OP_CALLBACK, CallbackId, Name, Args], D) ->
    Pid = erlpy_functions:run_async(self(), CallbackId, Name, Args, D#data.none_atom),
    D#data{callbacks = (D#data.callbacks)#{CallbackId => Pid}};
message([?OP_CALLBACK_CANCEL, CallbackId], D) ->
    %% Nobody waits for this callback any more (its request was cancelled).
    case maps:take(CallbackId, D#data.callbacks) of
        {Pid, Callbacks} ->
            exit(Pid, kill),
            D#data{callbacks = Callbacks};
        error ->
            D
    end;
message([?OP_SEND, Dest, Term], D) ->
    try
        erlang:send(Dest, Term)
    catch
        error:badarg -> ?LOG_WARNING(#{what => bad_send_destination, destination => Dest})
    end,
    D;
message([?OP_BATCHED, Module, Function, MaxSize], D) ->
    %% A call reached an erlpy.batched function: the pool routes its calls to one worker.
    erlpy_pool:batched(D#data.meta, {Module, Function}, MaxSize),
    D;
message([?OP_FATAL, Detail], D) ->
    D#data{start_error = erlpy_frame:fatal_detail(Detail)};
message({undecodable, [?OP_CALLBACK, CallbackId | _], Reason}, D) ->
    %% Python waits for this answer: tell it why the call could not be made.
    enqueue(encode([?OP_REPLY, CallbackId, false, {badarg, Reason}], D), D);
message({undecodable, [Op, Id | _], Reason}, D) when
    Op =:= ?OP_RESULT; Op =:= ?OP_DATA; Op =:= ?OP_ERROR; Op =:= ?OP_FAIL
->
    perform(erlpy_inflight:undecodable(Id, Reason, D#data.table), D);
message(Message, D) ->
    ?LOG_ERROR(#{what => unexpected_message, pool => D#data.pool, message => Message}),
    D.

%% A call made with `return => ref' answered: Python keeps the object under the call's id.
%% It lives while its owner does, and only if its caller took the answer.
-spec handle_made(id(), pid(), #data{}) -> #data{}.
handle_made(Id, Owner, #data{pool = Pool, index = Index} = D) ->
    Handle = ?HANDLE(Pool, self(), Index, Id),
    {T, Effects} = erlpy_inflight:result(Id, {ok, Handle}, D#data.table),
    D1 = effects(Effects, D#data{table = T}),
    case [R || {reply, _, _} = R <- Effects] of
        [] ->
            release_in_python(Id, D1);
        _ ->
            Mon = erlang:monitor(process, Owner),
            D1#data{handles = (D1#data.handles)#{Id => Mon},
                    handle_monitors = (D1#data.handle_monitors)#{Mon => Id}}
    end.

%% Python decodes a frame whole, handles to objects included, before it acts on any of its
%% messages: a release ends its frame, so requests after it find the object gone.
-spec release_in_python(id(), #data{}) -> #data{}.
release_in_python(Id, D) ->
    flush(enqueue(encode([?OP_RELEASE, [Id]], D), D)).

%% @doc Release a handle (py:release/1); one this Python does not hold is ignored.
-spec release(id(), #data{}) -> #data{}.
release(Id, #data{handles = Handles} = D) ->
    case maps:take(Id, Handles) of
        {Mon, Handles1} ->
            erlang:demonitor(Mon, [flush]),
            D1 = D#data{handles = Handles1, handle_monitors = maps:remove(Mon, D#data.handle_monitors)},
            release_in_python(Id, D1);
        error ->
            D
    end.

%% @doc A `'DOWN'': the owner of a handle died (the handle is released), or one of the
%% table's monitors.
-spec down(reference(), #data{}) -> #data{}.
down(Mon, #data{handle_monitors = Monitors} = D) ->
    case maps:take(Mon, Monitors) of
        {Id, Monitors1} ->
            D1 = D#data{handles = maps:remove(Id, D#data.handles), handle_monitors = Monitors1},
            release_in_python(Id, D1);
        error ->
            perform(erlpy_inflight:down(Mon, D#data.table), D)
    end.

%% @doc Python is gone, and the objects it held with it.
-spec drop_handles(#data{}) -> #data{}.
drop_handles(#data{handle_monitors = Monitors} = D) ->
    maps:foreach(fun(Mon, _) -> erlang:demonitor(Mon, [flush]) end, Monitors),
    D#data{handles = #{}, handle_monitors = #{}, ref_calls = #{}}.

-spec log(term(), term(), #data{}) -> #data{}.
log(Level0, Text, D) ->
    Level =
        case lists:member(Level0, [debug, info, notice, warning, error, critical]) of
            true -> Level0;
            false -> info
        end,
    %% No `domain': OTP's default handler drops events of domains other than otp/sasl,
    %% and a print() in Python should show up where Erlang's own logs do.
    logger:log(Level, "~ts", [Text], #{pool => D#data.pool, worker => D#data.index,
                                       os_pid => python_pid(D)}),
    D.

%%====================================================================
%% Output: messages are queued and written as one frame once the mailbox is drained
%%====================================================================

-spec enqueue(iodata(), #data{}) -> #data{}.
enqueue(Message, #data{out = []} = D) ->
    self() ! '$erlpy_flush',
    D#data{out = [Message], out_size = iolist_size(Message)};
enqueue(Message, #data{out = Out, out_size = Size} = D) ->
    case Size + iolist_size(Message) of
        %% A frame holds under 4 GiB ({packet, 4}): write what is queued first.
        Total when Total > ?MAX_FRAME -> enqueue(Message, flush(D));
        Total -> D#data{out = [Message | Out], out_size = Total}
    end.

-spec flush(#data{}) -> #data{}.
flush(#data{out = []} = D) ->
    D;
flush(#data{port = undefined} = D) ->
    D#data{out = [], out_size = 0};
flush(#data{port = Port, out = Out} = D) ->
    try
        erlang:port_command(Port, lists:reverse(Out))
    catch
        %% Python just died and closed the port; its exit message is on the way.
        error:badarg -> ok
    end,
    D#data{out = [], out_size = 0}.

-spec encode(list(), #data{}) -> iodata().
encode(Message, #data{none_atom = NoneAtom}) ->
    erlpy_frame:encode(Message, NoneAtom).

%% @doc Python's process: its own once it said READY, else the port's (its supervisor's).
-spec python_pid(#data{}) -> non_neg_integer() | undefined.
python_pid(#data{python_pid = undefined, os_pid = OsPid}) -> OsPid;
python_pid(#data{python_pid = Pid}) -> Pid.

%% @doc The processes of this worker's Python, for erlpy_python to end.
-spec processes(#data{}) -> erlpy_python:processes().
processes(#data{os_pid = OsPid, python_pid = PythonPid, mark = Mark}) ->
    #{os_pid => OsPid, python_pid => PythonPid, mark => Mark}.

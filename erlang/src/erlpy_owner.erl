%% @private
%% @doc Flow control per owner: the streams without a window that one local process owns
%% on one worker share one credit budget and one look at the owner's mailbox.
%%
%% Items go straight into the owner's mailbox, so what bounds memory is the owner's
%% backlog: while it has more than ?OWNER_BACKLOG messages queued, its streams get no
%% more credit. Python runs at most `?STREAM_CREDIT' items ahead for all of an owner's
%% streams together (at least `?MIN_CREDIT' each), so an owner that never reads ends up
%% with about ?OWNER_BACKLOG + ?STREAM_CREDIT + K * ?MIN_CREDIT messages, whatever the
%% number K of its streams.
%%
%% One case needs a look inside the mailbox: an owner blocked in `receive' with a backlog
%% may be waiting for one particular stream (a process reading several streams in turn),
%% and holding that stream back would deadlock it. The look finds which of its streams
%% have items queued; the others may go on. It is taken only when the owner is blocked,
%% and again only once the owner has run since (its reductions or queue length changed):
%% an owner that does not read is looked at once, then costs nothing.
-module(erlpy_owner).

-include("erlpy_protocol.hrl").

-export([new/0, add/3, remove/2, is_empty/1, target/1, check/3]).
-export([hold/2, take_held/1, timer/1, set_timer/2, backoff/2]).
-export([gate/4, ungate/3, want/4, recheck/2]).
-export_type([owner/0, owners/0, verdict/0]).

-type id() :: pos_integer().
-type verdict() :: open | busy | stalled.

-record(owner, {
    %% The owner's gated streams on this worker, by request id.
    streams = #{} :: #{id() => reference()},
    %% Streams that wanted credit while the owner was behind.
    held = #{} :: #{id() => true},
    %% A recheck is scheduled (the worker's gen_statem timeout {owner, Pid}).
    timer = false :: boolean(),
    backoff = 5 :: pos_integer(),
    %% {message_queue_len, reductions} when the mailbox was last looked into, and the
    %% streams whose items were in it then.
    seen :: {non_neg_integer(), non_neg_integer()} | undefined,
    queued = #{} :: #{reference() => true}
}).

-opaque owner() :: #owner{}.
%% The owners of a worker's streams paced this way, by pid.
-type owners() :: #{pid() => owner()}.

-define(MAX_BACKOFF, 1000).

-spec new() -> owner().
new() -> #owner{}.

-spec add(id(), reference(), owner()) -> owner().
add(Id, Ref, #owner{streams = Streams} = O) ->
    O#owner{streams = Streams#{Id => Ref}}.

-spec remove(id(), owner()) -> owner().
remove(Id, #owner{streams = Streams, held = Held} = O) ->
    O#owner{streams = maps:remove(Id, Streams), held = maps:remove(Id, Held)}.

-spec is_empty(owner()) -> boolean().
is_empty(#owner{streams = Streams}) -> map_size(Streams) =:= 0.

%% @doc How far Python may run ahead on each of the owner's streams.
-spec target(owner()) -> pos_integer().
target(#owner{streams = Streams}) ->
    max(?MIN_CREDIT, ?STREAM_CREDIT div max(1, map_size(Streams))).

%% @doc May stream `Ref' of owner `Pid' get credit now? `busy': the owner works through a
%% backlog (ask again soon); `stalled': it is blocked with this stream's items unread
%% (ask again later and later).
-spec check(pid(), reference(), owner()) -> {verdict(), owner()}.
check(Pid, Ref, O) ->
    case erlang:process_info(Pid, [message_queue_len, status, reductions]) of
        [{message_queue_len, Len}, _, _] when Len =< ?OWNER_BACKLOG ->
            {open, O#owner{backoff = 5}};
        [{message_queue_len, Len}, {status, waiting}, {reductions, Reds}] ->
            O1 = look(Pid, {Len, Reds}, O),
            case O1#owner.queued of
                #{Ref := _} -> {stalled, O1};
                #{} -> {open, O1}
            end;
        [_, _, _] ->
            {busy, O#owner{backoff = 5}};
        undefined ->
            %% Gone: its 'DOWN' is on the way and ends the stream.
            {open, O}
    end.

-spec look(pid(), {non_neg_integer(), non_neg_integer()}, owner()) -> owner().
look(_, Seen, #owner{seen = Seen} = O) ->
    O;
look(Pid, _, #owner{streams = Streams} = O) ->
    Refs = maps:from_list([{Ref, true} || Ref <- maps:values(Streams)]),
    case erlang:process_info(Pid, messages) of
        {messages, Messages} ->
            %% Reading the mailbox counts as work of the owner's: note its reductions
            %% after, or the next check would take that for the owner having run.
            case erlang:process_info(Pid, [message_queue_len, reductions]) of
                [{message_queue_len, Len}, {reductions, Reds}] ->
                    O#owner{seen = {Len, Reds}, queued = queued(Messages, Refs, #{})};
                undefined ->
                    O#owner{seen = undefined, queued = #{}}
            end;
        undefined ->
            O#owner{seen = undefined, queued = #{}}
    end.

-spec queued([term()], #{reference() => true}, Acc) -> Acc when Acc :: #{reference() => true}.
queued([{py_stream, Ref, {data, _}} | Rest], Refs, Acc) when is_map_key(Ref, Refs) ->
    queued(Rest, Refs, Acc#{Ref => true});
queued([_ | Rest], Refs, Acc) ->
    queued(Rest, Refs, Acc);
queued([], _, Acc) ->
    Acc.

-spec hold(id(), owner()) -> owner().
hold(Id, #owner{held = Held} = O) -> O#owner{held = Held#{Id => true}}.

%% @doc The held streams, to ask again for each.
-spec take_held(owner()) -> {[id()], owner()}.
take_held(#owner{held = Held} = O) -> {maps:keys(Held), O#owner{held = #{}}}.

-spec timer(owner()) -> boolean().
timer(#owner{timer = Timer}) -> Timer.

-spec set_timer(boolean(), owner()) -> owner().
set_timer(Timer, O) -> O#owner{timer = Timer}.

%% @doc Milliseconds until the next look, for a verdict that held a stream back: soon for
%% a busy owner, later and later for a stalled one.
-spec backoff(busy | stalled, owner()) -> {pos_integer(), owner()}.
backoff(busy, O) -> {5, O#owner{backoff = 5}};
backoff(stalled, #owner{backoff = B} = O) -> {B, O#owner{backoff = min(2 * B, ?MAX_BACKOFF)}}.

%%====================================================================
%% The owners of one worker (erlpy_worker keeps the map; the timer is its gen_statem
%% timeout {owner, Pid})
%%====================================================================

%% @doc Stream `Id' of owner `Pid' is paced with the owner's other streams.
-spec gate(pid(), id(), reference(), owners()) -> owners().
gate(Pid, Id, Ref, Owners) ->
    Owners#{Pid => add(Id, Ref, maps:get(Pid, Owners, new()))}.

%% @doc Stream `Id' ended. `cancel': that was the owner's last, stop its timer.
-spec ungate(pid(), id(), owners()) -> {keep | cancel, owners()}.
ungate(Pid, Id, Owners) ->
    case Owners of
        #{Pid := O} ->
            O1 = remove(Id, O),
            case is_empty(O1) of
                true when O1#owner.timer -> {cancel, maps:remove(Pid, Owners)};
                true -> {keep, maps:remove(Pid, Owners)};
                false -> {keep, Owners#{Pid := O1}}
            end;
        #{} ->
            {keep, Owners}
    end.

%% @doc Stream `Id' has credit due: grant it up to `Target', or hold it and look again
%% after `Delay' ms (`none': the owner's timer runs already and stays as it is).
-spec want(pid(), id(), reference(), owners()) ->
    {grant, pos_integer(), owners()} | {hold, pos_integer() | none, owners()}.
want(Pid, Id, Ref, Owners) ->
    #{Pid := O} = Owners,
    case check(Pid, Ref, O) of
        {open, O1} ->
            {grant, target(O1), Owners#{Pid := O1}};
        {stalled, #owner{timer = true} = O1} ->
            {hold, none, Owners#{Pid := hold(Id, O1)}};
        {Why, O1} ->
            %% No timer yet; or a stalled owner started running: look again soon, not
            %% after a long backoff.
            {Delay, O2} = backoff(Why, hold(Id, O1)),
            {hold, Delay, Owners#{Pid := O2#owner{timer = true}}}
    end.

%% @doc The owner's timer fired: the held streams, to ask again for each.
-spec recheck(pid(), owners()) -> {[id()], owners()}.
recheck(Pid, Owners) ->
    case Owners of
        #{Pid := O} ->
            {Held, O1} = take_held(O#owner{timer = false}),
            {Held, Owners#{Pid := O1}};
        #{} ->
            {[], Owners}
    end.

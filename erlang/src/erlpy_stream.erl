%% @private
%% @doc The state of one stream inside its worker: delivery to the owner, the owner's
%% window, and the credit that keeps Python a bounded number of items ahead.
%%
%% Pure functions; the worker owns the records and does the sending they ask for.
-module(erlpy_stream).

-include("erlpy_protocol.hrl").

-export([new/4, deliver/2, ack/2, credit_due/1, take_credit/1, take_credit/2, finish/2,
         terminal/1, owner/1, ref/1, windowed/1]).
-export([python_done/1, owner_backlogged/2, initial_credit/1]).
-export_type([stream/0, owner/0]).

-record(stream, {
    ref :: reference(),
    owner :: owner(),
    %% Python-side credit: items Python could send since it last heard from us (0: no
    %% limit, for streams collected whole). Python has `credit - owed' left.
    credit :: non_neg_integer(),
    %% Items received from Python and not yet credited back.
    owed = 0 :: non_neg_integer(),
    %% Remaining owner grants (window mode), or infinity.
    granted :: non_neg_integer() | infinity,
    %% Items held back until the owner grants more (window mode only).
    held = queue:new() :: queue:queue(term()),
    %% The terminal message, once Python has ended the stream but items are still held.
    final = undefined :: undefined | done | {error, term()}
}).

-opaque stream() :: #stream{}.
%% {collect, Alias}: a stream collected whole (py:stream, py:stream_eval). Python sends its
%% items as packed chunks, which go to the caller as they are: the caller decodes them
%% into its own heap, so the list is never built here and copied over.
-type owner() :: pid() | {collect, reference()}.

%% @doc The credit Python starts a stream with: the owner's window, if it has one. Without
%% one, a little: the first grant brings the stream up to its share of its owner's budget
%% (erlpy_owner), known only once the worker has seen the owner's other streams.
-spec initial_credit(pos_integer() | infinity) -> pos_integer().
initial_credit(infinity) -> ?START_CREDIT;
initial_credit(Window) -> Window.

%% @doc Does the owner set the pace with a window (stream_ack)?
-spec windowed(stream()) -> boolean().
windowed(#stream{granted = Granted}) -> Granted =/= infinity.

%% @doc A stream for `Owner'. `Window' is the owner's window (`infinity' when none).
-spec new(reference(), owner(), pos_integer() | infinity, non_neg_integer()) -> stream().
new(Ref, Owner, Window, Credit) ->
    #stream{ref = Ref, owner = Owner, credit = Credit, granted = Window}.

-spec ref(stream()) -> reference().
ref(#stream{ref = Ref}) -> Ref.

-spec owner(stream()) -> owner().
owner(#stream{owner = Owner}) -> Owner.

%% @doc Items arrived from Python: send what the window allows, hold the rest. A
%% collected stream's items come as one packed chunk (a binary).
-spec deliver([term()] | binary(), stream()) -> stream().
deliver(Chunk, #stream{owner = {collect, Alias}} = S) when is_binary(Chunk) ->
    Alias ! {Alias, {chunk, Chunk}},
    S;
deliver(Items, #stream{granted = infinity, owner = Owner, ref = Ref} = S) ->
    N = send_all(Owner, Ref, Items, 0),
    S#stream{owed = S#stream.owed + N};
deliver(Items, #stream{held = Held} = S) ->
    release(S#stream{held = queue:join(Held, queue:from_list(Items))}).

%% @doc The owner granted `N' more items.
-spec ack(pos_integer(), stream()) -> stream().
ack(_, #stream{granted = infinity} = S) -> S;
ack(N, #stream{granted = G} = S) -> release(S#stream{granted = G + N}).

-spec release(stream()) -> stream().
release(#stream{granted = 0} = S) ->
    S;
release(#stream{held = Held, granted = G, owner = Owner, ref = Ref, owed = Owed} = S) ->
    case queue:out(Held) of
        {{value, Item}, Rest} ->
            Owner ! {py_stream, Ref, {data, Item}},
            release(S#stream{held = Rest, granted = G - 1, owed = Owed + 1});
        {empty, _} ->
            S
    end.

-spec send_all(pid(), reference(), [term()], non_neg_integer()) -> non_neg_integer().
send_all(Owner, Ref, [Item | Items], N) ->
    Owner ! {py_stream, Ref, {data, Item}},
    send_all(Owner, Ref, Items, N + 1);
send_all(_, _, [], N) ->
    N.

%% @doc Is it time to give credit back: a good part of it used (never for a stream
%% collected whole)?
-spec credit_due(stream()) -> boolean().
credit_due(#stream{credit = 0}) -> false;
credit_due(#stream{owed = Owed, credit = Credit}) -> Owed * 2 >= Credit orelse Owed >= 512.

%% @doc Credit to give back to Python now, keeping the stream's limit as it is.
-spec take_credit(stream()) -> {non_neg_integer(), stream()}.
take_credit(#stream{credit = Credit} = S) ->
    take_credit(Credit, S).

%% @doc Credit to give back so that Python may run `Target' items ahead again (or less,
%% when the target went down: then Python first uses up what it has).
-spec take_credit(pos_integer(), stream()) -> {non_neg_integer(), stream()}.
take_credit(Target, #stream{owed = Owed, credit = Credit} = S) ->
    case credit_due(S) of
        false ->
            {0, S};
        true ->
            Left = Credit - Owed,
            Grant = max(0, Target - Left),
            {Grant, S#stream{credit = Left + Grant, owed = 0}}
    end.

%% @doc Is a (local) owner too far behind with its mailbox to be sent more of stream `Ref'?
%% `busy': it is working through the backlog; `stalled': it leaves this stream's items
%% unread.
-spec owner_backlogged(pid(), reference()) -> false | busy | stalled.
owner_backlogged(Owner, Ref) ->
    case erlang:process_info(Owner, [message_queue_len, status]) of
        [{message_queue_len, Len}, {status, waiting}] when Len > ?OWNER_BACKLOG ->
            %% Blocked in a receive that none of its messages match: it may be waiting for
            %% this very stream (one owner reading several streams one after the other).
            %% Holding back would deadlock it, unless this stream's items are among them.
            has_items(Owner, Ref) andalso stalled;
        [{message_queue_len, Len}, _] when Len > ?OWNER_BACKLOG ->
            busy;
        _ ->
            false
    end.

%% Copies the owner's mailbox: only used when the owner is stalled with a backlog, and the
%% caller backs off between checks.
-spec has_items(pid(), reference()) -> boolean().
has_items(Owner, Ref) ->
    case erlang:process_info(Owner, messages) of
        {messages, Messages} -> lists:any(fun(M) -> is_item(M, Ref) end, Messages);
        undefined -> true
    end.

-spec is_item(term(), reference()) -> boolean().
is_item({py_stream, Ref, {data, _}}, Ref) -> true;
is_item(_, _) -> false.

%% @doc Python ended the stream. Returns the terminal message to send now, or `held' when
%% held items must reach the owner first.
-spec finish(done | {error, term()}, stream()) -> {send, done | {error, term()}} | {held, stream()}.
finish(Final, #stream{held = Held} = S) ->
    case queue:is_empty(Held) of
        true -> {send, Final};
        false -> {held, S#stream{final = Final}}
    end.

%% @doc Python has ended the stream; only held items (window mode) keep it alive.
-spec python_done(stream()) -> boolean().
python_done(#stream{final = Final}) -> Final =/= undefined.

%% @doc The terminal message that became sendable after an ack released the held items.
-spec terminal(stream()) -> undefined | done | {error, term()}.
terminal(#stream{final = undefined}) -> undefined;
terminal(#stream{final = Final, held = Held}) ->
    case queue:is_empty(Held) of
        true -> Final;
        false -> undefined
    end.

%% @private
%% @doc The state of one stream inside its worker: delivery to the owner, the owner's
%% window, and the credit that keeps Python a bounded number of items ahead.
%%
%% Pure functions; the worker owns the records and does the sending they ask for.
-module(erlpy_stream).

-include("erlpy_protocol.hrl").

-export([new/4, deliver/2, ack/2, take_credit/1, finish/2, terminal/1, owner/1, ref/1]).
-export([python_done/1, owner_backlogged/2, initial_credit/1]).
-export_type([stream/0, owner/0]).

-record(stream, {
    ref :: reference(),
    owner :: owner(),
    %% Python-side credit: items Python may send before it hears from us again (0: no
    %% limit, for streams collected whole).
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

%% A local owner with more messages than this in its mailbox gets no more items until it
%% catches up (streams without a window; with a window the owner sets the pace itself).
-define(OWNER_BACKLOG, 8000).

%% @doc The credit Python starts a stream with: the owner's window, if it has one.
-spec initial_credit(pos_integer() | infinity) -> pos_integer().
initial_credit(infinity) -> ?STREAM_CREDIT;
initial_credit(Window) -> Window.

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

%% @doc Credit to give back to Python now: none until a good part of the credit is used;
%% `{wait, busy}' while a local owner without a window works through a backlog (ask again
%% soon), `{wait, stalled}' when it has this stream's items unread and does not read (ask
%% again later and later): a slow owner slows the generator down instead of growing its
%% mailbox.
-spec take_credit(stream()) -> {non_neg_integer() | {wait, busy | stalled}, stream()}.
take_credit(#stream{credit = 0} = S) ->
    {0, S};
take_credit(#stream{owed = Owed, credit = Credit} = S) when Owed * 2 < Credit, Owed < 512 ->
    {0, S};
take_credit(#stream{owed = Owed, granted = infinity, owner = Owner, ref = Ref} = S) when
    is_pid(Owner)
->
    case node(Owner) =:= node() andalso owner_backlogged(Owner, Ref) of
        false -> {Owed, S#stream{owed = 0}};
        Why -> {{wait, Why}, S}
    end;
take_credit(#stream{owed = Owed} = S) ->
    {Owed, S#stream{owed = 0}}.

%% @doc Python ended the stream. Returns the terminal message to send now, or `held' when
%% held items must reach the owner first.
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

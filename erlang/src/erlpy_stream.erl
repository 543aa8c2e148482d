%% @private
%% @doc The state of one stream inside its worker: delivery to the owner, the owner's
%% window, and the credit that keeps Python a bounded number of items ahead.
%%
%% Pure functions: they say what to send (the items for the owner now), and the worker
%% sends it (erlpy_inflight returns it as an effect, erlpy_worker_io sends it).
-module(erlpy_stream).

-include("erlpy_protocol.hrl").

-export([new/4, deliver/2, ack/2, credit_due/1, take_credit/1, take_credit/2, finish/2,
         terminal/1, owner/1, ref/1, windowed/1]).
-export([python_done/1, initial_credit/1]).
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

%% @doc Items arrived from Python: returns what goes to the owner now (the window allows
%% it; the rest is held). A collected stream's items come as one packed chunk (a binary),
%% which goes to the caller as it is.
-spec deliver([term()] | binary(), stream()) -> {[term()] | binary(), stream()}.
deliver(Chunk, #stream{owner = {collect, _}} = S) when is_binary(Chunk) ->
    {Chunk, S};
deliver(Items, #stream{granted = infinity, owed = Owed} = S) ->
    {Items, S#stream{owed = Owed + length(Items)}};
deliver(Items, #stream{held = Held} = S) ->
    release(S#stream{held = queue:join(Held, queue:from_list(Items))}).

%% @doc The owner granted `N' more items: returns the held items it may have now.
-spec ack(pos_integer(), stream()) -> {[term()], stream()}.
ack(_, #stream{granted = infinity} = S) -> {[], S};
ack(N, #stream{granted = G} = S) -> release(S#stream{granted = G + N}).

-spec release(stream()) -> {[term()], stream()}.
release(#stream{granted = 0} = S) ->
    {[], S};
release(#stream{held = Held, granted = G, owed = Owed} = S) ->
    N = min(G, queue:len(Held)),
    {Out, Rest} = queue:split(N, Held),
    {queue:to_list(Out), S#stream{held = Rest, granted = G - N, owed = Owed + N}}.

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

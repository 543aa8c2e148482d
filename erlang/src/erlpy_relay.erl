%% @private
%% @doc The owner's side of a stream served by a pool on another node.
%%
%% Items travel worker -> relay -> owner, all under the stream's reference. The relay
%% gives the guarantees the worker alone cannot give across nodes: when the worker's node
%% goes down the owner still gets exactly one terminal message, and when the owner dies
%% the stream is cancelled. Unless the owner chose a window, the relay holds one of its
%% own and grants more as the owner keeps up with its mailbox, so memory stays bounded on
%% the owner's node too.
%%
%% The relays of one owner on this node share one budget, as the streams of one local
%% owner do (erlpy_owner): a relay keeps at most its share, ?STREAM_CREDIT divided by the
%% owner's relays (at least ?MIN_CREDIT), granted and not yet arrived. An owner that
%% never reads its K remote streams gets about ?STREAM_CREDIT * (1 + ln K) + K *
%% ?MIN_CREDIT items: a relay's first grant is its share when it starts, and a grant is
%% never taken back.
-module(erlpy_relay).

-include("erlpy_protocol.hrl").

-export([start/3, new_table/0]).

%% The relays on this node, counted by owner: {Owner, Count}.
-define(OWNERS, erlpy_relay_owners).

-record(relay, {
    ref :: reference(),
    owner :: pid(),
    node :: node(),
    %% Items granted and not yet arrived, and the share they were last topped up to (only
    %% when the relay holds the window).
    outstanding = 0 :: non_neg_integer(),
    share = 0 :: non_neg_integer(),
    window :: own | user,
    backoff = 5 :: pos_integer(),
    rechecking = false :: boolean()
}).

%% @doc The table of relays by owner, owned by the caller (erlpy_sup, for the life of
%% the application).
-spec new_table() -> ok.
new_table() ->
    ?OWNERS = ets:new(?OWNERS, [named_table, public, set, {write_concurrency, true}]),
    ok.

%% @doc Start `py:stream_start(Module, Function, Args, Opts)' on `Node' for the owner in
%% `Opts' (best a process of this node: the relay watches its mailbox); returns what the
%% remote stream_start returns.
-spec start(node(), [term()], map()) -> {ok, reference()} | {error, term()}.
start(Node, MFA, Opts) ->
    case is_alive() of
        true -> start_relay(Node, MFA, Opts);
        false -> {error, {nodedown, Node}}  % as a call answers on a VM that is not distributed
    end.

-spec start_relay(node(), [term()], map()) -> {ok, reference()} | {error, term()}.
start_relay(Node, [Module, Function, Args], #{owner := _} = Opts) ->
    Caller = self(),
    {Relay, Mon} = spawn_monitor(fun() -> init(Caller, Node, [Module, Function, Args], Opts) end),
    receive
        {Relay, Reply} ->
            erlang:demonitor(Mon, [flush]),
            Reply;
        {'DOWN', Mon, process, Relay, Reason} ->
            {error, {relay_failed, Reason}}
    end.

-spec init(pid(), node(), [term()], map()) -> ok.
init(Caller, Node, MFA, #{owner := Owner} = Opts) ->
    case maps:is_key(window, Opts) of
        true ->
            run(Caller, Node, MFA, Opts, user, 0);
        false ->
            Share = join(Owner),
            try
                run(Caller, Node, MFA, Opts#{window => Share}, own, Share)
            after
                leave(Owner)
            end
    end.

-spec run(pid(), node(), [term()], map(), own | user, non_neg_integer()) -> ok.
run(Caller, Node, [Module, Function, Args], #{owner := Owner} = Opts, Window, Granted) ->
    erlang:monitor(process, Owner),
    erlang:monitor_node(Node, true),
    Remote = Opts#{owner => self()},
    Timeout =
        case maps:get(timeout, Opts) of
            infinity -> infinity;
            T -> T + 5000
        end,
    try erpc:call(Node, py, stream_start, [Module, Function, Args, Remote], Timeout) of
        {ok, Ref} ->
            Caller ! {self(), {ok, Ref}},
            loop(#relay{ref = Ref, owner = Owner, node = Node, window = Window,
                        outstanding = Granted, share = Granted});
        Error ->
            Caller ! {self(), Error}
    catch
        error:{erpc, noconnection} -> Caller ! {self(), {error, {nodedown, Node}}};
        error:{erpc, timeout} -> Caller ! {self(), {error, timeout}};
        error:{exception, Reason, _} -> Caller ! {self(), {error, {remote_failed, Reason}}}
    end,
    ok.

%% This relay counts among its owner's; returns its share of the owner's budget.
-spec join(pid()) -> pos_integer().
join(Owner) ->
    try ets:update_counter(?OWNERS, Owner, 1, {Owner, 0}) of
        Relays -> share(Relays)
    catch
        error:badarg -> ?STREAM_CREDIT  % erlpy's table is not there: a relay on its own
    end.

-spec leave(pid()) -> ok.
leave(Owner) ->
    try ets:update_counter(?OWNERS, Owner, -1) of
        0 -> true = ets:delete_object(?OWNERS, {Owner, 0}), ok;
        _ -> ok
    catch
        error:badarg -> ok
    end.

%% The share of one of the owner's relays now.
-spec share_now(pid()) -> pos_integer().
share_now(Owner) ->
    try ets:lookup_element(?OWNERS, Owner, 2) of
        Relays -> share(Relays)
    catch
        error:badarg -> ?STREAM_CREDIT
    end.

-spec share(integer()) -> pos_integer().
share(Relays) ->
    max(?MIN_CREDIT, ?STREAM_CREDIT div max(1, Relays)).

-spec loop(#relay{}) -> ok.
loop(#relay{ref = Ref, owner = Owner, node = Node} = R) ->
    receive
        {py_stream, Ref, {data, _} = Data} ->
            Owner ! {py_stream, Ref, Data},
            loop(maybe_ack(R#relay{outstanding = max(0, R#relay.outstanding - 1)}));
        {py_stream, Ref, Terminal} ->
            Owner ! {py_stream, Ref, Terminal},
            ok;
        recheck ->
            loop(maybe_ack(R#relay{rechecking = false}));
        {'DOWN', _, process, Owner, _} ->
            py:stream_cancel(Ref),
            ok;
        {nodedown, Node} ->
            Owner ! {py_stream, Ref, {error, {worker_exited, {nodedown, Node}}}},
            ok
    end.

%% Grant more once half of the relay's share has arrived, while the owner keeps up (the
%% worker applies the same rule to local owners, see erlpy_stream:take_credit/2). The
%% owner's relays are counted again only then, not for every item.
-spec maybe_ack(#relay{}) -> #relay{}.
maybe_ack(#relay{window = user} = R) ->
    R;
maybe_ack(#relay{outstanding = Outstanding, share = Share} = R) when Outstanding * 2 > Share ->
    R;
maybe_ack(#relay{owner = Owner, outstanding = Outstanding} = R) ->
    Share = share_now(Owner),
    case Outstanding * 2 > Share of
        true -> R#relay{share = Share};
        false -> grant(Share - Outstanding, R#relay{share = Share})
    end.

-spec grant(pos_integer(), #relay{}) -> #relay{}.
grant(N, #relay{ref = Ref, owner = Owner, outstanding = Outstanding} = R) when node(Owner) =/= node() ->
    %% erlpy is not loaded on the owner's node: its mailbox cannot be watched from here.
    ok = py:stream_ack(Ref, N),
    R#relay{outstanding = Outstanding + N};
grant(N, #relay{ref = Ref, owner = Owner, outstanding = Outstanding, backoff = Backoff} = R) ->
    case owner_backlogged(Owner, Ref) of
        false ->
            ok = py:stream_ack(Ref, N),
            R#relay{outstanding = Outstanding + N, backoff = 5};
        _ when R#relay.rechecking ->
            R;
        busy ->
            erlang:send_after(5, self(), recheck),
            R#relay{rechecking = true, backoff = 5};
        stalled ->
            erlang:send_after(Backoff, self(), recheck),
            R#relay{rechecking = true, backoff = min(2 * Backoff, 200)}
    end.

%% Is a (local) owner too far behind with its mailbox to be sent more of stream `Ref'?
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

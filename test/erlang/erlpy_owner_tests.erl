%% Flow control per owner (erlpy_owner) and the credit arithmetic of erlpy_stream, with
%% real owner processes whose mailboxes the tests fill.
-module(erlpy_owner_tests).

-include_lib("eunit/include/eunit.hrl").
-include("erlpy_protocol.hrl").

%% Python never runs more than `Target' items ahead, and a lower target is reached by
%% letting Python use up what it has, never by a negative grant.
credit_follows_target_test() ->
    S0 = erlpy_stream:new(make_ref(), self(), infinity, 32),
    ?assertNot(erlpy_stream:credit_due(S0)),
    {Sent, S1} = erlpy_stream:deliver(lists:seq(1, 16), S0),
    %% Pure: the items to send are returned, nothing is sent.
    ?assertEqual(lists:seq(1, 16), Sent),
    ?assert(erlpy_stream:credit_due(S1)),
    %% 16 left with Python; target 8192: it may run 8192 ahead again.
    {8176, S2} = erlpy_stream:take_credit(8192, S1),
    %% 4096 left; the owner now has many streams and the target is 100: nothing more.
    {0, S3} = erlpy_stream:take_credit(100, element(2, erlpy_stream:deliver(lists:seq(1, 4096), S2))),
    %% Python uses up all but 46: topped up to 100.
    {_, S4} = erlpy_stream:deliver(lists:seq(1, 4050), S3),
    ?assertMatch({54, _}, erlpy_stream:take_credit(100, S4)),
    %% A window stream keeps its own limit.
    {[a, b, c], W} = erlpy_stream:deliver([a, b, c], erlpy_stream:new(make_ref(), self(), 4, 4)),
    {[], W1} = erlpy_stream:ack(3, W),
    ?assertMatch({3, _}, erlpy_stream:take_credit(W1)),
    flush().

target_shares_budget_test() ->
    O1 = erlpy_owner:add(1, make_ref(), erlpy_owner:new()),
    ?assertEqual(8192, erlpy_owner:target(O1)),
    O2 = lists:foldl(fun(I, O) -> erlpy_owner:add(I, make_ref(), O) end, O1, lists:seq(2, 4)),
    ?assertEqual(2048, erlpy_owner:target(O2)),
    O1000 = lists:foldl(fun(I, O) -> erlpy_owner:add(I, make_ref(), O) end, O1, lists:seq(2, 1000)),
    ?assertEqual(32, erlpy_owner:target(O1000)),
    ?assert(erlpy_owner:is_empty(lists:foldl(fun erlpy_owner:remove/2, O2, [1, 2, 3, 4]))).

%% An owner with few messages may always have more.
open_when_not_behind_test() ->
    Owner = sleeper(),
    Ref = make_ref(),
    O = erlpy_owner:add(1, Ref, erlpy_owner:new()),
    ?assertMatch({open, _}, erlpy_owner:check(Owner, Ref, O)),
    stop(Owner).

%% Blocked with this stream's items unread: stalled; the stream it may be waiting for
%% (none of its items queued): open.
blocked_owner_test() ->
    Owner = sleeper(),
    [A, B] = [make_ref(), make_ref()],
    O = erlpy_owner:add(2, B, erlpy_owner:add(1, A, erlpy_owner:new())),
    [Owner ! {py_stream, A, {data, I}} || I <- lists:seq(1, 9000)],
    wait_waiting(Owner),
    {stalled, O1} = erlpy_owner:check(Owner, A, O),
    ?assertMatch({open, _}, erlpy_owner:check(Owner, B, O1)),
    stop(Owner).

%% An owner that does not read is looked into once: while it neither runs nor gets
%% messages, later checks reuse what the first look found (a mailbox of unrelated
%% messages, refilled behind our back, is not seen: proof that no second look was taken).
one_look_while_owner_unchanged_test() ->
    Owner = sleeper(),
    A = make_ref(),
    O = erlpy_owner:add(1, A, erlpy_owner:new()),
    [Owner ! {unrelated, I} || I <- lists:seq(1, 9000)],
    wait_waiting(Owner),
    {open, O1} = erlpy_owner:check(Owner, A, O),
    %% Now make A's items the owner's whole mailbox, same length, without running it.
    {reductions, R} = process_info(Owner, reductions),
    {message_queue_len, L} = process_info(Owner, message_queue_len),
    ?assertEqual({open, O1}, erlpy_owner:check(Owner, A, O1)),
    [Owner ! {py_stream, A, {data, I}} || I <- lists:seq(1, 10)],
    wait_waiting(Owner),
    ?assertNotEqual({R, L}, {element(2, process_info(Owner, reductions)),
                             element(2, process_info(Owner, message_queue_len))}),
    %% It changed: looked at again, and A's items are there now.
    ?assertMatch({stalled, _}, erlpy_owner:check(Owner, A, O1)),
    stop(Owner).

%% Busy (running, not blocked in receive) with a backlog: wait a little, whoever's items
%% they are, and without looking into the mailbox.
busy_owner_test() ->
    A = make_ref(),
    Owner = spawn(fun Spin() -> Spin() end),
    [Owner ! {py_stream, A, {data, I}} || I <- lists:seq(1, 9000)],
    O = erlpy_owner:add(1, A, erlpy_owner:new()),
    ?assertMatch({busy, _}, erlpy_owner:check(Owner, A, O)),
    exit(Owner, kill).

backoff_test() ->
    O = erlpy_owner:new(),
    {5, O1} = erlpy_owner:backoff(stalled, O),
    {10, O2} = erlpy_owner:backoff(stalled, O1),
    {5, O3} = erlpy_owner:backoff(busy, O2),
    Delays = element(1, lists:foldl(fun(_, {Ds, Acc}) ->
                                            {D, Acc1} = erlpy_owner:backoff(stalled, Acc),
                                            {[D | Ds], Acc1}
                                    end, {[], O3}, lists:seq(1, 12))),
    ?assertEqual(1000, hd(Delays)),
    ?assert(lists:max(Delays) =< 1000).

sleeper() ->
    spawn(fun() -> receive stop -> ok end end).

stop(Pid) ->
    exit(Pid, kill).

wait_waiting(Pid) ->
    case process_info(Pid, status) of
        {status, waiting} -> ok;
        _ -> timer:sleep(1), wait_waiting(Pid)
    end.

flush() ->
    receive _ -> flush() after 0 -> ok end.

%% An owner on another node has no backlog this worker can watch: without a window its
%% stream gets the whole budget at its first grant (it stayed at the start credit).
remote_owner_gets_the_whole_budget_test() ->
    Here = atom_to_binary(node()),
    Elsewhere = <<"x", (binary:part(Here, 1, byte_size(Here) - 1))/binary>>,
    Remote = binary_to_term(binary:replace(term_to_binary(self()), Here, Elsewhere)),
    ?assertNotEqual(node(), node(Remote)),
    {T, _} = erlpy_inflight:add_stream(1, make_ref(), make_ref(), make_ref(), #{owner => Remote},
                                       erlpy_inflight:new()),
    {_, Effects} = erlpy_inflight:data(1, lists:seq(1, ?START_CREDIT div 2), T),
    ?assert(lists:member({python, [?OP_CREDIT, 1, ?STREAM_CREDIT - ?START_CREDIT div 2]}, Effects)).

%% @private
%% @doc The worker's side of the wire: messages for Python encoded, frames from Python
%% split into messages and decoded, FATAL details made safe. Pure.
%%
%% A frame (`{packet, 4}') holds one or more msgpack messages back to back; each is a small
%% array `[Op, Id, ...]' (erlpy_protocol.hrl). A field that cannot be decoded (an atom over
%% the pool's budget, say) fails that one message, not the frame; a message that is not an
%% array of fields loses the protocol (`malformed').
-module(erlpy_frame).

-export([encode/2, next/3, fatal_detail/1, timeout_field/2]).
-export_type([message/0]).

%% A decoded message: its fields, or those decoded before one that could not be.
-type message() :: [term()] | {undecodable, [term()], term()}.

-spec encode(list(), atom()) -> iodata().
encode(Message, NoneAtom) ->
    erlpy_codec:message(Message, NoneAtom).

%% @doc The last field of a request: the milliseconds its caller has left, or nil for
%% `infinity' (Python's erlpy.time_left() and erlpy.deadline()).
-spec timeout_field(timeout(), atom()) -> non_neg_integer() | atom().
timeout_field(infinity, NoneAtom) -> NoneAtom;
timeout_field(Timeout, _) -> Timeout.

%% @doc The next message of a frame and the rest of it.
-spec next(binary(), atom(), erlpy_codec:new_atom_fun()) ->
    {message(), binary()} | malformed.
next(<<2#1001:4, N:4, Rest/binary>>, NoneAtom, NewAtom) when N > 0 ->
    fields(N, Rest, NoneAtom, NewAtom, []);
next(_, _, _) ->
    malformed.

-spec fields(non_neg_integer(), binary(), atom(), erlpy_codec:new_atom_fun(),
             list()) -> {message(), binary()} | malformed.
fields(0, Rest, _, _, Acc) ->
    {lists:reverse(Acc), Rest};
fields(N, Bin, NoneAtom, NewAtom, Acc) ->
    try erlpy_codec:decode(Bin, NoneAtom, NewAtom) of
        {Value, Rest} -> fields(N - 1, Rest, NoneAtom, NewAtom, [Value | Acc])
    catch
        throw:{badarg, Reason} ->
            try skip(N, Bin) of
                Rest -> {{undecodable, lists:reverse(Acc), Reason}, Rest}
            catch
                throw:_ -> malformed
            end
    end.

-spec skip(non_neg_integer(), binary()) -> binary().
skip(0, Bin) -> Bin;
skip(N, Bin) -> skip(N - 1, erlpy_codec:skip(Bin)).

%% @doc What _boot.py reports when Python cannot run erlpy. Only known keys and reasons
%% become atoms: whatever else arrives stays as it is, so this cannot be used to make atoms.
-spec fatal_detail(term()) -> map().
fatal_detail(Detail) when is_map(Detail) ->
    Known = #{<<"reason">> => reason, <<"missing_module">> => missing_module,
              <<"message">> => message, <<"python">> => python,
              <<"externally_managed">> => externally_managed},
    maps:fold(
        fun(K, V, Acc) ->
            case Known of
                #{K := reason} -> Acc#{reason => fatal_reason(V)};
                #{K := externally_managed} -> Acc#{externally_managed => V =:= <<"true">>};
                #{K := Key} -> Acc#{Key => V};
                #{} -> Acc
            end
        end,
        #{},
        Detail
    );
fatal_detail(Detail) ->
    #{reason => Detail}.

-spec fatal_reason(term()) -> term().
fatal_reason(<<"missing_module">>) -> missing_module;
fatal_reason(<<"python_too_old">>) -> python_too_old;
fatal_reason(Other) -> Other.

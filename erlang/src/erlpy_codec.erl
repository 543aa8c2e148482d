%% @doc msgpack codec for the wire between Erlang and the Python workers.
%%
%% Pure functions only. The mapping (docs/types.md, docs/internals.md):
%%
%%   integer in [-2^63, 2^64) -> msgpack int; larger -> ext 3 (sign byte + big-endian magnitude)
%%   float -> float64; NaN/+Inf/-Inf from Python decode to nan | infinity | neg_infinity
%%   binary -> str when valid UTF-8, else bin. Binaries of ?CHECK_LIMIT bytes or more
%%     go as ext 5 and Python decides, because it validates UTF-8 ~10x faster than we do.
%%   {bytes, Bin} -> bin
%%   true/false -> bool, the pool's none atom -> nil, other atoms -> ext 1 (UTF-8 name)
%%   list -> array, tuple -> ext 2 (payload: a msgpack array), map -> map
%%   pid/ref/port/fun, and map keys Python could not hash or would merge (1 and 1.0, a and
%%     <<"a">>) -> ext 4 (external term format)
%%
%% Decoding never creates atoms on its own: names that are not atoms yet are handed to the
%% caller's `NewAtom' fun, which enforces the pool's `max_atoms' budget.
-module(erlpy_codec).

-export([encode/2, message/2, decode/3, decode_items/4, skip/1]).
-export_type([new_atom_fun/0]).

-include("erlpy_protocol.hrl").

-define(EXT_ATOM, 1).
-define(EXT_TUPLE, 2).
-define(EXT_BIGINT, 3).
-define(EXT_TERM, 4).
-define(EXT_BINARY, 5).
-define(EXT_HANDLE, 6).

%% Binaries at least this long are sent as ext 5 (Python checks UTF-8).
-define(CHECK_LIMIT, 512).
%% Nesting Python's msgpack can unpack; deeper input is refused here with a clear error.
-define(MAX_DEPTH, 500).
%% Decoded binaries shorter than this are copied so they do not pin the whole frame.
-define(COPY_LIMIT, 256).

-type new_atom_fun() :: fun((binary()) -> atom()).

%%====================================================================
%% Encoding
%%====================================================================

%% @doc Encode a term. Throws `{badarg, Detail}' for a term Python cannot represent.
-spec encode(Term, NoneAtom) -> iodata() when Term :: term(), NoneAtom :: atom().
encode(Term, NoneAtom) ->
    enc(Term, NoneAtom, ?MAX_DEPTH).

%% @doc Encode one protocol message (a list of fields). Throws `{badarg, {too_large,
%% Bytes}}' when it would not fit in a frame: Python would never see it, and a port fed
%% more than {packet, 4} can carry closes.
-spec message(list(), atom()) -> iodata().
message(Fields, NoneAtom) ->
    Data = encode(Fields, NoneAtom),
    case iolist_size(Data) of
        Size when Size > ?MAX_FRAME -> throw({badarg, {too_large, Size}});
        _ -> Data
    end.

-spec enc(term(), atom(), non_neg_integer()) -> iodata().
enc(I, _, _) when is_integer(I) -> enc_int(I);
enc(B, _, _) when is_binary(B) -> enc_binary(B);
enc(true, _, _) -> <<16#c3>>;
enc(false, _, _) -> <<16#c2>>;
enc(N, N, _) -> <<16#c0>>;
enc(F, _, _) when is_float(F) -> <<16#cb, F:64/float>>;
enc(A, _, _) when is_atom(A) -> enc_ext(?EXT_ATOM, atom_to_binary(A, utf8));
enc(_, _, 0) -> throw({badarg, {too_deep, ?MAX_DEPTH}});
enc(L, N, D) when is_list(L) -> enc_list(L, N, D - 1);
enc(M, N, D) when is_map(M) -> enc_map(M, N, D - 1);
enc({bytes, B}, _, _) when is_binary(B) -> [bin_header(byte_size(B)), B];
enc(?HANDLE(Pool, Worker, Index, Id), _, _) when is_pid(Worker), is_integer(Id) ->
    handle_worker({Pool, Worker, Index}),
    enc_ext(?EXT_HANDLE, <<Id:64>>);
enc(T, N, D) when is_tuple(T) ->
    enc_ext(?EXT_TUPLE, enc_list(tuple_to_list(T), N, D - 1));
enc(T, _, _) when is_pid(T); is_reference(T); is_port(T); is_function(T) ->
    enc_ext(?EXT_TERM, term_to_binary(T));
enc(T, _, _) ->
    throw({badarg, {unsupported_term, T}}).

%% The one impure corner: the caller routes a request that carries handles to their worker
%% (py), and learns which one here, so requests without handles are not scanned for them.
-spec handle_worker({term(), pid(), term()}) -> ok.
handle_worker(Worker) ->
    case get(?HANDLE_KEY) of
        undefined -> put(?HANDLE_KEY, Worker), ok;
        Worker -> ok;
        Other -> throw({badarg, {handles_of_two_workers, element(2, Other), element(2, Worker)}})
    end.

-spec enc_int(integer()) -> binary().
enc_int(I) when I >= 0, I < 128 -> <<I>>;
enc_int(I) when I >= -32, I < 0 -> <<I:8/signed>>;
enc_int(I) when I >= 0 ->
    if
        I < 16#100 -> <<16#cc, I>>;
        I < 16#10000 -> <<16#cd, I:16>>;
        I < 16#100000000 -> <<16#ce, I:32>>;
        I < 16#10000000000000000 -> <<16#cf, I:64>>;
        true -> enc_bigint(0, I)
    end;
enc_int(I) ->
    if
        I >= -16#80 -> <<16#d0, I:8/signed>>;
        I >= -16#8000 -> <<16#d1, I:16/signed>>;
        I >= -16#80000000 -> <<16#d2, I:32/signed>>;
        I >= -16#8000000000000000 -> <<16#d3, I:64/signed>>;
        true -> enc_bigint(1, -I)
    end.

-spec enc_bigint(0 | 1, pos_integer()) -> binary().
enc_bigint(Sign, Magnitude) ->
    iolist_to_binary(enc_ext(?EXT_BIGINT, [Sign, binary:encode_unsigned(Magnitude)])).

-spec enc_binary(binary()) -> iodata().
enc_binary(B) ->
    Size = byte_size(B),
    if
        Size >= ?CHECK_LIMIT -> enc_ext(?EXT_BINARY, B);
        true ->
            case unicode:characters_to_binary(B) of
                B -> [str_header(Size), B];
                _ -> [bin_header(Size), B]
            end
    end.

-spec enc_list(list(), atom(), non_neg_integer()) -> iodata().
enc_list(L, N, D) ->
    {Count, Body} = enc_elems(L, N, D, 0, []),
    [array_header(Count) | Body].

%% Accumulates in reverse; lists:reverse/1 is cheaper than body recursion for long lists.
-spec enc_elems(term(), atom(), non_neg_integer(), non_neg_integer(), iodata()) ->
    {non_neg_integer(), iodata()}.
enc_elems([H | T], N, D, Count, Acc) -> enc_elems(T, N, D, Count + 1, [enc(H, N, D) | Acc]);
enc_elems([], _, _, Count, Acc) -> {Count, lists:reverse(Acc)};
enc_elems(Tail, _, _, _, _) -> throw({badarg, {improper_list, Tail}}).

-spec enc_map(map(), atom(), non_neg_integer()) -> iodata().
enc_map(M, N, D) ->
    Clashes = python_equal_keys(M, N),
    Body = maps:fold(fun(K, V, Acc) -> [enc_key(K, N, D, Clashes), enc(V, N, D) | Acc] end, [], M),
    [map_header(map_size(M)) | Body].

%% Python dict keys must be hashable: lists and maps (also inside tuples) travel as opaque
%% terms, which Python hashes by their bytes and sends back unchanged. So do keys that
%% would be equal in Python although they differ here (see python_equal_keys/2).
-spec enc_key(term(), atom(), non_neg_integer(), #{term() => []}) -> iodata().
enc_key(K, N, D, Clashes) ->
    case hashable(K) andalso not is_map_key(K, Clashes) of
        true -> enc(K, N, D);
        false -> enc_ext(?EXT_TERM, term_to_binary(K))
    end.

%% Python has 1 == 1.0 == True and Atom('a') == 'a': keys of one map that would become
%% the same Python dict key (and lose entries on the way) are returned here.
-spec python_equal_keys(map(), atom()) -> #{term() => []}.
python_equal_keys(M, _) when map_size(M) < 2 ->
    #{};
python_equal_keys(M, N) ->
    Groups = maps:fold(
        fun(K, _, Acc) ->
            P = py_key(K, N),
            Acc#{P => [K | maps:get(P, Acc, [])]}
        end,
        #{},
        M
    ),
    case map_size(Groups) =:= map_size(M) of
        true -> #{};
        false -> maps:from_list([{K, []} || [_, _ | _] = Ks <- maps:values(Groups), K <- Ks])
    end.

%% What a hashable key is equal to once it is a Python value.
-spec py_key(term(), atom()) -> term().
py_key(I, _) when is_integer(I) -> I;
py_key(F, _) when is_float(F) ->
    case trunc(F) of
        I when I == F -> I;
        _ -> F
    end;
py_key(true, _) -> 1;
py_key(false, _) -> 0;
py_key(N, N) -> {none};
py_key(A, _) when is_atom(A) -> {str, atom_to_binary(A, utf8)};
py_key(B, _) when is_binary(B) ->
    case unicode:characters_to_binary(B) of
        B -> {str, B};
        _ -> {bytes, B}
    end;
py_key({bytes, B}, _) when is_binary(B) -> {bytes, B};
py_key(T, N) when is_tuple(T) -> {tuple, [py_key(E, N) || E <- tuple_to_list(T)]};
py_key(K, _) -> {opaque, K}.

-spec hashable(term()) -> boolean().
hashable(K) when is_list(K); is_map(K) -> false;
hashable({bytes, B}) when is_binary(B) -> true;
hashable(K) when is_tuple(K) -> lists:all(fun hashable/1, tuple_to_list(K));
hashable(_) -> true.

-spec enc_ext(byte(), iodata()) -> iodata().
enc_ext(Type, Data) ->
    case iolist_size(Data) of
        1 -> [16#d4, Type | Data];
        2 -> [16#d5, Type | Data];
        4 -> [16#d6, Type | Data];
        8 -> [16#d7, Type | Data];
        16 -> [16#d8, Type | Data];
        S when S < 16#100 -> [<<16#c7, S, Type>> | Data];
        S when S < 16#10000 -> [<<16#c8, S:16, Type>> | Data];
        S when S < 16#100000000 -> [<<16#c9, S:32, Type>> | Data];
        _ -> throw({badarg, too_large})
    end.

-spec str_header(non_neg_integer()) -> binary().
str_header(S) when S < 32 -> <<(16#a0 bor S)>>;
str_header(S) when S < 16#100 -> <<16#d9, S>>;
str_header(S) when S < 16#10000 -> <<16#da, S:16>>;
str_header(S) when S < 16#100000000 -> <<16#db, S:32>>;
str_header(_) -> throw({badarg, too_large}).

-spec bin_header(non_neg_integer()) -> binary().
bin_header(S) when S < 16#100 -> <<16#c4, S>>;
bin_header(S) when S < 16#10000 -> <<16#c5, S:16>>;
bin_header(S) when S < 16#100000000 -> <<16#c6, S:32>>;
bin_header(_) -> throw({badarg, too_large}).

-spec array_header(non_neg_integer()) -> binary().
array_header(C) when C < 16 -> <<(16#90 bor C)>>;
array_header(C) when C < 16#10000 -> <<16#dc, C:16>>;
array_header(C) when C < 16#100000000 -> <<16#dd, C:32>>;
array_header(_) -> throw({badarg, too_large}).

-spec map_header(non_neg_integer()) -> binary().
map_header(C) when C < 16 -> <<(16#80 bor C)>>;
map_header(C) when C < 16#10000 -> <<16#de, C:16>>;
map_header(C) -> <<16#df, C:32>>.

%%====================================================================
%% Decoding
%%====================================================================

%% @doc Decode one msgpack object from the front of `Bin'. Throws `{badarg, Detail}' on
%% malformed or truncated input, and whatever `NewAtom' throws.
-spec decode(Bin, NoneAtom, NewAtom) -> {term(), binary()} when
    Bin :: binary(), NoneAtom :: atom(), NewAtom :: new_atom_fun().
decode(Bin, NoneAtom, NewAtom) ->
    try
        dec(Bin, NoneAtom, NewAtom)
    catch
        error:function_clause -> throw({badarg, malformed});
        error:{badmatch, _} -> throw({badarg, malformed});
        error:badarg -> throw({badarg, malformed})
    end.

%% @doc Decode `Bin', one msgpack array, prepending its elements to `Acc' in reverse
%% order (a caller collecting chunk after chunk reverses once, at the end). Throws like
%% decode/3, also for bytes after the array.
-spec decode_items(Bin, Acc, NoneAtom, NewAtom) -> list() when
    Bin :: binary(), Acc :: list(), NoneAtom :: atom(), NewAtom :: new_atom_fun().
decode_items(Bin, Acc, NoneAtom, NewAtom) ->
    try items(Bin, Acc, NoneAtom, NewAtom) of
        {Items, <<>>} -> Items;
        {_, _} -> throw({badarg, malformed})
    catch
        error:function_clause -> throw({badarg, malformed});
        error:{badmatch, _} -> throw({badarg, malformed});
        error:badarg -> throw({badarg, malformed})
    end.

-spec items(binary(), list(), atom(), new_atom_fun()) -> {list(), binary()}.
items(<<2#1001:4, C:4, R/binary>>, Acc, N, A) -> dec_rev(C, R, N, A, Acc);
items(<<16#dc, C:16, R/binary>>, Acc, N, A) -> dec_rev(C, R, N, A, Acc);
items(<<16#dd, C:32, R/binary>>, Acc, N, A) -> dec_rev(C, R, N, A, Acc).

-spec dec(binary(), atom(), new_atom_fun()) -> {term(), binary()}.
dec(<<I, R/binary>>, _, _) when I < 16#80 -> {I, R};
dec(<<2#101:3, S:5, B:S/binary, R/binary>>, _, _) -> {copy(B), R};
dec(<<2#1001:4, C:4, R/binary>>, N, A) -> dec_array(C, R, N, A);
dec(<<2#1000:4, C:4, R/binary>>, N, A) -> dec_map(C, R, N, A, #{});
dec(<<I:8/signed, R/binary>>, _, _) when I >= -32 -> {I, R};
dec(<<16#c0, R/binary>>, N, _) -> {N, R};
dec(<<16#c2, R/binary>>, _, _) -> {false, R};
dec(<<16#c3, R/binary>>, _, _) -> {true, R};
dec(<<16#cc, I, R/binary>>, _, _) -> {I, R};
dec(<<16#cd, I:16, R/binary>>, _, _) -> {I, R};
dec(<<16#ce, I:32, R/binary>>, _, _) -> {I, R};
dec(<<16#cf, I:64, R/binary>>, _, _) -> {I, R};
dec(<<16#d0, I:8/signed, R/binary>>, _, _) -> {I, R};
dec(<<16#d1, I:16/signed, R/binary>>, _, _) -> {I, R};
dec(<<16#d2, I:32/signed, R/binary>>, _, _) -> {I, R};
dec(<<16#d3, I:64/signed, R/binary>>, _, _) -> {I, R};
dec(<<16#cb, F:64/float, R/binary>>, _, _) -> {F, R};
dec(<<16#cb, Bits:64, R/binary>>, _, _) -> {special_float(Bits bsr 63, Bits band (1 bsl 52 - 1)), R};
dec(<<16#ca, F:32/float, R/binary>>, _, _) -> {F, R};
dec(<<16#ca, Bits:32, R/binary>>, _, _) -> {special_float(Bits bsr 31, Bits band (1 bsl 23 - 1)), R};
dec(<<16#d9, S, B:S/binary, R/binary>>, _, _) -> {copy(B), R};
dec(<<16#da, S:16, B:S/binary, R/binary>>, _, _) -> {copy(B), R};
dec(<<16#db, S:32, B:S/binary, R/binary>>, _, _) -> {copy(B), R};
dec(<<16#c4, S, B:S/binary, R/binary>>, _, _) -> {copy(B), R};
dec(<<16#c5, S:16, B:S/binary, R/binary>>, _, _) -> {copy(B), R};
dec(<<16#c6, S:32, B:S/binary, R/binary>>, _, _) -> {copy(B), R};
dec(<<16#dc, C:16, R/binary>>, N, A) -> dec_array(C, R, N, A);
dec(<<16#dd, C:32, R/binary>>, N, A) -> dec_array(C, R, N, A);
dec(<<16#de, C:16, R/binary>>, N, A) -> dec_map(C, R, N, A, #{});
dec(<<16#df, C:32, R/binary>>, N, A) -> dec_map(C, R, N, A, #{});
dec(<<16#d4, T, B:1/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<16#d5, T, B:2/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<16#d6, T, B:4/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<16#d7, T, B:8/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<16#d8, T, B:16/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<16#c7, S, T, B:S/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<16#c8, S:16, T, B:S/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<16#c9, S:32, T, B:S/binary, R/binary>>, N, A) -> {dec_ext(T, B, N, A), R};
dec(<<>>, _, _) -> throw({badarg, truncated});
dec(<<Byte, _/binary>>, _, _) -> throw({badarg, {bad_byte, Byte}}).

-spec special_float(0 | 1, non_neg_integer()) -> nan | infinity | neg_infinity.
special_float(_, Mantissa) when Mantissa =/= 0 -> nan;
special_float(0, 0) -> infinity;
special_float(1, 0) -> neg_infinity.

-spec dec_array(non_neg_integer(), binary(), atom(), new_atom_fun()) ->
    {list(), binary()}.
dec_array(C, R0, N, A) ->
    {Reversed, R} = dec_rev(C, R0, N, A, []),
    {lists:reverse(Reversed), R}.

%% C elements onto Acc, in reverse order. Small ints and floats, the bulk of a streamed
%% chunk, are decoded in the loop: no {Value, Rest} tuple per item, and the match context
%% stays put.
-spec dec_rev(non_neg_integer(), binary(), atom(), new_atom_fun(), list()) -> {list(), binary()}.
dec_rev(0, R, _, _, Acc) -> {Acc, R};
dec_rev(C, <<I, R/binary>>, N, A, Acc) when I < 16#80 -> dec_rev(C - 1, R, N, A, [I | Acc]);
dec_rev(C, <<I:8/signed, R/binary>>, N, A, Acc) when I >= -32 -> dec_rev(C - 1, R, N, A, [I | Acc]);
dec_rev(C, <<16#cd, I:16, R/binary>>, N, A, Acc) -> dec_rev(C - 1, R, N, A, [I | Acc]);
dec_rev(C, <<16#ce, I:32, R/binary>>, N, A, Acc) -> dec_rev(C - 1, R, N, A, [I | Acc]);
dec_rev(C, <<16#cb, F:64/float, R/binary>>, N, A, Acc) -> dec_rev(C - 1, R, N, A, [F | Acc]);
dec_rev(C, R0, N, A, Acc) ->
    {V, R} = dec(R0, N, A),
    dec_rev(C - 1, R, N, A, [V | Acc]).

-spec dec_map(non_neg_integer(), binary(), atom(), new_atom_fun(), map()) -> {map(), binary()}.
dec_map(0, R, _, _, Acc) -> {Acc, R};
dec_map(C, R0, N, A, Acc) ->
    {K, R1} = dec(R0, N, A),
    {V, R} = dec(R1, N, A),
    dec_map(C - 1, R, N, A, Acc#{K => V}).

-spec dec_ext(byte(), binary(), atom(), new_atom_fun()) -> term().
dec_ext(?EXT_ATOM, Name, _, NewAtom) ->
    try binary_to_existing_atom(Name, utf8) of
        Atom -> Atom
    catch
        error:badarg -> NewAtom(copy(Name))
    end;
dec_ext(?EXT_TUPLE, Body, N, A) ->
    case dec(Body, N, A) of
        {L, <<>>} when is_list(L) -> list_to_tuple(L);
        _ -> throw({badarg, bad_tuple})
    end;
dec_ext(?EXT_BIGINT, <<0, Magnitude/binary>>, _, _) ->
    binary:decode_unsigned(Magnitude);
dec_ext(?EXT_BIGINT, <<1, Magnitude/binary>>, _, _) ->
    -binary:decode_unsigned(Magnitude);
dec_ext(?EXT_BIGINT, _, _, _) ->
    throw({badarg, bad_bigint});
dec_ext(?EXT_TERM, Ext, _, _) ->
    binary_to_term(Ext, [safe]);
dec_ext(?EXT_BINARY, B, _, _) ->
    copy(B);
dec_ext(Type, _, _, _) ->
    throw({badarg, {unknown_ext, Type}}).

-spec copy(binary()) -> binary().
copy(B) when byte_size(B) < ?COPY_LIMIT -> binary:copy(B);
copy(B) -> B.

%% @doc Skip one msgpack object at the front of `Bin' without building it; used to step over
%% a message whose value failed to decode so the rest of the frame is not lost.
-spec skip(binary()) -> binary().
skip(Bin) ->
    try
        skip1(Bin)
    catch
        error:function_clause -> throw({badarg, malformed});
        error:{badmatch, _} -> throw({badarg, malformed})
    end.

-spec skip1(binary()) -> binary().
skip1(<<I, R/binary>>) when I < 16#80; I >= 16#e0 -> R;
skip1(<<2#101:3, S:5, _:S/binary, R/binary>>) -> R;
skip1(<<2#1001:4, C:4, R/binary>>) -> skip_n(C, R);
skip1(<<2#1000:4, C:4, R/binary>>) -> skip_n(2 * C, R);
skip1(<<B, R/binary>>) when B =:= 16#c0; B =:= 16#c2; B =:= 16#c3 -> R;
skip1(<<B, R/binary>>) when B =:= 16#cc; B =:= 16#d0 -> skip_bytes(1, R);
skip1(<<B, R/binary>>) when B =:= 16#cd; B =:= 16#d1 -> skip_bytes(2, R);
skip1(<<B, R/binary>>) when B =:= 16#ce; B =:= 16#d2; B =:= 16#ca -> skip_bytes(4, R);
skip1(<<B, R/binary>>) when B =:= 16#cf; B =:= 16#d3; B =:= 16#cb -> skip_bytes(8, R);
skip1(<<B, S, R/binary>>) when B =:= 16#d9; B =:= 16#c4 -> skip_bytes(S, R);
skip1(<<B, S:16, R/binary>>) when B =:= 16#da; B =:= 16#c5 -> skip_bytes(S, R);
skip1(<<B, S:32, R/binary>>) when B =:= 16#db; B =:= 16#c6 -> skip_bytes(S, R);
skip1(<<16#dc, C:16, R/binary>>) -> skip_n(C, R);
skip1(<<16#dd, C:32, R/binary>>) -> skip_n(C, R);
skip1(<<16#de, C:16, R/binary>>) -> skip_n(2 * C, R);
skip1(<<16#df, C:32, R/binary>>) -> skip_n(2 * C, R);
skip1(<<16#d4, R/binary>>) -> skip_bytes(2, R);
skip1(<<16#d5, R/binary>>) -> skip_bytes(3, R);
skip1(<<16#d6, R/binary>>) -> skip_bytes(5, R);
skip1(<<16#d7, R/binary>>) -> skip_bytes(9, R);
skip1(<<16#d8, R/binary>>) -> skip_bytes(17, R);
skip1(<<16#c7, S, R/binary>>) -> skip_bytes(S + 1, R);
skip1(<<16#c8, S:16, R/binary>>) -> skip_bytes(S + 1, R);
skip1(<<16#c9, S:32, R/binary>>) -> skip_bytes(S + 1, R).

-spec skip_n(non_neg_integer(), binary()) -> binary().
skip_n(0, R) -> R;
skip_n(C, R) -> skip_n(C - 1, skip1(R)).

-spec skip_bytes(non_neg_integer(), binary()) -> binary().
skip_bytes(S, Bin) ->
    <<_:S/binary, R/binary>> = Bin,
    R.

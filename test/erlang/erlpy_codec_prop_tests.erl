%% PropEr properties of erlpy_codec, run from EUnit:
%%   * every term of the supported types survives encode -> decode unchanged;
%%   * decode/3 and skip/1 fed arbitrary bytes (random, truncated or corrupted encodings)
%%     either succeed or throw {badarg, _}, and agree with each other.
%%
%% Debian's erlang-proper ships no proper.hrl (that is in erlang-proper-dev), so the few
%% macros used here are defined locally, exactly as proper.hrl defines them.
%% The generators are exported: erlpy_types_SUITE sends the same terms through Python.
-module(erlpy_codec_prop_tests).
-include_lib("eunit/include/eunit.hrl").

-export([term/0, check/2]).

-define(FORALL(X, RawType, Prop), proper:forall(RawType, fun(X) -> Prop end)).
-undef(LET).  % eunit.hrl has its own
-define(LET(X, RawType, Gen), proper_types:bind(RawType, fun(X) -> Gen end, false)).
-define(LAZY(X), proper_types:lazy(fun() -> X end)).
-define(SIZED(S, Gen), proper_types:sized(fun(S) -> Gen end)).
-define(WHENFAIL(Action, Prop), proper:whenfail(fun() -> Action end, fun() -> Prop end)).

-define(NUMTESTS, 1000).
%% Shrinking a failure of a big term can take a while; the suite itself takes seconds.
-define(TIMEOUT, 600).

%%====================================================================
%% Running properties deterministically
%%====================================================================

%% Run Prop NumTests times with a fixed seed: PropEr 1.2 has no seed option, but it keeps
%% an existing `rand' state of the calling process (proper_arith:rand_restart/1).
check(Prop, NumTests) ->
    _ = rand:seed(exsplus, {16#e71, 16#b7, 2024}),
    proper:quickcheck(Prop, [{numtests, NumTests}, long_result, quiet]).

%%====================================================================
%% Generators
%%====================================================================

%% Terms of every supported type, nested. `{bytes, B}' is excluded: it is an input form
%% that comes back as the plain binary B.
term() -> ?SIZED(Size, term(min(Size, 24))).

term(Size) when Size =< 1 -> leaf();
term(Size) ->
    Inner = Size div 3,
    proper_types:frequency([
        {5, leaf()},
        {1, ?LAZY(proper_types:list(term(Inner)))},
        {1, ?LAZY(tuple_of(proper_types:list(term(Inner))))},
        {1, ?LAZY(map_of(key(Inner), term(Inner)))},
        {1, ?LAZY(fun_of(term(Inner)))}
    ]).

tuple_of(ListGen) -> ?LET(L, ListGen, no_bytes_tuple(list_to_tuple(L))).

%% {bytes, B} would come back as B: make such a tuple a 3-tuple instead.
no_bytes_tuple({bytes, B}) when is_binary(B) -> {bytes, B, 0};
no_bytes_tuple(T) -> T.

map_of(KeyGen, ValueGen) ->
    ?LET(Pairs, proper_types:list({KeyGen, ValueGen}), maps:from_list(Pairs)).

%% Map keys: any term, plus keys that are equal in Python but not in Erlang.
key(Size) ->
    proper_types:frequency([
        {4, term(Size)},
        {1, python_equal_key()}
    ]).

python_equal_key() ->
    proper_types:elements([
        0, 1, 0.0, 1.0, true, false, 2, 2.0, a, <<"a">>, none, nil, <<255>>,
        1 bsl 70, float(1 bsl 70), {1, a}, {1.0, <<"a">>}, {true, a}, {}
    ]).

fun_of(EnvGen) ->
    ?LET(Env, EnvGen, proper_types:elements([
        fun() -> Env end,
        fun(X) -> {X, Env} end,
        fun lists:reverse/1,
        fun erlang:self/0
    ])).

leaf() ->
    proper_types:frequency([
        {4, int()},
        {2, float_()},
        {4, binary_()},
        {3, atom_()},
        {1, opaque()},
        {1, string_()}
    ]).

int() ->
    proper_types:frequency([
        {4, proper_types:integer()},
        {2, proper_types:elements(int_edges())},
        {2, bignum()}
    ]).

int_edges() ->
    Powers = [1 bsl B || B <- [5, 6, 7, 8, 15, 16, 31, 32, 63, 64, 65, 100, 128]],
    lists:usort([X || P <- Powers, D <- [-1, 0, 1], S <- [1, -1], X <- [S * (P + D)]]).

bignum() ->
    ?LET({Negative, Magnitude}, {proper_types:boolean(), proper_types:non_empty(proper_types:binary())},
         begin
             I = binary:decode_unsigned(Magnitude),
             case Negative of true -> -I; false -> I end
         end).

float_() ->
    proper_types:frequency([
        {4, proper_types:float()},
        {1, proper_types:elements([0.0, 1.0, -1.0, 0.5, 1.0e308, -1.0e308, 5.0e-324,
                                   2.2250738585072014e-308, 1.7976931348623157e308,
                                   9007199254740993.0, 1.0e16])},
        {1, ?LET(Bits, proper_types:integer(0, (1 bsl 64) - 1), finite_float(Bits))}
    ]).

%% Any finite float from its IEEE 754 bit pattern (NaN and infinities are no Erlang floats).
finite_float(Bits) ->
    case <<Bits:64>> of
        <<F:64/float>> -> F;
        _ -> float(Bits band 16#ffff)
    end.

binary_() ->
    proper_types:frequency([
        {3, proper_types:binary()},                                  % mostly invalid UTF-8
        {3, utf8()},
        {1, ?LET({B, N}, {proper_types:binary(), proper_types:integer(500, 1100)}, long(B, N))},
        {1, ?LET({B, N}, {utf8(), proper_types:integer(500, 1100)}, long(B, N))}
    ]).

%% Binaries around the 512-byte limit from which Python decides str or bytes.
long(<<>>, N) -> binary:copy(<<"x">>, N);
long(B, N) -> binary:part(binary:copy(B, N div byte_size(B) + 1), 0, N).

utf8() ->
    ?LET(Chars, proper_types:list(char_()), unicode:characters_to_binary(Chars)).

char_() ->
    proper_types:frequency([
        {4, proper_types:integer(0, 127)},
        {2, proper_types:integer(128, 16#7ff)},
        {2, proper_types:integer(16#800, 16#d7ff)},
        {1, proper_types:integer(16#e000, 16#ffff)},
        {1, proper_types:integer(16#10000, 16#10ffff)}
    ]).

atom_() ->
    proper_types:frequency([
        {4, proper_types:elements([a, ok, error, none, nil, undefined, true, false, '',
                                   'with space', 'Quoted-Atom', 'ünïcødé', '日本語', nan,
                                   infinity, neg_infinity, bytes, '__main__'])},
        {1, proper_types:atom()}
    ]).

opaque() ->
    ?LAZY(proper_types:elements([
        self(),
        remote_pid(),
        make_ref(),
        hd(erlang:ports()),
        fun lists:reverse/1,
        fun() -> ok end
    ])).

%% A pid of another node, made from its external format.
remote_pid() ->
    Node = <<"erlpy_other@nohost">>,
    binary_to_term(<<131, 88, 119, (byte_size(Node)), Node/binary, 1:32, 2:32, 3:32>>).

string_() -> proper_types:list(proper_types:integer(0, 16#10ffff)).

%% Arbitrary input for the decoder.
bytes() ->
    proper_types:frequency([
        {2, proper_types:binary()},
        {2, ?LET({Head, Tail}, {proper_types:integer(16#c0, 16#df), proper_types:binary()},
                 <<Head, Tail/binary>>)},
        {3, ?LET({T, Cut}, {term(), proper_types:real()}, truncated(encode(T), Cut))},
        {3, ?LET({T, At, Byte}, {term(), proper_types:real(), proper_types:byte()},
                 corrupted(encode(T), At, Byte))},
        {1, ?LET(Parts, proper_types:list(proper_types:oneof([
                 ?LAZY(?LET(T, term(), encode(T))), proper_types:binary()])),
                 iolist_to_binary(Parts))}
    ]).

truncated(Bin, Cut) -> binary:part(Bin, 0, trunc(abs(Cut) * byte_size(Bin)) rem max(1, byte_size(Bin))).

corrupted(<<>>, _, Byte) -> <<Byte>>;
corrupted(Bin, At, Byte) ->
    Pos = trunc(abs(At) * byte_size(Bin)) rem byte_size(Bin),
    <<Before:Pos/binary, _, After/binary>> = Bin,
    <<Before/binary, Byte, After/binary>>.

encode(T) -> iolist_to_binary(erlpy_codec:encode(T, none)).

%%====================================================================
%% Properties
%%====================================================================

prop_round_trip() ->
    ?FORALL(T, term(),
        begin
            Bin = encode(T),
            Decoded = erlpy_codec:decode(Bin, none, fun no_new_atom/1),
            ?WHENFAIL(io:format(user, "~nterm ~p~nbytes ~w~ndecoded ~p~n", [T, Bin, Decoded]),
                      Decoded =:= {T, <<>>})
        end).

%% With another none atom, `nil' is nil and `none' an ordinary atom.
prop_round_trip_nil() ->
    ?FORALL(T, term(),
        erlpy_codec:decode(iolist_to_binary(erlpy_codec:encode(T, nil)), nil, fun no_new_atom/1)
            =:= {T, <<>>}).

%% Objects decode one after the other from one frame.
prop_concatenated() ->
    ?FORALL(Ts, proper_types:list(proper_types:resize(8, term())),
        begin
            Bin = iolist_to_binary([erlpy_codec:encode(T, none) || T <- Ts]),
            decode_all(Bin) =:= Ts
        end).

decode_all(<<>>) -> [];
decode_all(Bin) ->
    {T, Rest} = erlpy_codec:decode(Bin, none, fun no_new_atom/1),
    [T | decode_all(Rest)].

%% Arbitrary bytes: a result or {badarg, _}, never another exception; when decode/3
%% succeeds, skip/1 steps over exactly the same bytes.
prop_arbitrary_bytes() ->
    ?FORALL(Bin, bytes(),
        begin
            D = outcome(fun() -> erlpy_codec:decode(Bin, none, fun fresh_atom/1) end),
            S = outcome(fun() -> erlpy_codec:skip(Bin) end),
            ?WHENFAIL(io:format(user, "~nbytes ~w~ndecode ~p~nskip ~p~n", [Bin, D, S]),
                      acceptable(D) andalso acceptable(S) andalso agree(D, S))
        end).

outcome(Fun) ->
    try Fun() of
        Result -> {ok, Result}
    catch
        Class:Reason -> {Class, Reason}
    end.

acceptable({ok, _}) -> true;
acceptable({throw, {badarg, _}}) -> true;
acceptable(_) -> false.

agree({ok, {_, Rest}}, {ok, Rest}) -> true;
agree({ok, _}, _) -> false;
agree(_, _) -> true.

%% The decoder never creates atoms: unknown names come here and are refused.
fresh_atom(Name) -> throw({badarg, {new_atom, Name}}).

no_new_atom(Name) -> error({unexpected_new_atom, Name}).

%%====================================================================
%% EUnit
%%====================================================================

round_trip_test_() ->
    {timeout, ?TIMEOUT, ?_assertEqual(true, check(prop_round_trip(), ?NUMTESTS))}.

round_trip_nil_test_() ->
    {timeout, ?TIMEOUT, ?_assertEqual(true, check(prop_round_trip_nil(), ?NUMTESTS))}.

concatenated_test_() ->
    {timeout, ?TIMEOUT, ?_assertEqual(true, check(prop_concatenated(), ?NUMTESTS))}.

arbitrary_bytes_test_() ->
    {timeout, ?TIMEOUT, ?_assertEqual(true, check(prop_arbitrary_bytes(), 3 * ?NUMTESTS))}.

%% Decoding many random inputs leaves the atom table as it was.
decode_makes_no_atoms_test_() ->
    {timeout, ?TIMEOUT, fun() ->
        _ = rand:seed(exsplus, {1, 2, 3}),
        Inputs = [iolist_to_binary([random_ext1(), rand:bytes(rand:uniform(20))]) || _ <- lists:seq(1, 2000)],
        Before = erlang:system_info(atom_count),
        [outcome(fun() -> erlpy_codec:decode(B, none, fun fresh_atom/1) end) || B <- Inputs],
        [outcome(fun() -> erlpy_codec:skip(B) end) || B <- Inputs],
        ?assertEqual(Before, erlang:system_info(atom_count))
    end}.

%% An ext 1 (atom) or ext 4 (term) header with a random payload.
random_ext1() ->
    Payload = rand:bytes(rand:uniform(12) - 1),
    Type = case rand:uniform(2) of 1 -> 1; 2 -> 4 end,
    Data = case Type of 4 -> <<131, 100, (byte_size(Payload)):16, Payload/binary>>; 1 -> Payload end,
    [16#c7, byte_size(Data), Type, Data].

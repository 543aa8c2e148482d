%% EUnit tests of erlpy_codec, the pure msgpack codec: exact bytes against the msgpack
%% spec (https://github.com/msgpack/msgpack/blob/master/spec.md) for the forms the encoder
%% emits, decoding of the forms Python's msgpack emits (and a few it could), the error
%% contract (every failure is a throw of {badarg, Detail}) and skip/1.
-module(erlpy_codec_tests).
-include_lib("eunit/include/eunit.hrl").

%% The decoder's atom hook for tests that must not create atoms: any call is an error.
-define(NO_NEW_ATOM, fun(UnexpectedName__) -> error({unexpected_new_atom, UnexpectedName__}) end).

enc(T) -> enc(T, none).
enc(T, None) -> iolist_to_binary(erlpy_codec:encode(T, None)).

dec(B) -> dec(B, none).
dec(B, None) -> erlpy_codec:decode(B, None, ?NO_NEW_ATOM).

%% Decodes completely, nothing left over.
dec_all(B) ->
    {T, Rest} = dec(B),
    ?assertEqual(<<>>, Rest),
    T.

%% A binary of N bytes that is valid UTF-8 (ASCII) or not (starts with 255).
ascii(N) -> binary:copy(<<"a">>, N).
invalid(0) -> <<>>;
invalid(N) -> <<255, (binary:copy(<<0>>, N - 1))/binary>>.

%%====================================================================
%% Encoding: exact bytes
%%====================================================================

positive_int_test_() ->
    [?_assertEqual(Bytes, enc(I)) || {I, Bytes} <- [
        {0, <<16#00>>},
        {1, <<16#01>>},
        {127, <<16#7f>>},                                  % positive fixint max
        {128, <<16#cc, 16#80>>},                           % uint8
        {255, <<16#cc, 16#ff>>},
        {256, <<16#cd, 16#01, 16#00>>},                    % uint16
        {65535, <<16#cd, 16#ff, 16#ff>>},
        {65536, <<16#ce, 16#00, 16#01, 16#00, 16#00>>},    % uint32
        {16#ffffffff, <<16#ce, 16#ff, 16#ff, 16#ff, 16#ff>>},
        {16#100000000, <<16#cf, 0, 0, 0, 1, 0, 0, 0, 0>>}, % uint64
        {16#ffffffffffffffff, <<16#cf, 16#ff, 16#ff, 16#ff, 16#ff, 16#ff, 16#ff, 16#ff, 16#ff>>}
    ]].

negative_int_test_() ->
    [?_assertEqual(Bytes, enc(I)) || {I, Bytes} <- [
        {-1, <<16#ff>>},                                   % negative fixint
        {-32, <<16#e0>>},                                  % negative fixint min
        {-33, <<16#d0, 16#df>>},                           % int8
        {-128, <<16#d0, 16#80>>},
        {-129, <<16#d1, 16#ff, 16#7f>>},                   % int16
        {-32768, <<16#d1, 16#80, 16#00>>},
        {-32769, <<16#d2, 16#ff, 16#ff, 16#7f, 16#ff>>},   % int32
        {-16#80000000, <<16#d2, 16#80, 0, 0, 0>>},
        {-16#80000001, <<16#d3, 16#ff, 16#ff, 16#ff, 16#ff, 16#7f, 16#ff, 16#ff, 16#ff>>}, % int64
        {-16#8000000000000000, <<16#d3, 16#80, 0, 0, 0, 0, 0, 0, 0>>}
    ]].

%% Integers outside [-2^63, 2^64) are ext 3: a sign byte and the big-endian magnitude.
bignum_test_() ->
    [?_assertEqual(Bytes, enc(I)) || {I, Bytes} <- [
        %% 2^64: payload 1 + 9 bytes = 10: ext 8
        {1 bsl 64, <<16#c7, 10, 3, 0, 1, 0:64>>},
        %% -2^63 - 1: payload 1 + 8 bytes = 9: ext 8
        {-(1 bsl 63) - 1, <<16#c7, 9, 3, 1, 16#80, 0, 0, 0, 0, 0, 0, 1>>},
        %% payload of exactly 16 bytes (15-byte magnitude): fixext 16
        {1 bsl 112, <<16#d8, 3, 0, 1, 0:112>>},
        {-(1 bsl 112), <<16#d8, 3, 1, 1, 0:112>>},
        %% 2^128: payload 18 bytes
        {1 bsl 128, <<16#c7, 18, 3, 0, 1, 0:128>>}
    ]] ++
    [?_assertEqual(I, dec_all(enc(I))) || I <- [1 bsl 64, -(1 bsl 64), (1 bsl 64) + 1,
                                                 -(1 bsl 63) - 1, 1 bsl 2000, -(1 bsl 2000) + 7,
                                                 7 bsl 100000]].

float_test_() ->
    [
        ?_assertEqual(<<16#cb, 16#3f, 16#f8, 0, 0, 0, 0, 0, 0>>, enc(1.5)),
        ?_assertEqual(<<16#cb, 0:64>>, enc(0.0)),
        ?_assertEqual(<<16#cb, 16#c0, 16#00, 0, 0, 0, 0, 0, 0>>, enc(-2.0)),
        ?_assertEqual(<<16#cb, 16#7f, 16#ef, 16#ff, 16#ff, 16#ff, 16#ff, 16#ff, 16#ff>>,
                      enc(1.7976931348623157e308)),
        ?_assertEqual(<<16#cb, 1:64>>, enc(5.0e-324)),
        %% the atoms that stand for Python's special floats stay atoms on the way out
        ?_assertEqual(<<16#c7, 3, 1, "nan">>, enc(nan)),
        ?_assertEqual(<<16#d7, 1, "infinity">>, enc(infinity)),            % fixext 8
        ?_assertEqual(<<16#c7, 12, 1, "neg_infinity">>, enc(neg_infinity))
    ].

str_test_() ->
    [
        ?_assertEqual(<<16#a0>>, enc(<<>>)),
        ?_assertEqual(<<16#a5, "hello">>, enc(<<"hello">>)),
        ?_assertEqual(<<16#bf, (ascii(31))/binary>>, enc(ascii(31))),          % fixstr max
        ?_assertEqual(<<16#d9, 32, (ascii(32))/binary>>, enc(ascii(32))),      % str8
        ?_assertEqual(<<16#d9, 255, (ascii(255))/binary>>, enc(ascii(255))),
        ?_assertEqual(<<16#da, 1, 0, (ascii(256))/binary>>, enc(ascii(256))),  % str16
        ?_assertEqual(<<16#da, 1, 16#ff, (ascii(511))/binary>>, enc(ascii(511))),
        ?_assertEqual(<<16#a3, 16#e6, 16#97, 16#a5>>, enc(<<"日"/utf8>>)),
        %% U+FFFE (a noncharacter) is valid UTF-8 for Erlang and Python alike
        ?_assertEqual(<<16#a3, 16#ef, 16#bf, 16#be>>, enc(<<16#ef, 16#bf, 16#be>>))
    ].

%% Binaries that are not valid UTF-8 go as bin; so does {bytes, B} whatever it holds.
bin_test_() ->
    [
        ?_assertEqual(<<16#c4, 1, 255>>, enc(<<255>>)),
        ?_assertEqual(<<16#c4, 3, 16#ed, 16#a0, 16#80>>, enc(<<16#ed, 16#a0, 16#80>>)), % surrogate
        ?_assertEqual(<<16#c4, 2, 16#c0, 16#80>>, enc(<<16#c0, 16#80>>)),             % overlong
        ?_assertEqual(<<16#c4, 1, 16#e6>>, enc(<<16#e6>>)),                           % truncated
        ?_assertEqual(<<16#c4, 255, (invalid(255))/binary>>, enc(invalid(255))),
        ?_assertEqual(<<16#c5, 1, 0, (invalid(256))/binary>>, enc(invalid(256))),
        ?_assertEqual(<<16#c5, 1, 16#ff, (invalid(511))/binary>>, enc(invalid(511))),
        ?_assertEqual(<<16#c4, 0>>, enc({bytes, <<>>})),
        ?_assertEqual(<<16#c4, 2, "hi">>, enc({bytes, <<"hi">>})),
        ?_assertEqual(<<16#c4, 255, (ascii(255))/binary>>, enc({bytes, ascii(255)})),
        ?_assertEqual(<<16#c5, 1, 0, (ascii(256))/binary>>, enc({bytes, ascii(256)})),
        ?_assertEqual(<<16#c5, 16#ff, 16#ff, (ascii(65535))/binary>>, enc({bytes, ascii(65535)})),
        ?_assertEqual(<<16#c6, 0, 1, 0, 0, (ascii(65536))/binary>>, enc({bytes, ascii(65536)})),
        %% {bytes, B} stays bin even at 512 bytes and more (never ext 5)
        ?_assertEqual(<<16#c5, 2, 0, (ascii(512))/binary>>, enc({bytes, ascii(512)})),
        %% {bytes, B} decodes as the plain binary: it is an input form only
        ?_assertEqual(<<"hi">>, dec_all(enc({bytes, <<"hi">>})))
    ].

%% Binaries of 512 bytes or more are ext 5 whatever their content: Python classifies them.
ext5_binary_test_() ->
    [
        ?_assertEqual(<<16#c8, 2, 0, 5, (ascii(512))/binary>>, enc(ascii(512))),      % ext16
        ?_assertEqual(<<16#c8, 2, 0, 5, (invalid(512))/binary>>, enc(invalid(512))),
        ?_assertEqual(<<16#c8, 16#ff, 16#ff, 5, (ascii(65535))/binary>>, enc(ascii(65535))),
        ?_assertEqual(<<16#c9, 0, 1, 0, 0, 5, (ascii(65536))/binary>>, enc(ascii(65536))), % ext32
        ?_assertEqual(ascii(512), dec_all(enc(ascii(512)))),
        ?_assertEqual(invalid(70000), dec_all(enc(invalid(70000))))
    ].

bool_none_test_() ->
    [
        ?_assertEqual(<<16#c3>>, enc(true)),
        ?_assertEqual(<<16#c2>>, enc(false)),
        ?_assertEqual(<<16#c0>>, enc(none)),
        ?_assertEqual(true, dec_all(<<16#c3>>)),
        ?_assertEqual(false, dec_all(<<16#c2>>)),
        ?_assertEqual(none, dec_all(<<16#c0>>))
    ].

%% The pool's none atom is what nil stands for, both ways; 'none' is then an ordinary atom.
custom_none_atom_test_() ->
    [
        ?_assertEqual(<<16#c0>>, enc(nil, nil)),
        ?_assertEqual(<<16#d6, 1, "none">>, enc(none, nil)),
        ?_assertEqual(<<16#c7, 3, 1, "nil">>, enc(nil, none)),
        ?_assertEqual(<<16#93, 16#c0, 16#c3, 16#c2>>, enc([nil, true, false], nil)),
        ?_assertEqual({nil, <<>>}, erlpy_codec:decode(<<16#c0>>, nil, ?NO_NEW_ATOM)),
        ?_assertEqual({[nil, none], <<>>},
                      erlpy_codec:decode(<<16#92, 16#c0, 16#d6, 1, "none">>, nil, ?NO_NEW_ATOM))
    ].

%% Atoms are ext 1 with the UTF-8 name; the ext header follows the name's size.
atom_ext_header_test_() ->
    [?_assertEqual(Bytes, enc(A)) || {A, Bytes} <- [
        {'', <<16#c7, 0, 1>>},                                   % ext 8, empty
        {a, <<16#d4, 1, "a">>},                                  % fixext 1
        {ab, <<16#d5, 1, "ab">>},                                % fixext 2
        {abc, <<16#c7, 3, 1, "abc">>},                           % ext 8
        {abcd, <<16#d6, 1, "abcd">>},                            % fixext 4
        {abcdefgh, <<16#d7, 1, "abcdefgh">>},                    % fixext 8
        {abcdefghijklmnop, <<16#d8, 1, "abcdefghijklmnop">>},    % fixext 16
        {'日本', <<16#c7, 6, 1, "日本"/utf8>>}                     % 6 UTF-8 bytes
    ]] ++
    [?_assertEqual(<<16#c7, 255, 1, (ascii(255))/binary>>,
                   enc(binary_to_atom(ascii(255), utf8)))].

%% Tuples are ext 2 holding a msgpack array.
tuple_test_() ->
    [
        ?_assertEqual(<<16#d4, 2, 16#90>>, enc({})),
        ?_assertEqual(<<16#d5, 2, 16#91, 1>>, enc({1})),
        ?_assertEqual(<<16#c7, 3, 2, 16#92, 1, 2>>, enc({1, 2})),
        ?_assertEqual(<<16#d6, 2, 16#93, 1, 2, 3>>, enc({1, 2, 3})),
        ?_assertEqual(<<16#c7, 6, 2, 16#92, 16#a1, "a", 16#d4, 2, 16#90>>, enc({<<"a">>, {}})),
        ?_assertEqual({1, {<<"a">>, [2.5]}}, dec_all(enc({1, {<<"a">>, [2.5]}})))
    ].

%% Pids, references, ports and funs are ext 4 carrying term_to_binary/1.
opaque_test_() ->
    Pid = self(),
    Ref = make_ref(),
    Port = hd(erlang:ports()),
    Fun = fun lists:reverse/1,
    Closure = fun() -> Pid end,
    [
        [?_assertEqual(iolist_to_binary(ext_bytes(4, term_to_binary(T))), enc(T)),
         ?_assertEqual(T, dec_all(enc(T)))]
     || T <- [Pid, Ref, Port, Fun, Closure]
    ].

ext_bytes(Type, Data) ->
    case byte_size(Data) of
        1 -> [16#d4, Type, Data];
        2 -> [16#d5, Type, Data];
        4 -> [16#d6, Type, Data];
        8 -> [16#d7, Type, Data];
        16 -> [16#d8, Type, Data];
        S when S < 256 -> [16#c7, S, Type, Data];
        S when S < 65536 -> [16#c8, <<S:16>>, Type, Data];
        S -> [16#c9, <<S:32>>, Type, Data]
    end.

array_test_() ->
    {timeout, 60, [
        ?_assertEqual(<<16#90>>, enc([])),
        ?_assertEqual(<<16#93, 1, 2, 3>>, enc([1, 2, 3])),
        ?_assertEqual(<<16#9f, (binary:copy(<<0>>, 15))/binary>>, enc(zeros(15))),
        ?_assertEqual(<<16#dc, 0, 16, (binary:copy(<<0>>, 16))/binary>>, enc(zeros(16))),
        ?_assertEqual(<<16#dc, 16#ff, 16#ff, (binary:copy(<<0>>, 65535))/binary>>, enc(zeros(65535))),
        ?_assertEqual(<<16#dd, 0, 1, 0, 0, (binary:copy(<<0>>, 65536))/binary>>, enc(zeros(65536))),
        %% an Erlang string is a list of integers
        ?_assertEqual(<<16#92, 16#68, 16#69>>, enc("hi")),
        ?_assertEqual(zeros(65536), dec_all(enc(zeros(65536))))
    ]}.

zeros(N) -> lists:duplicate(N, 0).

%% Map bodies come in maps:fold/3 order, so the header is checked byte for byte and the
%% body by decoding it.
map_test_() ->
    {timeout, 60, [
        ?_assertEqual(<<16#80>>, enc(#{})),
        ?_assertEqual(<<16#81, 16#a1, "a", 1>>, enc(#{<<"a">> => 1})),
        ?_assertEqual(<<16#81, 16#d4, 1, "a", 16#c0>>, enc(#{a => none}))
    ] ++ [
        {integer_to_list(N) ++ " entries",
         fun() ->
             M = maps:from_list([{K, 0} || K <- lists:seq(1, N)]),
             Bin = enc(M),
             ?assertEqual(Header, binary:part(Bin, 0, byte_size(Header))),
             ?assertEqual(M, dec_all(Bin))
         end}
     || {N, Header} <- [{15, <<16#8f>>}, {16, <<16#de, 0, 16>>},
                        {65535, <<16#de, 16#ff, 16#ff>>}, {65536, <<16#df, 0, 1, 0, 0>>}]
    ]}.

%% Map keys Python cannot hash (lists, maps, tuples holding them) travel as ext 4.
unhashable_map_key_test_() ->
    Keys = [[1, 2], #{a => 1}, {1, [2]}, {{#{}}}, "abc"],
    [
        [?_assertEqual(<<16#81, (iolist_to_binary(ext_bytes(4, term_to_binary(K))))/binary, 1>>,
                       enc(#{K => 1})),
         ?_assertEqual(#{K => 1}, dec_all(enc(#{K => 1})))]
     || K <- Keys
    ].

%% Keys that are distinct in Erlang but equal as Python dict keys (1 == 1.0 == True,
%% Atom('a') == 'a', b'\xff' from both <<255>> and {bytes, <<255>>}) must not merge.
python_equal_map_keys_test_() ->
    Maps = [
        #{1 => a, 1.0 => b},
        #{1 => a, true => b},
        #{0 => a, false => b, 0.0 => c},
        #{a => 1, <<"a">> => 2},
        #{{1, a} => x, {1.0, <<"a">>} => y, {true, a} => z},
        #{(1 bsl 70) => a, float(1 bsl 70) => b},
        #{1 => a, 1.0 => b, 2 => c, <<"k">> => d}
    ],
    [
        {lists:flatten(io_lib:format("~w", [M])),
         fun() ->
             Bin = enc(M),
             ?assertEqual(M, dec_all(Bin)),
             %% every key of a clashing group goes as an opaque term...
             [?assertNotEqual(nomatch, binary:match(Bin, iolist_to_binary(ext_bytes(4, term_to_binary(K)))))
              || K <- maps:keys(M), K =/= 2, K =/= <<"k">>],
             %% ...the others as themselves
             [?assertNotEqual(nomatch, binary:match(Bin, <<16#a1, "k", 16#d4, 1, "d">>))
              || is_map_key(<<"k">>, M)]
         end}
     || M <- Maps
    ] ++ [
        %% keys that merely look alike stay as they are
        %% (131 starts every external-term-format payload; none of these bytes contain it)
        ?_assertEqual(nomatch, binary:match(enc(#{a => 1, <<"b">> => 2, 1 => 3, 2.5 => 4, {1, a} => 5,
                                                  {1.5, <<"a">>} => 6, false => 7, none => 8}), <<131>>))
    ].

%%====================================================================
%% Encoding errors
%%====================================================================

encode_error_test_() ->
    [
        ?_assertThrow({badarg, {improper_list, 2}}, enc([1 | 2])),
        ?_assertThrow({badarg, {improper_list, b}}, enc(#{k => [[a | b]]})),
        ?_assertThrow({badarg, {improper_list, <<"t">>}}, enc({x, [1, 2 | <<"t">>]})),
        ?_assertThrow({badarg, {unsupported_term, <<1:3>>}}, enc(<<1:3>>)),
        ?_assertThrow({badarg, {unsupported_term, <<1, 2:7>>}}, enc([<<1, 2:7>>])),
        ?_assertThrow({badarg, _}, enc(#{<<1:1>> => 1}))
    ].

%% Python's msgpack unpacks nesting of ~1000; the encoder refuses beyond 500 with a clear
%% error, whatever the container, and never runs out of stack doing so.
too_deep_test_() ->
    [
        ?_assertEqual(erlpy_test:nest(list, 500), dec_all(enc(erlpy_test:nest(list, 500)))),
        ?_assertEqual(erlpy_test:nest(tuple, 500), dec_all(enc(erlpy_test:nest(tuple, 500)))),
        ?_assertEqual(erlpy_test:nest(map, 500), dec_all(enc(erlpy_test:nest(map, 500)))),
        ?_assertThrow({badarg, {too_deep, 500}}, enc(erlpy_test:nest(list, 501))),
        ?_assertThrow({badarg, {too_deep, 500}}, enc(erlpy_test:nest(tuple, 501))),
        ?_assertThrow({badarg, {too_deep, 500}}, enc(erlpy_test:nest(map, 501))),
        ?_assertThrow({badarg, {too_deep, 500}}, enc(erlpy_test:nest(mixed, 501))),
        ?_assertThrow({badarg, {too_deep, 500}}, enc(erlpy_test:nest(list, 100000))),
        ?_assertThrow({badarg, {too_deep, 500}}, enc(erlpy_test:nest(tuple, 100000)))
    ].

%%====================================================================
%% Decoding
%%====================================================================

%% Forms Python's msgpack (or another encoder) may send that erlpy_codec never emits.
decode_other_forms_test_() ->
    [?_assertEqual(T, dec_all(Bytes)) || {Bytes, T} <- [
        {<<16#cc, 5>>, 5},
        {<<16#cd, 0, 5>>, 5},
        {<<16#ce, 0, 0, 0, 5>>, 5},
        {<<16#cf, 0:56, 5>>, 5},
        {<<16#d0, 5>>, 5},
        {<<16#d1, 16#ff, 16#ff>>, -1},
        {<<16#d2, 16#ff, 16#ff, 16#ff, 16#ff>>, -1},
        {<<16#d3, -1:64>>, -1},
        {<<16#ca, 16#3f, 16#c0, 0, 0>>, 1.5},               % float32
        {<<16#d9, 3, "abc">>, <<"abc">>},
        {<<16#da, 0, 3, "abc">>, <<"abc">>},
        {<<16#db, 0, 0, 0, 3, "abc">>, <<"abc">>},           % str32
        {<<16#db, 0, 1, 0, 0, (ascii(65536))/binary>>, ascii(65536)},
        {<<16#c4, 1, 255>>, <<255>>},
        {<<16#c5, 0, 1, 255>>, <<255>>},
        {<<16#c6, 0, 0, 0, 1, 255>>, <<255>>},              % bin32
        {<<16#dc, 0, 1, 1>>, [1]},
        {<<16#dd, 0, 0, 0, 2, 1, 2>>, [1, 2]},              % array32
        {<<16#de, 0, 1, 1, 2>>, #{1 => 2}},
        {<<16#df, 0, 0, 0, 1, 1, 2>>, #{1 => 2}},           % map32
        {<<16#82, 1, 2, 1, 3>>, #{1 => 3}},                 % duplicate key: last wins
        {<<16#c9, 0, 0, 0, 1, 1, "a">>, a},                 % atom in ext 32
        {<<16#c7, 1, 5, 255>>, <<255>>},                    % ext 5, short
        {<<16#c7, 0, 5>>, <<>>},
        {<<16#c7, 1, 3, 0>>, 0},                            % bigint with empty magnitude
        {<<16#d5, 3, 1, 7>>, -7},                           % small bigint, negative
        {<<16#d5, 2, 16#91, 16#c0>>, {none}}
    ]].

%% Python's float('nan'), float('inf') and -float('inf') have no Erlang float.
special_float_test_() ->
    [?_assertEqual(T, dec_all(Bytes)) || {Bytes, T} <- [
        {<<16#cb, 16#7ff8000000000000:64>>, nan},           % quiet NaN
        {<<16#cb, 16#fff8000000000000:64>>, nan},           % negative NaN
        {<<16#cb, 16#7ff0000000000001:64>>, nan},           % signalling NaN
        {<<16#cb, 16#7fffffffffffffff:64>>, nan},
        {<<16#cb, 16#7ff0000000000000:64>>, infinity},
        {<<16#cb, 16#fff0000000000000:64>>, neg_infinity},
        {<<16#ca, 16#7fc00000:32>>, nan},
        {<<16#ca, 16#ffc00000:32>>, nan},
        {<<16#ca, 16#7f800001:32>>, nan},
        {<<16#ca, 16#7f800000:32>>, infinity},
        {<<16#ca, 16#ff800000:32>>, neg_infinity},
        %% largest finite values are still floats
        {<<16#cb, 16#7fefffffffffffff:64>>, 1.7976931348623157e308},
        {<<16#ca, 16#7f7fffff:32>>, 3.4028234663852886e38}
    ]].

%% decode/3 returns what follows the first object.
decode_rest_test_() ->
    [
        ?_assertEqual({1, <<2, 3>>}, dec(<<1, 2, 3>>)),
        ?_assertEqual({[1], <<16#c0>>}, dec(<<16#91, 1, 16#c0>>)),
        ?_assertEqual({<<"ab">>, <<"cd">>}, dec(<<16#a2, "abcd">>))
    ].

%% message/2: what {packet, 4} cannot carry is refused before it reaches a port. The
%% list refers to one 64 MiB binary 65 times: over 4 GiB of message, 64 MiB of memory.
message_too_large_test() ->
    B = binary:copy(<<0>>, 64 bsl 20),
    ?assertMatch([_ | _], erlpy_codec:message([1, 2, lists:duplicate(63, B)], none)),
    ?assertThrow({badarg, {too_large, Size}} when Size > 16#ffffffff,
                 erlpy_codec:message([1, 2, lists:duplicate(65, B)], none)).

%% decode_items/4: a chunk of a batch stream, prepended to what came before, reversed.
decode_items_test_() ->
    Items = fun(B, Acc) -> erlpy_codec:decode_items(B, Acc, none, ?NO_NEW_ATOM) end,
    Chunk1 = enc([1, 200, -5, 70000, 1.5, <<"x">>, none, [2, 3], {a, 4}]),
    Chunk2 = enc(lists:seq(1, 70000)),
    [
        ?_assertEqual([{a, 4}, [2, 3], none, <<"x">>, 1.5, 70000, -5, 200, 1], Items(Chunk1, [])),
        ?_assertEqual([3, 2, 1, old], Items(enc([1, 2, 3]), [old])),
        %% (compared with =:=, so a failure does not print 70,000 numbers)
        ?_assert([1, 200] ++ lists:seq(1, 70000) =:=
                     lists:reverse(Items(Chunk2, Items(enc([1, 200]), [])))),
        ?_assertEqual([], Items(enc([]), [])),
        ?_assertThrow({badarg, malformed}, Items(<<Chunk1/binary, 0>>, [])),
        ?_assertThrow({badarg, malformed}, Items(enc(7), [])),
        ?_assertThrow({badarg, _}, Items(binary:part(Chunk1, 0, byte_size(Chunk1) - 1), []))
    ].

%% Decoding never creates an atom itself: names that are not atoms yet go to NewAtom.
decode_new_atom_test() ->
    Name = iolist_to_binary(["erlpy_codec_tests_never_an_atom_", integer_to_list(erlang:unique_integer([positive]))]),
    Self = self(),
    NewAtom = fun(N) -> Self ! {new_atom, N}, replaced end,
    Before = erlang:system_info(atom_count),
    Bytes = iolist_to_binary([16#93, ext_bytes(1, Name), ext_bytes(1, <<"ok">>), ext_bytes(1, Name)]),
    ?assertEqual({[replaced, ok, replaced], <<>>}, erlpy_codec:decode(Bytes, none, NewAtom)),
    ?assertEqual(Before, erlang:system_info(atom_count)),
    ?assertError(badarg, binary_to_existing_atom(Name, utf8)),
    ?assertEqual([{new_atom, Name}, {new_atom, Name}], flush_mailbox()),
    %% existing atoms never reach NewAtom
    ?assertEqual({[ok, error, '日本'], <<>>},
                 erlpy_codec:decode(enc([ok, error, '日本']), none, ?NO_NEW_ATOM)).

%% Whatever NewAtom throws (the pool's budget: {badarg, {too_many_atoms, N}}) comes out.
decode_new_atom_throws_test() ->
    Name = <<"erlpy_codec_tests_budget_exhausted_xyz">>,
    NewAtom = fun(_) -> throw({badarg, {too_many_atoms, 0}}) end,
    ?assertThrow({badarg, {too_many_atoms, 0}},
                 erlpy_codec:decode(iolist_to_binary(ext_bytes(1, Name)), none, NewAtom)).

%% An ext 4 term naming atoms that do not exist is refused without creating them.
decode_opaque_unknown_atom_test() ->
    Name = <<"erlpy_codec_tests_unknown_in_ext4_q">>,
    Ext = <<131, 119, (byte_size(Name)), Name/binary>>,           % SMALL_ATOM_UTF8_EXT
    Before = erlang:system_info(atom_count),
    ?assertThrow({badarg, _}, dec(iolist_to_binary(ext_bytes(4, Ext)))),
    ?assertEqual(Before, erlang:system_info(atom_count)).

flush_mailbox() ->
    receive M -> [M | flush_mailbox()] after 0 -> [] end.

%% Every malformed input is a throw of {badarg, _}; nothing else escapes.
decode_error_test_() ->
    [{lists:flatten(io_lib:format("~w", [Bytes])),
      ?_assertThrow({badarg, _}, dec(Bytes))} || Bytes <- [
        <<>>,
        <<16#c1>>,                                         % never used
        <<16#cc>>, <<16#cd, 1>>, <<16#ce, 1, 2, 3>>, <<16#cf, 1:56>>,
        <<16#d0>>, <<16#d3, 0:32>>,
        <<16#ca, 0, 0>>, <<16#cb, 0:32>>, <<16#cb, 16#7ff00000:32>>,
        <<16#a3, "ab">>, <<16#d9>>, <<16#d9, 4, "abc">>, <<16#da, 0>>, <<16#db, 0, 0, 0, 9, "x">>,
        <<16#c4, 2, 1>>, <<16#c5, 0, 2, 1>>, <<16#c6, 0, 0, 0, 2, 1>>,
        <<16#92, 1>>, <<16#dc, 0, 2, 1>>, <<16#dd, 16#ff, 16#ff, 16#ff, 16#ff, 1>>,
        <<16#81, 1>>, <<16#de, 0, 1, 1>>, <<16#df, 16#ff, 16#ff, 16#ff, 16#ff>>,
        <<16#d4, 1>>, <<16#d5, 1, $a>>, <<16#d8, 1, "short">>, <<16#c7, 5, 1, "abc">>,
        <<16#c8, 0>>, <<16#c9, 0, 0, 0, 9, 1>>,
        <<16#d4, 9, 0>>,                                   % unknown ext type
        <<16#d4, 16#ff, 0>>,                               % ext -1 (msgpack timestamp)
        <<16#d6, 16#ff, 0:32>>,                            % a msgpack timestamp 32
        <<16#d4, 2, 1>>,                                   % tuple payload not an array
        <<16#d6, 2, 16#91, 1, 2, 3>>,                      % tuple payload with trailing bytes
        <<16#c7, 0, 2>>,                                   % tuple with empty payload
        <<16#d5, 2, 16#92, 1>>,                            % tuple payload truncated
        <<16#c7, 0, 3>>,                                   % bigint without sign byte
        <<16#d5, 3, 2, 1>>,                                % bigint with sign byte 2
        <<16#d5, 3, 255, 1>>,                              % bigint with sign byte 255
        <<16#d4, 4, 0>>,                                   % ext 4 that is not a term
        <<16#d5, 4, 131, 97>>,                             % ext 4 term truncated
        <<16#d5, 4, 131, 80>>,                             % ext 4 compressed, truncated
        <<16#c7, 6, 4, 131, 80, 255, 255, 255, 255>>       % ext 4 compressed, huge claimed size
    ]].

%% Names that cannot be atoms (too long, not UTF-8) reach NewAtom like any unknown name;
%% the pool's hook refuses them with a throw (here: the same logic as erlpy_pool's).
decode_impossible_atom_name_test_() ->
    NewAtom = fun(N) -> try binary_to_atom(N, utf8) catch error:_ -> throw({badarg, {bad_atom, N}}) end end,
    [?_assertThrow({badarg, {bad_atom, Name}},
                   erlpy_codec:decode(iolist_to_binary(ext_bytes(1, Name)), none, NewAtom))
     || Name <- [ascii(300), <<255>>, <<"a", 16#ed, 16#a0, 16#80>>]].

%% Short decoded binaries are copies: they must not keep the whole frame alive.
decode_copies_small_binaries_test() ->
    Frame = <<16#a2, "ab", (binary:copy(<<0>>, 100000))/binary>>,
    {B, _} = dec(Frame),
    ?assertEqual(<<"ab">>, B),
    ?assert(binary:referenced_byte_size(B) < 1000).

%%====================================================================
%% skip/1
%%====================================================================

%% One sample per msgpack type (and size class), in the forms Erlang and Python produce.
skip_samples() ->
    Encoded = [enc(T) || T <- [
        0, 127, -1, -32, -33, 128, 256, 65536, 1 bsl 32, -129, -32769, -(1 bsl 31) - 1,
        1 bsl 64, -(1 bsl 64), 1 bsl 112, 1.5, true, false, none,
        <<>>, <<"abc">>, ascii(31), ascii(32), ascii(256), ascii(512), ascii(65536),
        <<255>>, invalid(256), {bytes, ascii(65536)},
        [], [1, [2, [3]]], zeros(16), zeros(65536), #{}, #{a => [1]}, maps:from_list([{K, K} || K <- lists:seq(1, 16)]),
        a, ab, abc, abcd, abcdefgh, abcdefghijklmnop, '', {}, {1, 2, {3}},
        self(), make_ref(), hd(erlang:ports()), fun lists:reverse/1, #{[1] => {2}}
    ]],
    Encoded ++ [
        <<16#cc, 5>>, <<16#cd, 0, 5>>, <<16#ce, 0:32>>, <<16#cf, 0:64>>,
        <<16#d0, 5>>, <<16#d1, 0:16>>, <<16#d2, 0:32>>, <<16#d3, 0:64>>,
        <<16#ca, 16#7fc00000:32>>, <<16#cb, 16#7ff0000000000000:64>>,
        <<16#d9, 3, "abc">>, <<16#db, 0, 0, 0, 3, "abc">>, <<16#c6, 0, 0, 0, 1, 255>>,
        <<16#dd, 0, 0, 0, 1, 16#c0>>, <<16#df, 0, 0, 0, 1, 1, 2>>, <<16#de, 0, 1, 1, 2>>,
        <<16#c9, 0, 0, 0, 1, 1, "a">>, <<16#d4, 9, 0>>, <<16#d8, 99, 0:128>>
    ].

skip_test_() ->
    [
        {lists:flatten(io_lib:format("~w", [binary:part(B, 0, min(8, byte_size(B)))])),
         fun() ->
             ?assertEqual(<<>>, erlpy_codec:skip(B)),
             ?assertEqual(<<16#c0, 7>>, erlpy_codec:skip(<<B/binary, 16#c0, 7>>)),
             %% every proper prefix is refused with {badarg, _}
             Cuts = lists:usort([0, 1, byte_size(B) div 2, byte_size(B) - 1]),
             [?assertThrow({badarg, _}, erlpy_codec:skip(binary:part(B, 0, C)))
              || C <- Cuts, C < byte_size(B)]
         end}
     || B <- skip_samples()
    ].

%% skip/1 steps over objects that decode/3 rejects, so the rest of a frame survives.
skip_over_undecodable_test_() ->
    [
        ?_assertEqual(<<1>>, erlpy_codec:skip(<<16#d4, 9, 0, 1>>)),                 % unknown ext
        ?_assertEqual(<<1>>, erlpy_codec:skip(<<16#d4, 1, 255, 1>>)),               % bad atom
        ?_assertEqual(<<1>>, erlpy_codec:skip(<<16#92, 16#d4, 9, 0, 16#c0, 1>>)),
        ?_assertThrow({badarg, _}, erlpy_codec:skip(<<16#c1>>)),
        ?_assertThrow({badarg, _}, erlpy_codec:skip(<<>>))
    ].

%%====================================================================
%% Round trips of representative values
%%====================================================================

round_trip_test_() ->
    Values = [
        0, -1, 1 bsl 63, -(1 bsl 63), 1 bsl 64, 3.14, -0.5, 1.0e-300,
        <<>>, <<"héllo"/utf8>>, <<0, 255>>, binary:copy(<<"é"/utf8>>, 300),
        a, none, nil, true, false, nan, infinity, neg_infinity, '', 'with space', '日本',
        [], "string", [1, [2.0, [<<"x">>]]], {}, {a, {b, {c}}},
        #{}, #{a => 1, <<"b">> => [2], 3 => #{4 => 5}, {t} => x, [l] => y, #{m => 1} => z},
        #{none => none, nil => true},
        [self(), make_ref(), hd(erlang:ports()), fun() -> ok end, fun erlang:node/0],
        ascii(1 bsl 20)
    ],
    [?_assertEqual(V, dec_all(enc(V))) || V <- Values].

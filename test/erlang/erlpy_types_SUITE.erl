%% The type mapping of SPEC §6 against real Python workers: every supported term comes back
%% unchanged from a Python identity function, Python values map to the documented terms,
%% and values that cannot cross (unconvertible objects, improper lists, too many atoms, too
%% deep nesting) give clear errors while the pool keeps serving.
-module(erlpy_types_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

%% proper.hrl is not installed (Debian's erlang-proper-dev); the macros, as it defines them:
-define(FORALL(X, RawType, Prop), proper:forall(RawType, fun(X) -> Prop end)).
-define(WHENFAIL(Action, Prop), proper:whenfail(fun() -> Action end, fun() -> Prop end)).

suite() -> [{timetrap, {minutes, 15}}].

all() ->
    [
        identity_property,
        identity_examples,
        python_to_erlang,
        python_sets_become_lists,
        none_atom_nil,
        atom_is_str,
        bytes_or_str,
        bytes_tuple_input_form,
        python_equal_map_keys,
        opaque_terms_round_trip,
        send_to_pid_from_python,
        unconvertible_return_value,
        register_encoder,
        bad_opaque_term_from_python,
        improper_list_is_badarg,
        max_atoms,
        deep_nesting_erlang_to_python,
        deep_nesting_python_to_erlang,
        deep_tuples_round_trip,
        big_binaries,
        big_binaries_of_changing_sizes,
     {group, regressions}].

%% Bugs outside the codec that these tests found, kept as regressions; run them alone with
%% rebar3 ct --suite=test/erlang/erlpy_types_SUITE --group=regressions
groups() ->
    [{regressions, [], [unencodable_exception_message, async_unencodable_exception_message,
                       callback_with_undecodable_args, bad_atom_names_use_up_budget]}].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    ok = py:exec(<<"def ident(x):\n    return x\n">>),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(erlpy).

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    [py:stop_pool(Pool) || Pool <- [types_nil, types_user, types_atoms, types_atoms0, types_deep, types_bugs]],
    _ = erlpy_test:flush(),
    ok.

init_per_group(_, Config) -> Config.
end_per_group(_, _Config) -> ok.

%%====================================================================
%% Helpers
%%====================================================================

start_pool(Name, Opts) ->
    {ok, _} = py:start_pool(Name, maps:merge(#{size => 1}, Opts)),
    ok.

ident(T) -> py:call('__main__', ident, [T]).

%% Worker restarts of a pool: they must not grow when bad input is refused.
restarts(Pool) ->
    #{workers := Workers} = py:info(Pool),
    lists:sort([{OsPid, R} || #{os_pid := OsPid, restarts := R} <- Workers]).

contains(Bin, Part) -> binary:match(Bin, Part) =/= nomatch.

%%====================================================================
%% Round trips
%%====================================================================

%% {bytes, B} is an input form: it reaches Python as bytes and comes back as the plain
%% binary B, so the generator (shared with the codec's own properties) never makes one.
identity_property(_) ->
    erlpy_test:doc("1000 generated terms of every supported type come back unchanged from Python"),
    Restarts = restarts(default),
    Prop = ?FORALL(T, erlpy_codec_prop_tests:term(),
        begin
            ByCall = ident(T),
            ByEval = py:eval(<<"x">>, #{x => T}),
            ?WHENFAIL(ct:pal("term ~p~ncall ~p~neval ~p", [T, ByCall, ByEval]),
                      ByCall =:= {ok, T} andalso ByEval =:= {ok, T})
        end),
    ?assertEqual(true, erlpy_codec_prop_tests:check(Prop, 1000)),
    ?assertEqual(Restarts, restarts(default)).

identity_examples(_) ->
    erlpy_test:doc("representative terms, including type boundaries, come back unchanged"),
    Examples = [
        0, 127, 128, -32, -33, 255, 256, 65535, 65536, 1 bsl 32, (1 bsl 63) - 1, 1 bsl 63,
        (1 bsl 64) - 1, 1 bsl 64, -(1 bsl 63), -(1 bsl 63) - 1, 1 bsl 1000, -(1 bsl 1000),
        0.0, 1.5, -2.25, 1.0e308, 5.0e-324, 0.1,
        <<>>, <<"héllo"/utf8>>, <<255, 0>>, <<16#ef, 16#bf, 16#be>>, binary:copy(<<"a">>, 511),
        binary:copy(<<"a">>, 512), binary:copy(<<255>>, 512), binary:copy(<<"é"/utf8>>, 1000),
        true, false, none, nil, undefined, '', 'with space', '日本', nan, infinity, neg_infinity,
        [], "a string", [1, [2, [3]]], {}, {ok, 1}, {a, {b, {c, [d]}}},
        #{}, #{a => 1, <<"b">> => 2, 3 => 4, {t, 1} => 5, [l] => 6, #{m => 1} => 7, 1.5 => 8},
        #{none => none, nil => nil, true => false},
        [self(), make_ref(), hd(erlang:ports()), fun lists:sort/1, fun() -> self() end]
    ],
    [?assertEqual({ok, T}, ident(T)) || T <- Examples],
    ?assertEqual({ok, Examples}, ident(Examples)).

%%====================================================================
%% Python -> Erlang
%%====================================================================

python_to_erlang(_) ->
    erlpy_test:doc("Python values map to the terms of SPEC section 6"),
    Cases = [
        {<<"(1, 2)">>, {1, 2}},
        {<<"()">>, {}},
        {<<"{'a': [1, 2.5]}">>, #{<<"a">> => [1, 2.5]}},
        {<<"{(1, 'a'): None, None: True, 2.5: b'x'}">>, #{{1, <<"a">>} => none, none => true, 2.5 => <<"x">>}},
        {<<"[1, (2, [3, ()])]">>, [1, {2, [3, {}]}]},
        {<<"float('nan')">>, nan},
        {<<"float('inf')">>, infinity},
        {<<"-float('inf')">>, neg_infinity},
        {<<"[float('nan'), float('inf'), 1e308 * 10]">>, [nan, infinity, infinity]},
        {<<"0.1 + 0.2">>, 0.30000000000000004},
        {<<"-0.0 == 0.0">>, true},
        {<<"b'\\xff'">>, <<255>>},
        {<<"bytearray(b'ab')">>, <<"ab">>},
        {<<"'h\\u00e9llo'">>, <<"héllo"/utf8>>},
        {<<"'x' * 600">>, binary:copy(<<"x">>, 600)},
        {<<"2**100">>, 1 bsl 100},
        {<<"-2**100">>, -(1 bsl 100)},
        {<<"2**64 - 1">>, (1 bsl 64) - 1},
        {<<"2**64">>, 1 bsl 64},
        {<<"-2**63 - 1">>, -(1 bsl 63) - 1},
        {<<"erlang.atom('hello')">>, hello},
        {<<"erlang.atom('')">>, ''},
        {<<"erlang.atom('h\\u00e9')">>, 'hé'},
        {<<"None">>, none},
        {<<"True">>, true},
        {<<"False">>, false},
        {<<"[True, 1, 1.0]">>, [true, 1, 1.0]},
        {<<"frozenset()">>, []},
        {<<"set()">>, []},
        {<<"{'k': {1}}">>, #{<<"k">> => [1]}},
        {<<"__import__('enum').IntEnum('E', 'A B').B">>, 2},
        {<<"__import__('collections').OrderedDict(a=1)">>, #{<<"a">> => 1}},
        {<<"__import__('collections').namedtuple('P', 'x y')(1, 2)">>, {1, 2}}
    ],
    [?assertEqual({Code, {ok, Expected}}, {Code, py:eval(Code)}) || {Code, Expected} <- Cases].

python_sets_become_lists(_) ->
    erlpy_test:doc("set and frozenset become lists"),
    {ok, L} = py:eval(<<"{1, 2}">>),
    ?assertEqual([1, 2], lists:sort(L)),
    {ok, F} = py:eval(<<"frozenset({'a', 'b', 3})">>),
    ?assertEqual([3, <<"a">>, <<"b">>], lists:sort(F)).

none_atom_nil(_) ->
    erlpy_test:doc("a pool started with none_atom => nil maps None and nil both ways"),
    ok = start_pool(types_nil, #{none_atom => nil}),
    Opts = #{pool => types_nil},
    ?assertEqual({ok, nil}, py:eval(<<"None">>, #{}, Opts)),
    ?assertEqual({ok, true}, py:eval(<<"x is None">>, #{x => nil}, Opts)),
    %% there 'none' is an ordinary atom
    ?assertEqual({ok, false}, py:eval(<<"x is None">>, #{x => none}, Opts)),
    ?assertEqual({ok, [nil, none, #{nil => none}]},
                 py:eval(<<"x">>, #{x => [nil, none, #{nil => none}]}, Opts)),
    %% and the default pool is not affected
    ?assertEqual({ok, none}, py:eval(<<"None">>)),
    ?assertEqual({ok, false}, py:eval(<<"x is None">>, #{x => nil})).

atom_is_str(_) ->
    erlpy_test:doc("erlpy.Atom is a str subclass that goes back as the same atom"),
    ?assertEqual({ok, true}, py:eval(<<"isinstance(x, str)">>, #{x => some_atom})),
    ?assertEqual({ok, <<"Atom">>}, py:eval(<<"type(x).__name__">>, #{x => some_atom})),
    ?assertEqual({ok, true}, py:eval(<<"isinstance(x, __import__('erlpy').Atom)">>, #{x => some_atom})),
    ?assertEqual({ok, <<"SOME_ATOM">>}, py:eval(<<"x.upper()">>, #{x => some_atom})),
    ?assertEqual({ok, true}, py:eval(<<"x == 'some_atom'">>, #{x => some_atom})),
    ?assertEqual({ok, some_atom}, py:eval(<<"x">>, #{x => some_atom})),
    %% a str built from the atom's text is a str again: it comes back as a binary
    ?assertEqual({ok, <<"some_atom">>}, py:eval(<<"str(x)">>, #{x => some_atom})),
    ?assertEqual({ok, <<"str">>}, py:eval(<<"type(x).__name__">>, #{x => <<"some_atom">>})).

bytes_or_str(_) ->
    erlpy_test:doc("binaries arrive as str when valid UTF-8, else as bytes (short and long)"),
    Cases = [
        {<<255, 0>>, <<"bytes">>},
        {<<"héllo"/utf8>>, <<"str">>},
        {<<>>, <<"str">>},
        {<<16#ed, 16#a0, 16#80>>, <<"bytes">>},             % encoded surrogate
        {<<16#c0, 16#80>>, <<"bytes">>},                    % overlong
        {binary:copy(<<"é"/utf8>>, 600), <<"str">>},        % >= 512 bytes: Python decides
        {<<(binary:copy(<<"a">>, 600))/binary, 255>>, <<"bytes">>}
    ],
    [?assertEqual({Bin, {ok, Type}}, {Bin, py:eval(<<"type(x).__name__">>, #{x => Bin})})
     || {Bin, Type} <- Cases],
    ?assertEqual({ok, 5}, py:eval(<<"len(x)">>, #{x => <<"héllo"/utf8>>})),
    ?assertEqual({ok, 6}, py:eval(<<"len(x)">>, #{x => {bytes, <<"héllo"/utf8>>}})).

%% {bytes, B} sends B as Python bytes whatever it holds; it comes back as B.
bytes_tuple_input_form(_) ->
    erlpy_test:doc("{bytes, B} reaches Python as bytes and comes back as the binary B"),
    ?assertEqual({ok, <<"bytes">>}, py:eval(<<"type(x).__name__">>, #{x => {bytes, <<"abc">>}})),
    ?assertEqual({ok, <<"abc">>}, ident({bytes, <<"abc">>})),
    Long = binary:copy(<<"a">>, 1000),
    ?assertEqual({ok, <<"bytes">>}, py:eval(<<"type(x).__name__">>, #{x => {bytes, Long}})),
    ?assertEqual({ok, [<<"x">>, Long]}, ident([{bytes, <<"x">>}, {bytes, Long}])).

%% Python has 1 == 1.0 == True and Atom('a') == 'a'; such keys of one map must not merge.
python_equal_map_keys(_) ->
    erlpy_test:doc("map keys that are equal in Python but not in Erlang survive a round trip"),
    Maps = [
        #{1 => a, 1.0 => b},
        #{1 => a, true => b, 1.0 => c, <<"x">> => d},
        #{0 => a, false => b, 0.0 => c},
        #{a => 1, <<"a">> => 2},
        #{{1, a} => x, {1.0, <<"a">>} => y, {true, a} => z},
        #{(1 bsl 70) => a, float(1 bsl 70) => b},
        #{<<255>> => 1, {bytes, <<255>>} => 2}
    ],
    [?assertEqual({ok, M}, ident(M)) || M <- Maps, not is_map_key({bytes, <<255>>}, M)],
    %% {bytes, B} keys: both keys survive, the {bytes, _} one as itself (it cannot be told
    %% apart from <<255>> in Python otherwise)
    ?assertEqual({ok, #{<<255>> => 1, {bytes, <<255>>} => 2}},
                 ident(#{<<255>> => 1, {bytes, <<255>>} => 2})),
    %% keys that do not clash are plain Python keys
    ?assertEqual({ok, [<<"int">>, <<"float">>, <<"Atom">>, <<"str">>]},
                 py:eval(<<"[type(k).__name__ for k in sorted(x, key=str)]">>,
                         #{x => #{a => 1, 1 => 2, 2.5 => 3, <<"b">> => 4}})).

opaque_terms_round_trip(_) ->
    erlpy_test:doc("pids, references, ports and funs are opaque in Python and come back unchanged"),
    Pid = self(),
    Terms = [Pid, make_ref(), hd(erlang:ports()), fun lists:sort/1, fun() -> Pid end,
             spawn(fun() -> ok end)],
    [?assertEqual({ok, T}, ident(T)) || T <- Terms],
    ?assertEqual({ok, [<<"Pid">>, <<"Reference">>, <<"Port">>, <<"Fun">>, <<"Fun">>, <<"Pid">>]},
                 py:eval(<<"[type(t).__name__ for t in x]">>, #{x => Terms})),
    %% hashable: usable as dict keys and set members
    ?assertEqual({ok, 1}, py:eval(<<"len({p, p})">>, #{p => Pid})),
    ?assertEqual({ok, #{Pid => 1}}, ident(#{Pid => 1})),
    {ok, WorkerPid} = py:eval(<<"erlang.self()">>),
    ?assert(is_pid(WorkerPid)).

send_to_pid_from_python(_) ->
    erlpy_test:doc("a pid from Erlang can be used with erlpy.erlang.send"),
    ?assertEqual({ok, none}, py:eval(<<"erlang.send(p, ('hi', 1))">>, #{p => self()})),
    receive {<<"hi">>, 1} -> ok after 10000 -> ct:fail(no_message) end,
    ?assertEqual({ok, none},
                 py:eval(<<"erlang.send(p, [erlang.atom('ok'), p, {'k': 2**70}])">>, #{p => self()})),
    Self = self(),
    receive [ok, Self, #{<<"k">> := K}] -> ?assertEqual(1 bsl 70, K) after 10000 -> ct:fail(no_message) end.

%%====================================================================
%% Values that cannot cross
%%====================================================================

unconvertible_return_value(_) ->
    erlpy_test:doc("an unconvertible return value is a Python error naming its type; the pool goes on"),
    ok = start_pool(types_user, #{}),
    Opts = #{pool => types_user},
    ok = py:exec(<<"class Foo:\n    def __init__(self, x=1):\n        self.x = x\n">>, Opts),
    {error, {python, Type, Msg, Tb}} = py:eval(<<"Foo()">>, #{}, Opts),
    ct:log("~ts~n~ts~n~ts", [Type, Msg, Tb]),
    ?assert(contains(Type, <<"EncodeError">>)),
    ?assert(contains(Type, <<"erlpy">>)),
    ?assert(contains(Msg, <<"Foo">>)),
    ?assert(is_binary(Tb)),
    %% nested inside a container, and from py:call
    {error, {python, Type, Msg2, _}} = py:eval(<<"[1, {'k': (Foo(),)}]">>, #{}, Opts),
    ?assert(contains(Msg2, <<"Foo">>)),
    {error, {python, Type, _, _}} = py:call('__main__', 'Foo', [], #{}, Opts),
    %% builtin types are named too
    {error, {python, Type, Msg3, _}} = py:eval(<<"1j">>, #{}, Opts),
    ?assert(contains(Msg3, <<"complex">>)),
    {error, {python, Type, Msg4, _}} = py:eval(<<"(x for x in [])">>, #{}, Opts),
    ?assert(contains(Msg4, <<"generator">>)),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, Opts)).

register_encoder(_) ->
    erlpy_test:doc("erlpy.register_encoder makes a class (and its subclasses) convertible"),
    ok = start_pool(types_user, #{size => 2}),
    Opts = #{pool => types_user},
    ok = py:exec(<<"import erlpy\n"
                   "class Point:\n"
                   "    def __init__(self, x, y):\n"
                   "        self.x, self.y = x, y\n"
                   "class Point3(Point):\n"
                   "    def __init__(self, x, y, z):\n"
                   "        super().__init__(x, y)\n"
                   "        self.z = z\n"
                   "class Tagged:\n"
                   "    pass\n">>, Opts),
    {error, {python, _, _, _}} = py:eval(<<"Point(1, 2)">>, #{}, Opts),
    ok = py:exec(<<"erlpy.register_encoder(Point, lambda p: {'x': p.x, 'y': p.y})\n"
                   "erlpy.register_encoder(Tagged, lambda t: (erlang.atom('tagged'), {1, 2}, 2**80))\n">>,
                 Opts),
    %% every worker of the pool has it (exec runs everywhere)
    [?assertEqual({ok, #{<<"x">> => 1, <<"y">> => 2}}, py:eval(<<"Point(1, 2)">>, #{}, Opts))
     || _ <- lists:seq(1, 4)],
    ?assertEqual({ok, [#{<<"x">> => 1, <<"y">> => 2}]}, py:eval(<<"[Point3(1, 2, 3)]">>, #{}, Opts)),
    %% an encoder may return values that need converting themselves: tuple, atom, set, bigint
    {ok, {tagged, Set, Big}} = py:eval(<<"Tagged()">>, #{}, Opts),
    ?assertEqual({[1, 2], 1 bsl 80}, {lists:sort(Set), Big}).

bad_opaque_term_from_python(_) ->
    erlpy_test:doc("an opaque term Python forged from bad bytes is {error, {badarg, _}}"),
    Restarts = restarts(default),
    ?assertMatch({error, {badarg, _}}, py:eval(<<"__import__('erlpy').Pid(b'not a term')">>)),
    ?assertMatch({error, {badarg, _}},
                 py:eval(<<"[1, __import__('erlpy').Fun(b'\\x83d\\x00\\x15zq_nonexistent_atom_x')]">>)),
    ?assertMatch({error, {badarg, _}},
                 py:eval(<<"__import__('msgpack').ExtType(9, b'')">>)),
    ?assertEqual({ok, 3}, py:eval(<<"1 + 2">>)),
    ?assertEqual(Restarts, restarts(default)).

improper_list_is_badarg(_) ->
    erlpy_test:doc("an Erlang term Python cannot represent is {error, {badarg, _}} naming it"),
    ?assertEqual({error, {badarg, {improper_list, 2}}}, py:eval(<<"x">>, #{x => [1 | 2]})),
    ?assertEqual({error, {badarg, {improper_list, b}}}, py:call(builtins, len, [[a | b]])),
    ?assertEqual({error, {badarg, {improper_list, c}}}, ident(#{k => [{[x | c]}]})),
    ?assertEqual({error, {badarg, {unsupported_term, <<1:3>>}}}, ident(<<1:3>>)),
    ?assertEqual({ok, 3}, py:call(builtins, len, [[1, 2, 3]])).

max_atoms(_) ->
    erlpy_test:doc("max_atoms caps the atoms Python can create; the pool keeps serving"),
    U = integer_to_binary(erlang:unique_integer([positive])),
    Name = fun(I) -> <<"new_atom_", (integer_to_binary(I))/binary, "_", U/binary>> end,
    Code = <<"[erlang.atom(f'new_atom_{i}_", U/binary, "') for i in range(1000)]">>,
    %% warm up the same code path on another pool, so nothing is loaded during the count
    ok = start_pool(types_atoms0, #{max_atoms => 0}),
    ?assertEqual({error, {badarg, {too_many_atoms, 0}}},
                 py:eval(<<"erlang.atom('warm_up_", U/binary, "')">>, #{}, #{pool => types_atoms0})),
    ok = start_pool(types_atoms, #{max_atoms => 100}),
    Opts = #{pool => types_atoms},
    Before = erlang:system_info(atom_count),
    ?assertEqual({error, {badarg, {too_many_atoms, 100}}}, py:eval(Code, #{}, Opts)),
    Grown = erlang:system_info(atom_count) - Before,
    ct:log("atom table grew by ~p", [Grown]),
    %% exactly the first 100 names became atoms (a little slack for the rest of the VM)
    Exists = fun(I) -> try binary_to_existing_atom(Name(I), utf8) of _ -> true catch error:badarg -> false end end,
    ?assertEqual(lists:seq(0, 99), [I || I <- lists:seq(0, 999), Exists(I)]),
    ?assert(Grown >= 100 andalso Grown =< 110),
    %% the pool serves on: existing atoms decode, new ones are refused
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, Opts)),
    ?assertEqual({ok, [ok, error]}, py:eval(<<"[erlang.atom('ok'), erlang.atom('error')]">>, #{}, Opts)),
    ?assertEqual({ok, binary_to_existing_atom(Name(5), utf8)},
                 py:eval(<<"erlang.atom(n)">>, #{n => Name(5)}, Opts)),
    ?assertEqual({error, {badarg, {too_many_atoms, 100}}},
                 py:eval(<<"erlang.atom(n)">>, #{n => Name(500)}, Opts)),
    ?assertNot(Exists(500)).

deep_nesting_erlang_to_python(_) ->
    erlpy_test:doc("terms nested 100,000 deep are refused before they reach Python"),
    Restarts = restarts(default),
    [begin
         Deep = erlpy_test:nest(Kind, 100000),
         ?assertEqual({error, {badarg, {too_deep, 500}}}, py:eval(<<"x">>, #{x => Deep})),
         ?assertEqual({error, {badarg, {too_deep, 500}}}, py:call(builtins, len, [Deep]))
     end || Kind <- [list, tuple, map, mixed]],
    %% what fits in the request's own nesting still goes through
    ?assertEqual({ok, erlpy_test:nest(list, 450)}, ident(erlpy_test:nest(list, 450))),
    ?assertEqual({ok, erlpy_test:nest(map, 450)}, ident(erlpy_test:nest(map, 450))),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>)),
    ?assertEqual(Restarts, restarts(default)).

deep_nesting_python_to_erlang(_) ->
    erlpy_test:doc("values nested 100,000 deep in Python are a clear error; the worker survives"),
    ok = start_pool(types_deep, #{}),
    Opts = #{pool => types_deep},
    ok = py:exec(<<"def deep(n, kind):\n"
                   "    x = 0\n"
                   "    for i in range(n):\n"
                   "        if kind == 'list': x = [x]\n"
                   "        elif kind == 'tuple': x = (x,)\n"
                   "        elif kind == 'dict': x = {'k': x}\n"
                   "        else: x = [x] if i % 2 else (x,)\n"
                   "    return x\n">>, Opts),
    Restarts = restarts(types_deep),
    [begin
         Result = py:call('__main__', deep, [100000, Kind], #{}, Opts),
         ct:log("~ts: ~p", [Kind, Result]),
         ?assertMatch({error, {python, _, _, _}}, Result),
         {error, {python, Type, _, _}} = Result,
         ?assert(contains(Type, <<"EncodeError">>))
     end || Kind <- [<<"list">>, <<"tuple">>, <<"dict">>, <<"mixed">>]],
    ?assertEqual(Restarts, restarts(types_deep)),
    %% moderately deep values arrive intact
    ?assertEqual({ok, erlpy_test:nest(list, 400)}, py:call('__main__', deep, [400, <<"list">>], #{}, Opts)),
    ?assertEqual({ok, erlpy_test:nest(tuple, 400)}, py:call('__main__', deep, [400, <<"tuple">>], #{}, Opts)),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, Opts)).

%% Python's unpackb keeps ~32 KiB of parser stack on the C stack per nested tuple: tuples
%% nested a few hundred deep used to overflow the worker's stack (fixed in _codec.py).
deep_tuples_round_trip(_) ->
    erlpy_test:doc("tuples nested up to the encoder's limit reach Python and come back"),
    Restarts = restarts(default),
    [?assertEqual({Kind, N, {ok, erlpy_test:nest(Kind, N)}}, {Kind, N, ident(erlpy_test:nest(Kind, N))})
     || Kind <- [tuple, mixed], N <- [100, 200, 300, 497]],
    ?assertEqual({ok, 497}, py:eval(<<"(lambda f, t: f(f, t))(lambda f, t: 1 + f(f, t[0]) if isinstance(t, tuple) else 0, x)">>,
                                    #{x => erlpy_test:nest(tuple, 497)})),
    ?assertEqual(Restarts, restarts(default)).

big_binaries(_) ->
    erlpy_test:doc("1 MiB and 20 MiB binaries round trip through Python unchanged"),
    _ = rand:seed(exsss, {7, 8, 9}),
    Random1 = rand:bytes(1 bsl 20),
    Random20 = rand:bytes(20 bsl 20),
    Text1 = binary:part(binary:copy(<<"héllo wörld "/utf8>>, (1 bsl 20) div 10), 0, 1 bsl 20),
    Text20 = binary:copy(Text1, 20),
    [begin
         ?assertEqual({ok, B}, ident(B)),
         ?assertEqual({ok, byte_size(B)}, py:eval(<<"len(x if isinstance(x, bytes) else x.encode())">>, #{x => B}))
     end || B <- [Random1, Random20, Text1, Text20]],
    ?assertEqual({ok, [Random1, Text1]}, ident([Random1, Text1])).

big_binaries_of_changing_sizes(_) ->
    erlpy_test:doc("large payloads of growing and shrinking sizes, back to back on one worker "
                   "and mixed with small calls, all come back exactly (the worker reuses its "
                   "buffer for large frames and writes large results without copying them)"),
    ok = start_pool(types_sizes, #{size => 1}),
    Opts = #{pool => types_sizes},
    ok = py:exec(<<"def ident(x):\n    return x\n">>, Opts),
    _ = rand:seed(exsss, {1, 2, 3}),
    Sizes = [3 bsl 20, (1 bsl 20) + 1, 5 bsl 20, 65536, 65535, (2 bsl 20) - 3, 70000, 4 bsl 20],
    [begin
         Bytes = <<255, (rand:bytes(N - 1))/binary>>,
         Text = binary:part(binary:copy(<<"ünïcode "/utf8>>, N div 10 + 1), 0, N),
         ?assertEqual({N, {ok, Bytes}}, {N, py:call('__main__', ident, [Bytes], #{}, Opts)}),
         ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, Opts)),
         ?assertEqual({N, {ok, Text}}, {N, py:call('__main__', ident, [Text], #{}, Opts)}),
         ?assertEqual({N, {ok, [Text, Bytes]}}, {N, py:call('__main__', ident, [[Text, Bytes]], #{}, Opts)})
     end || N <- Sizes],
    %% Several at once: the replies' parts must not interleave on the pipe.
    Blobs = [rand:bytes(N) || N <- [2 bsl 20, 3 bsl 20, 100000, 1 bsl 20]],
    Results = erlpy_test:pmap(fun(B) -> py:call('__main__', ident, [B], #{}, Opts) end, Blobs),
    ?assertEqual([{ok, B} || B <- Blobs], Results),
    ok = py:stop_pool(types_sizes).

%%====================================================================
%% Regressions: bugs these tests found (all fixed)
%%====================================================================

%% Was: Runtime.error() packed str(exc); a message with a lone surrogate could not be
%% packed and the EncodeError killed the worker's main loop. Now: an {error, {python, ...}}
%% reply, the worker alive.
unencodable_exception_message(_) ->
    erlpy_test:doc("an exception whose message is not UTF-8 is reported; the worker lives on"),
    Restarts = restarts(default),
    Result = py:eval(<<"(_ for _ in ()).throw(ValueError('\\ud800'))">>, #{}, #{timeout => 10000}),
    ct:log("~p", [Result]),
    ?assertMatch({error, {python, <<"ValueError">>, _, _}}, Result),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>)),
    ?assertEqual(Restarts, restarts(default)).

%% Was: erlpy_pool:new_atom_fun/1 counted a name against max_atoms even when it could not
%% be an atom (too long), so such names used up the budget without creating atoms.
bad_atom_names_use_up_budget(_) ->
    erlpy_test:doc("names that cannot become atoms do not use up max_atoms"),
    ok = start_pool(types_atoms, #{max_atoms => 5}),
    Opts = #{pool => types_atoms},
    [?assertMatch({error, {badarg, _}}, py:eval(<<"erlang.atom('a' * 300)">>, #{}, Opts))
     || _ <- lists:seq(1, 10)],
    U = integer_to_binary(erlang:unique_integer([positive])),
    Fresh = <<"fresh_after_bad_names_", U/binary>>,
    ?assertEqual({ok, Fresh}, case py:eval(<<"erlang.atom(n)">>, #{n => Fresh}, Opts) of
                                  {ok, A} when is_atom(A) -> {ok, atom_to_binary(A)};
                                  Other -> Other
                              end).

%% Was, in async code: Runtime._await_call's error handler raised, the task died and no
%% reply was sent, so the caller waited for its timeout.
async_unencodable_exception_message(_) ->
    erlpy_test:doc("an async function's exception that is not UTF-8 gets a reply"),
    ok = start_pool(types_bugs, #{}),
    Opts = #{pool => types_bugs, timeout => 5000},
    ok = py:exec(<<"async def boom():\n    raise ValueError('\\ud800')\n">>, Opts),
    Result = py:call('__main__', boom, [], #{}, Opts),
    ct:log("~p", [Result]),
    ?assertMatch({error, {python, <<"ValueError">>, _, _}}, Result).

%% Was: a callback message from Python whose arguments did not decode (a forged opaque
%% term, an atom over the max_atoms budget) was dropped, and erlang.call() never returned.
%% Now: erlang.call() raises (ErlangError carrying the badarg).
callback_with_undecodable_args(_) ->
    erlpy_test:doc("erlang.call() with arguments Erlang cannot decode raises"),
    ok = py:register_function(types_echo, fun([X]) -> X end),
    try
        ok = start_pool(types_bugs, #{max_atoms => 0}),
        Opts = #{pool => types_bugs, timeout => 5000},
        ?assertEqual({ok, 42}, py:eval(<<"erlang.call('types_echo', 42)">>, #{}, Opts)),
        Forged = py:eval(<<"erlang.call('types_echo', __import__('erlpy').Pid(b'bad'))">>, #{}, Opts),
        ct:log("forged pid: ~p", [Forged]),
        ?assertMatch({error, {python, _, _, _}}, Forged),
        U = integer_to_binary(erlang:unique_integer([positive])),
        NewAtom = py:eval(<<"erlang.call('types_echo', erlang.atom('callback_atom_", U/binary, "'))">>,
                          #{}, Opts),
        ct:log("new atom: ~p", [NewAtom]),
        ?assertMatch({error, {python, _, _, _}}, NewAtom)
    after
        py:unregister_function(types_echo)
    end.

%% The core API against real Python workers: call, eval, exec and the types around them.
-module(erlpy_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

all() -> [call_sqrt, call_kwargs, eval_locals].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(erlpy),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(erlpy).

call_sqrt(_) ->
    erlpy_test:doc("py:call(math, sqrt, [16]) is {ok, 4.0}"),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

call_kwargs(_) ->
    erlpy_test:doc("kwargs map reaches Python as keyword arguments"),
    {ok, Json} = py:call(json, dumps, [#{name => <<"Alice">>}], #{indent => 2}),
    ?assertEqual(<<"{\n  \"name\": \"Alice\"\n}">>, Json).

eval_locals(_) ->
    erlpy_test:doc("locals map reaches the expression"),
    ?assertEqual({ok, 100}, py:eval(<<"x * y">>, #{x => 10, y => 10})).



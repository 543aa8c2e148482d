%% The public API of `py' against real Python workers on the default pool: call, eval,
%% exec, the error shapes of SPEC §7, Erlang functions called from Python, and Python
%% output reaching `logger'.
-module(erlpy_api_SUITE).
-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-compile([export_all, nowarn_export_all]).

all() ->
    [{group, calls}, {group, errors}, {group, callbacks}, {group, output}, {group, info},
     {group, regressions}].

groups() ->
    [
        {calls, [], [
            call_sqrt, call_kwargs_json, call_kwargs_proplist, eval_locals,
            eval_binary_locals, main_has_asyncio, call_main_after_exec, dotted_module,
            dotted_function,
            exec_syntax_error, exec_runtime_error_reported
        ]},
        {errors, [], [
            error_python_exception, error_module_not_found, error_attribute_missing,
            error_unconvertible_return, error_unconvertible_names_type,
            badarg_bad_names_nothing_executed,
            error_no_pool, error_bad_options, error_eval_syntax, programmer_errors_raise_badarg
        ]},
        {callbacks, [], [
            callback_add, callback_unregistered, callback_crash, callback_result_cannot_go,
            callback_reentrant,
            callback_acall, callback_after_unregister
        ]},
        {output, [], [print_to_logger, print_without_newline_to_logger, logging_warning_to_logger,
                      stderr_to_logger, fd_output_does_not_corrupt]},
        {info, [], [info_shape, default_pool_from_app_env]},
        %% Run by all/0: product bugs these tests found, all fixed since; each case's doc names the bug.
        {regressions, [], [
            call_options_proplist, badarg_non_list_args, badarg_name_not_binary,
            badarg_bad_code, badarg_bad_kwargs, badarg_bad_locals
        ]}
    ].

init_per_suite(Config) ->
    ok = erlpy_test:start_app(),
    Config.

end_per_suite(_Config) ->
    ok = application:stop(erlpy).

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(Case, _Config) when
    Case =:= callback_add; Case =:= callback_crash; Case =:= callback_reentrant;
    Case =:= callback_acall; Case =:= callback_after_unregister
->
    [py:unregister_function(N) || N <- [add, boom, reenter, api_tmp]],
    ok;
end_per_testcase(Case, _Config) when
    Case =:= print_to_logger; Case =:= print_without_newline_to_logger;
    Case =:= logging_warning_to_logger; Case =:= stderr_to_logger
->
    _ = logger:remove_handler(?MODULE),
    ok;
end_per_testcase(_Case, _Config) ->
    ok.

%% logger handler callback: forwards Python's log events (they carry pool and os_pid
%% metadata) to the test process.
log(#{meta := #{pool := _, os_pid := _}} = Event, #{config := #{pid := Pid}}) ->
    Pid ! {?MODULE, log, Event};
log(_, _) ->
    ok.

%%====================================================================
%% calls
%%====================================================================

call_sqrt(_) ->
    erlpy_test:doc("py:call(math, sqrt, [16]) is {ok, 4.0}"),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])),
    ?assertEqual({ok, 4.0}, py:call(<<"math">>, <<"sqrt">>, [16])).

call_kwargs_json(_) ->
    erlpy_test:doc("kwargs map reaches json.dumps as keyword arguments"),
    {ok, Json} = py:call(json, dumps, [#{name => <<"Alice">>}], #{indent => 2}),
    ?assertEqual(<<"{\n  \"name\": \"Alice\"\n}">>, Json).

call_kwargs_proplist(_) ->
    erlpy_test:doc("kwargs also as a proplist; options as a timeout"),
    ?assertEqual({ok, <<"[1, 2]">>}, py:call(json, dumps, [[1, 2]], [{indent, none}], 5000)),
    ?assertEqual({ok, 3}, py:call(builtins, int, [<<"11">>], #{base => 2}, #{timeout => 5000})).

eval_locals(_) ->
    erlpy_test:doc("py:eval(<<\"x * y\">>, #{x => 10, y => 10}) is {ok, 100}"),
    ?assertEqual({ok, 100}, py:eval(<<"x * y">>, #{x => 10, y => 10})),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>)),
    ?assertEqual({ok, 2}, py:eval("1 + 1")).

eval_binary_locals(_) ->
    erlpy_test:doc("locals with binary keys, visible inside comprehensions"),
    ?assertEqual({ok, [3, 4]}, py:eval(<<"[n + k for n in xs]">>, #{<<"xs">> => [1, 2], k => 2})).

main_has_asyncio(_) ->
    erlpy_test:doc("__main__ has asyncio imported"),
    ?assertEqual({ok, <<"asyncio">>}, py:eval(<<"asyncio.__name__">>)),
    ?assertEqual({ok, <<"asyncio">>}, py:eval(<<"__import__('__main__').asyncio.__name__">>)).

call_main_after_exec(_) ->
    erlpy_test:doc("a function defined with exec is callable as '__main__' on the default pool"),
    ok = py:exec(<<"def api_double(x):\n    return 2 * x\n">>),
    ?assertEqual({ok, 42}, py:call('__main__', api_double, [21])),
    ?assertEqual({ok, 42}, py:call(<<"__main__">>, <<"api_double">>, [21])),
    ?assertEqual({ok, 10}, py:eval(<<"api_double(5)">>)),
    %% every worker of the default pool has it
    Results = erlpy_test:pmap(fun(_) -> py:call('__main__', api_double, [1]) end, lists:seq(1, 8)),
    ?assertEqual(lists:duplicate(8, {ok, 2}), Results).

dotted_module(_) ->
    erlpy_test:doc("dotted module names: ('os.path', join)"),
    ?assertEqual({ok, <<"a/b">>}, py:call('os.path', join, [<<"a">>, <<"b">>])),
    ?assertEqual({ok, <<"a/b">>}, py:call(<<"os.path">>, <<"join">>, [<<"a">>, <<"b">>])).

dotted_function(_) ->
    erlpy_test:doc("dotted function names: (<<\"os\">>, <<\"path.join\">>)"),
    ?assertEqual({ok, <<"a/b">>}, py:call(<<"os">>, <<"path.join">>, [<<"a">>, <<"b">>])),
    ?assertEqual({ok, <<"c">>}, py:call(os, 'path.basename', [<<"a/b/c">>])).

exec_syntax_error(_) ->
    erlpy_test:doc("py:exec of bad code returns the SyntaxError"),
    ?assertMatch({error, {python, <<"SyntaxError">>, Msg, Tb}} when is_binary(Msg) andalso is_binary(Tb),
                 py:exec(<<"def broken(:\n  pass">>)),
    ?assertEqual(ok, py:exec(<<"api_after_syntax_error = 1">>)),
    ?assertEqual({ok, 1}, py:eval(<<"api_after_syntax_error">>)).

exec_runtime_error_reported(_) ->
    erlpy_test:doc("py:exec whose code raises returns the Python error"),
    ?assertMatch({error, {python, <<"ZeroDivisionError">>, _, _}}, py:exec(<<"1 / 0">>)),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>)).

%%====================================================================
%% errors (SPEC §7)
%%====================================================================

error_python_exception(_) ->
    erlpy_test:doc("a raised ValueError is {python, <<\"ValueError\">>, Msg, Traceback}, all binaries"),
    ok = py:exec(<<"def api_raise(msg):\n    raise ValueError(msg)\n">>),
    {error, {python, Type, Msg, Tb}} = py:call('__main__', api_raise, [<<"bad value 42">>]),
    ?assertEqual(<<"ValueError">>, Type),
    ?assertEqual(<<"bad value 42">>, Msg),
    ?assert(is_binary(Tb)),
    ?assertNotEqual(nomatch, binary:match(Tb, <<"api_raise">>)),
    ?assertNotEqual(nomatch, binary:match(Tb, <<"ValueError: bad value 42">>)),
    %% and from a stdlib function directly
    ?assertMatch({error, {python, <<"ValueError">>, <<"math domain error">>, _}},
                 py:call(math, sqrt, [-1])),
    %% a qualified name for exceptions outside builtins
    ?assertMatch({error, {python, <<"json.decoder.JSONDecodeError">>, _, _}},
                 py:call(json, loads, [<<"{not json">>])).

error_module_not_found(_) ->
    erlpy_test:doc("a missing module is {python, <<\"ModuleNotFoundError\">>, _, _}"),
    {error, {python, Type, Msg, _}} = py:call(no_such_module_xyz, f, []),
    ?assertEqual(<<"ModuleNotFoundError">>, Type),
    ?assertEqual(<<"No module named 'no_such_module_xyz'">>, Msg),
    ?assertMatch({error, {python, <<"ModuleNotFoundError">>, _, _}},
                 py:call('no_such_pkg_xyz.sub', f, [])),
    %% the traceback says where to put the module (the working directory is not searched)
    {error, {python, _, _, Traceback}} = py:call(no_such_module_xyz, f, []),
    ?assertNotEqual(nomatch, binary:match(Traceback, <<"is not on the pool's path">>)),
    %% not when the module is there and what it imports is missing
    ok = py:exec(<<"import sys, types\n"
                   "m = types.ModuleType('imports_a_missing_one')\n"
                   "exec('def f():\\n    import no_such_dep_xyz', m.__dict__)\n"
                   "sys.modules['imports_a_missing_one'] = m">>),
    {error, {python, <<"ModuleNotFoundError">>, _, Traceback2}} = py:call(imports_a_missing_one, f, []),
    ?assertEqual(nomatch, binary:match(Traceback2, <<"is not on the pool's path">>)).

error_attribute_missing(_) ->
    erlpy_test:doc("a missing function is an AttributeError naming it"),
    {error, {python, <<"AttributeError">>, Msg, _}} = py:call(math, no_such_fn_xyz, []),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"no_such_fn_xyz">>)),
    ?assertMatch({error, {python, <<"AttributeError">>, _, _}},
                 py:call('__main__', api_never_defined_xyz, [])).

error_unconvertible_return(_) ->
    erlpy_test:doc("returning an object of a user class is a Python error naming its type"),
    ok = py:exec(<<"class ApiOpaque:\n    pass\n\ndef api_opaque():\n    return ApiOpaque()\n">>),
    {error, {python, Type, Msg, Tb}} = py:call('__main__', api_opaque, []),
    ct:log("~p~n~ts", [Type, Msg]),
    ?assert(is_binary(Type) andalso is_binary(Tb)),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"ApiOpaque">>)),
    %% the worker is fine afterwards
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

error_unconvertible_names_type(_) ->
    erlpy_test:doc("an unconvertible value nested in a result also names its type"),
    {error, {python, _, Msg, _}} = py:eval(<<"[1, {'k': (2, object())}]">>),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"object">>)),
    {error, {python, _, Msg2, _}} = py:eval(<<"(x for x in [1])">>),
    ?assertNotEqual(nomatch, binary:match(Msg2, <<"generator">>)).

badarg_bad_names_nothing_executed(Config) ->
    erlpy_test:doc("names that are not dotted identifiers are {badarg, _}; nothing runs"),
    Marker = filename:join(?config(priv_dir, Config), "api_marker"),
    M = list_to_binary(Marker),
    Touch = <<"open('", M/binary, "', 'w')">>,
    Cases = [
        {<<"os; ", Touch/binary>>, <<"getpid">>},
        {<<"os">>, <<"getpid; ", Touch/binary>>},
        {<<"builtins">>, <<"__import__('os').system">>},
        {<<"builtins">>, <<"exec('", Touch/binary, "')">>},
        {<<"os", 0, "sys">>, <<"getpid">>},
        {<<"os">>, <<"getpid", 0>>},
        {<<"">>, <<"getpid">>},
        {<<"os">>, <<"">>},
        {<<"os..path">>, <<"join">>},
        {<<"os">>, <<"path.">>},
        {<<"os">>, <<"(getpid)">>}
    ],
    lists:foreach(
        fun({Mod, Fun}) ->
            R = py:call(Mod, Fun, []),
            ct:log("~p ~p -> ~p", [Mod, Fun, R]),
            ?assertMatch({error, {badarg, _}}, R)
        end,
        Cases
    ),
    ?assertMatch({error, {badarg, _}}, py:stream(<<"os; import sys">>, <<"getpid">>, [])),
    ?assertNot(filelib:is_file(Marker)),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

badarg_name_not_binary(_) ->
    erlpy_test:doc("names that are neither atom nor binary: {error, {badarg, _}} (BUG: thrown)"),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:call(math, 123, []) end)),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:call("math", sqrt, [1]) end)).

error_no_pool(_) ->
    erlpy_test:doc("an unknown pool is {error, {no_pool, Name}} for every entry point"),
    O = #{pool => nope},
    ?assertEqual({error, {no_pool, nope}}, py:call(math, sqrt, [4], #{}, O)),
    ?assertEqual({error, {no_pool, nope}}, py:eval(<<"1">>, #{}, O)),
    ?assertEqual({error, {no_pool, nope}}, py:exec(<<"x = 1">>, O)),
    ?assertEqual({error, {no_pool, nope}}, py:stream(builtins, range, [3], #{}, O)),
    ?assertEqual({error, {no_pool, nope}}, py:stream_eval(<<"range(3)">>, #{}, O)),
    ?assertEqual({error, {no_pool, nope}}, py:stream_start(builtins, range, [3], O)),
    ?assertEqual({error, {no_pool, nope}}, py:info(nope)),
    ?assertEqual({error, {no_pool, nope}}, py:stop_pool(nope)).

error_bad_options(_) ->
    erlpy_test:doc("bad call options are {error, {bad_option, _}}"),
    ?assertEqual({error, {bad_option, {bogus, 1}}}, py:call(math, sqrt, [4], #{}, #{bogus => 1})),
    ?assertEqual({error, {bad_option, {timeout, -5}}}, py:call(math, sqrt, [4], #{}, #{timeout => -5})),
    ?assertEqual({error, {bad_option, {timeout, soon}}}, py:call(math, sqrt, [4], #{}, #{timeout => soon})),
    ?assertEqual({error, {bad_option, {pool, "default"}}},
                 py:call(math, sqrt, [4], #{}, #{pool => "default"})),
    ?assertEqual({error, {bad_option, {options, not_options}}}, py:call(math, sqrt, [4], #{}, not_options)),
    ?assertEqual({error, {bad_option, {options, [1]}}}, py:call(math, sqrt, [4], #{}, [1])),
    ?assertEqual({error, {bad_option, {bogus, 1}}}, py:eval(<<"1">>, #{}, [{bogus, 1}])),
    ?assertEqual({error, {bad_option, {bogus, 1}}}, py:exec(<<"x = 1">>, #{bogus => 1})),
    ?assertEqual({error, {bad_option, {window, 0}}}, py:stream_start(builtins, range, [3], #{window => 0})),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

programmer_errors_raise_badarg(_) ->
    erlpy_test:doc("ill-typed pool names, stream references, ack counts and function "
                   "names raise badarg (not function_clause), naming the arguments"),
    F = fun([X]) -> X end,
    Ref = make_ref(),
    Raises = [
        {start_pool, ["p", #{}]}, {start_pool, [<<"p">>, #{}]}, {stop_pool, ["p"]},
        {info, ["p"]}, {child_spec, [#{size => 2}]}, {child_spec, [[{name, "p"}]]},
        {child_spec, [not_options]},
        {stream_cancel, [foo]}, {stream_send, [foo, 1]}, {stream_close, [foo]},
        {stream_ack, [Ref, 0]}, {stream_ack, [Ref, -1]}, {stream_ack, [Ref, x]},
        {stream_ack, [foo, 1]},
        {register_function, ["f", F]}, {register_function, [f, not_a_fun]},
        {register_function, [f, {m, "f"}]}, {unregister_function, ["f"]}
    ],
    lists:foreach(
        fun({Fun, Args}) ->
            try apply(py, Fun, Args) of
                Result -> ct:fail({no_exception, Fun, Args, Result})
            catch
                error:badarg:Stack -> ?assertMatch([{py, Fun, Args, _} | _], Stack)
            end
        end,
        Raises),
    %% the same functions with arguments of the right types do not raise
    ?assertEqual(ok, py:stream_cancel(Ref)),
    ?assertEqual(ok, py:stream_ack(Ref, 1)),
    ?assertEqual(ok, py:register_function(f_api_suite, F)),
    ?assertEqual(ok, py:unregister_function(f_api_suite)),
    ?assertEqual({error, {no_pool, nope}}, py:stop_pool(nope)).

error_eval_syntax(_) ->
    erlpy_test:doc("an eval of a statement or broken code is a SyntaxError"),
    ?assertMatch({error, {python, <<"SyntaxError">>, _, _}}, py:eval(<<"x = 1">>)),
    ?assertMatch({error, {python, <<"SyntaxError">>, _, _}}, py:eval(<<"1 +">>)),
    %% a statement's traceback says to use exec; broken code's does not
    {error, {python, _, _, Statement}} = py:eval(<<"import os">>),
    ?assertNotEqual(nomatch, binary:match(Statement, <<"run statements with exec">>)),
    {error, {python, _, _, Broken}} = py:eval(<<"1 +">>),
    ?assertEqual(nomatch, binary:match(Broken, <<"run statements with exec">>)),
    ?assertMatch({error, {python, <<"NameError">>, _, _}}, py:eval(<<"undefined_name_xyz">>)).

%%====================================================================
%% regressions: bad input must give {error, {badarg, _}}, not crash the caller
%%====================================================================

call_options_proplist(_) ->
    erlpy_test:doc("options as a proplist (BUG: any proplist is {error, {bad_option, List}})"),
    ?assertEqual({ok, 2}, py:eval(<<"1 + 1">>, #{}, [{timeout, 5000}])),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16], #{}, [{pool, default}, {timeout, 5000}])),
    ?assertEqual(ok, py:exec(<<"api_proplist = 1">>, [{pool, default}])),
    ?assertMatch({ok, [0, 1, 2]}, py:stream(builtins, range, [3], #{}, [{timeout, 5000}])).

badarg_non_list_args(_) ->
    erlpy_test:doc("a non-list Args is {error, {badarg, _}} (BUG: thrown at the caller)"),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:call(math, sqrt, 16) end)),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:call(math, sqrt, foo) end)).

badarg_bad_code(_) ->
    erlpy_test:doc("eval/exec of a non-text code is {error, {badarg, _}} (BUG: error:badarg)"),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:eval(123) end)),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:exec(make_ref()) end)).

badarg_bad_kwargs(_) ->
    erlpy_test:doc("non-map, non-proplist kwargs are {error, {badarg, _}} (BUG: crash)"),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:call(math, sqrt, [1], "abc") end)),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:call(math, sqrt, [1], 42) end)).

badarg_bad_locals(_) ->
    erlpy_test:doc("locals with a non atom/binary key are {error, {badarg, _}} (BUG: thrown)"),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:eval(<<"1">>, #{1 => 2}) end)),
    ?assertMatch({error, {badarg, _}}, erlpy_test:catch_all(fun() -> py:eval(<<"1">>, [1]) end)).

%%====================================================================
%% Erlang functions called from Python
%%====================================================================

callback_add(_) ->
    erlpy_test:doc("Python calls a registered Erlang fun and gets its result"),
    ok = py:register_function(add, fun([A, B]) -> A + B end),
    ?assertEqual({ok, 12}, py:eval(<<"erlang.call('add', 5, 7)">>)),
    %% attribute style and from a function defined with exec
    ?assertEqual({ok, 3}, py:eval(<<"erlang.add(1, 2)">>)),
    ok = py:exec(<<"import erlpy.erlang\ndef api_add_via_erlang(a, b):\n"
                   "    return erlpy.erlang.call('add', a, b)\n">>),
    ?assertEqual({ok, 30}, py:call('__main__', api_add_via_erlang, [10, 20])).

callback_unregistered(_) ->
    erlpy_test:doc("an unregistered name raises erlpy.erlang.ErlangError naming it"),
    {error, {python, Type, Msg, _}} = py:eval(<<"erlang.call('api_not_registered_xyz', 1)">>),
    ?assertEqual(<<"erlpy.erlang.ErlangError">>, Type),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"api_not_registered_xyz">>)),
    %% Python code can catch it
    ok = py:exec(<<"import erlpy.erlang\ndef api_catch():\n    try:\n"
                   "        erlpy.erlang.call('api_not_registered_xyz')\n"
                   "    except erlpy.erlang.ErlangError as e:\n        return 'caught'\n">>),
    ?assertEqual({ok, <<"caught">>}, py:call('__main__', api_catch, [])).

callback_crash(_) ->
    erlpy_test:doc("a registered fun that crashes raises a Python exception with the reason"),
    ok = py:register_function(boom, fun([_]) -> error(kaboom) end),
    {error, {python, Type, Msg, _}} = py:eval(<<"erlang.call('boom', 1)">>),
    ?assertEqual(<<"erlpy.erlang.ErlangError">>, Type),
    ?assertNotEqual(nomatch, binary:match(Msg, <<"kaboom">>)),
    %% a wrong arity (function_clause) too; the worker goes on
    {error, {python, <<"erlpy.erlang.ErlangError">>, _, _}} = py:eval(<<"erlang.call('boom')">>),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

callback_result_cannot_go(_) ->
    erlpy_test:doc("a registered fun whose result cannot go to Python (a bitstring, an "
                   "improper list) raises ErlangError in Python at once; the bitstring "
                   "crashed the callback's process and Python waited for ever"),
    ok = py:register_function(api_bits, fun([]) -> <<1:3>> end),
    ok = py:register_function(api_improper, fun([]) -> [a | b] end),
    [begin
         {error, {python, Type, Msg, _}} = py:eval(<<"erlang.call('", Name/binary, "')">>, #{}, 5000),
         ?assertEqual(<<"erlpy.erlang.ErlangError">>, Type),
         ?assertNotEqual(nomatch, binary:match(Msg, <<"badarg">>))
     end || Name <- [<<"api_bits">>, <<"api_improper">>]],
    ok = py:exec(<<"async def api_abits():\n    return await erlpy.erlang.acall('api_bits')\n">>),
    ?assertMatch({error, {python, <<"erlpy.erlang.ErlangError">>, _, _}},
                 py:call('__main__', api_abits, [], #{}, 5000)),
    [ok = py:unregister_function(N) || N <- [api_bits, api_improper]].

callback_reentrant(_) ->
    erlpy_test:doc("a registered fun may itself call py:call (reentrant)"),
    ok = py:register_function(reenter, fun([X]) ->
        {ok, V} = py:call(math, sqrt, [X]),
        V + 1
    end),
    ?assertEqual({ok, 5.0}, py:eval(<<"erlang.call('reenter', 16)">>, #{}, 10000)).

callback_acall(_) ->
    erlpy_test:doc("await erlpy.erlang.acall(...) from an async function"),
    ok = py:register_function(add, fun([A, B]) -> A + B end),
    ok = py:exec(<<"import erlpy.erlang\nasync def api_aadd(a, b):\n"
                   "    await asyncio.sleep(0)\n"
                   "    return await erlpy.erlang.acall('add', a, b)\n">>),
    ?assertEqual({ok, 9}, py:call('__main__', api_aadd, [4, 5])),
    %% the blocking call() from async code is refused with a clear error
    ok = py:exec(<<"async def api_bad_sync_call():\n    return erlpy.erlang.call('add', 1, 2)\n">>),
    ?assertMatch({error, {python, _, _, _}}, py:call('__main__', api_bad_sync_call, [], #{}, 5000)).

callback_after_unregister(_) ->
    erlpy_test:doc("after unregister_function the name is no longer callable"),
    ok = py:register_function(api_tmp, fun([]) -> yes end),
    ?assertEqual({ok, yes}, py:eval(<<"erlang.call('api_tmp')">>)),
    ok = py:unregister_function(api_tmp),
    ?assertMatch({error, {python, <<"erlpy.erlang.ErlangError">>, _, _}},
                 py:eval(<<"erlang.call('api_tmp')">>)).

%%====================================================================
%% output -> logger
%%====================================================================

print_to_logger(_) ->
    erlpy_test:doc("print() inside a call reaches logger at notice, with pool/worker/os_pid"),
    add_handler(),
    ok = py:exec(<<"def api_say(s):\n    print(s)\n    return 'said'\n">>),
    Text = unique_text(<<"printed">>),
    ?assertEqual({ok, <<"said">>}, py:call('__main__', api_say, [Text])),
    #{level := Level, meta := Meta} = await_log(Text),
    ?assertEqual(notice, Level),
    check_meta(Meta).

print_without_newline_to_logger(_) ->
    erlpy_test:doc("output left without its newline reaches logger when the call ends (a "
                   "progress line, print(x, end='')): it was held for ever; the lines of one "
                   "write are one event"),
    add_handler(),
    Text = unique_text(<<"partial">>),
    ?assertMatch({ok, _}, py:eval(<<"print(t, end='')">>, #{t => Text})),
    #{level := notice} = await_log(Text),
    Lines = unique_text(<<"lines">>),
    ?assertMatch({ok, _}, py:eval(<<"__import__('sys').stdout.write(t + '-1\\n' + t + '-2\\n')">>,
                                  #{t => Lines})),
    #{msg := Msg} = await_log(Lines),
    ?assertEqual(<<Lines/binary, "-1\n", Lines/binary, "-2">>, msg_text(Msg)).

logging_warning_to_logger(_) ->
    erlpy_test:doc("logging.warning() reaches logger at warning"),
    add_handler(),
    Text = unique_text(<<"warned">>),
    ?assertMatch({ok, _}, py:eval(<<"__import__('logging').warning(t)">>, #{t => Text})),
    #{level := Level, meta := Meta} = await_log(Text),
    ?assertEqual(warning, Level),
    check_meta(Meta).

stderr_to_logger(_) ->
    erlpy_test:doc("writes to sys.stderr reach logger at warning"),
    add_handler(),
    Text = unique_text(<<"stderr">>),
    ?assertMatch({ok, _}, py:eval(<<"__import__('sys').stderr.write(t + '\\n')">>, #{t => Text})),
    #{level := Level, meta := Meta} = await_log(Text),
    ?assertEqual(warning, Level),
    check_meta(Meta).

fd_output_does_not_corrupt(_) ->
    erlpy_test:doc("bytes written straight to fds 1 and 2 do not corrupt the protocol"),
    Code = <<"(__import__('os').write(1, b'\\x00\\x00\\x00\\x05junk-on-fd1\\n'),"
             " __import__('os').write(2, b'junk-on-fd2\\n'))">>,
    ?assertMatch({ok, {_, _}}, py:eval(Code)),
    ?assertEqual({ok, 4.0}, py:call(math, sqrt, [16])).

%%====================================================================
%% info
%%====================================================================

info_shape(_) ->
    erlpy_test:doc("py:info/0,1: workers (os_pid, in_flight, restarts), queued, python version"),
    Info = py:info(default),
    #{workers := Workers, queued := Queued, python := Version} = Info,
    ?assert(is_integer(Queued) andalso Queued >= 0),
    ?assert(is_binary(Version)),
    ?assertMatch({match, _}, re:run(Version, <<"^3\\.[0-9]+\\.[0-9]+">>)),
    ?assertEqual(2, length(Workers)),
    lists:foreach(
        fun(W) ->
            ?assertMatch(#{os_pid := P, in_flight := F, restarts := R}
                           when is_integer(P) andalso is_integer(F) andalso is_integer(R), W),
            ?assert(erlpy_test:os_pid_alive(maps:get(os_pid, W)))
        end,
        Workers
    ),
    All = py:info(),
    ?assert(is_map(All)),
    ?assertMatch(#{default := #{workers := [_, _]}}, All),
    ?assertEqual(Info, py:info({default, node()})).

default_pool_from_app_env(_) ->
    erlpy_test:doc("the application starts the default pool with size 2 from test.config"),
    ?assertEqual({ok, #{default => #{size => 2}}}, application:get_env(erlpy, pools)),
    #{workers := Workers} = py:info(default),
    ?assertEqual(2, length(Workers)),
    OsPids = lists:sort([P || #{os_pid := P} <- Workers]),
    Seen = lists:usort(erlpy_test:pmap(fun(_) ->
        {ok, P} = py:eval(<<"(__import__('time').sleep(0.1), __import__('os').getpid())[1]">>),
        P
    end, lists:seq(1, 8))),
    ?assertEqual(OsPids, Seen).

%%====================================================================
%% helpers
%%====================================================================

add_handler() ->
    _ = logger:remove_handler(?MODULE),
    ok = logger:add_handler(?MODULE, ?MODULE, #{config => #{pid => self()}}).

unique_text(Prefix) ->
    N = integer_to_binary(erlang:unique_integer([positive])),
    <<Prefix/binary, "-", N/binary>>.

%% Waits for a Python log event whose text contains Text.
await_log(Text) ->
    receive
        {?MODULE, log, #{msg := Msg} = Event} ->
            case binary:match(msg_text(Msg), Text) of
                nomatch -> await_log(Text);
                _ -> Event
            end
    after 10000 ->
        error({no_log_event, Text})
    end.

msg_text({string, S}) -> unicode:characters_to_binary(S);
msg_text({report, R}) -> iolist_to_binary(io_lib:format("~p", [R]));
msg_text({Format, Args}) -> unicode:characters_to_binary(io_lib:format(Format, Args)).

check_meta(Meta) ->
    ct:log("meta: ~p", [Meta]),
    ?assertMatch(#{pool := default, worker := W, os_pid := P}
                   when is_integer(W) andalso is_integer(P), Meta),
    #{workers := Workers} = py:info(default),
    ?assert(lists:member(maps:get(os_pid, Meta), [P || #{os_pid := P} <- Workers])),
    ?assert(lists:member(maps:get(worker, Meta), [I || #{index := I} <- Workers])).

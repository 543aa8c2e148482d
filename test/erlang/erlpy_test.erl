%% Helpers shared by the Common Test suites.
-module(erlpy_test).
-export([doc/1, collect/1, collect/2, flush/0, wait_until/1, wait_until/2,
         python/0, start_app/0, os_pid_alive/1, start_app_with_path/1, restore_app/1]).

%% A one-line description of a test case, shown in the CT log (as ranch's ct_helper does).
doc(Text) -> ct:comment(Text), ct:log("~ts", [Text]).

%% Everything a stream owner receives for Ref: {Terminal, Items}.
collect(Ref) -> collect(Ref, 30000).
collect(Ref, Timeout) -> collect(Ref, Timeout, []).
collect(Ref, Timeout, Acc) ->
    receive
        {py_stream, Ref, {data, V}} -> collect(Ref, Timeout, [V | Acc]);
        {py_stream, Ref, Terminal} -> {Terminal, lists:reverse(Acc)}
    after Timeout -> {no_terminal, lists:reverse(Acc)}
    end.

%% All messages in the mailbox, removed.
flush() ->
    receive M -> [M | flush()] after 0 -> [] end.

%% Poll Fun until it returns true (tests must not assert timings; they may wait).
wait_until(Fun) -> wait_until(Fun, 10000).
wait_until(Fun, Timeout) when Timeout =< 0 -> Fun() orelse error(wait_until_timeout);
wait_until(Fun, Timeout) ->
    case Fun() of
        true -> ok;
        _ -> timer:sleep(20), wait_until(Fun, Timeout - 20)
    end.

%% The interpreter the tests use (the project virtualenv, set by the Makefile).
python() -> os:getenv("ERLPY_PYTHON", "python3").

start_app() ->
    {ok, _} = application:ensure_all_started(erlpy),
    ok.

%% (Re)start erlpy with a default pool of 2 that has Dir on its sys.path, whatever ran
%% before; returns what restore_app/1 needs to put the configuration back.
start_app_with_path(Dir) ->
    _ = application:stop(erlpy),
    _ = application:load(erlpy),
    Saved = application:get_env(erlpy, pools),
    ok = application:set_env(erlpy, pools, #{default => #{size => 2, path => [Dir]}}),
    {ok, _} = application:ensure_all_started(erlpy),
    Saved.

restore_app(Saved) ->
    ok = application:stop(erlpy),
    case Saved of
        {ok, Pools} -> application:set_env(erlpy, pools, Pools);
        undefined -> application:unset_env(erlpy, pools)
    end,
    ok.

os_pid_alive(OsPid) ->
    filelib:is_dir("/proc/" ++ integer_to_list(OsPid)) andalso
        not lists:prefix("Z", state_of(OsPid)).

state_of(OsPid) ->
    case file:read_file("/proc/" ++ integer_to_list(OsPid) ++ "/stat") of
        {ok, Stat} ->
            [_, Rest] = binary:split(Stat, <<") ">>),
            binary_to_list(binary:part(Rest, 0, 1));
        _ -> "X"
    end.

#!/usr/bin/env escript
%% The web demo: `make demo-web' runs it. Serves examples/web/index.html and streams
%% tokens from examples/web/web_tokens.py to the browser over Server-Sent Events.
%%
%%   escript examples/web/web_demo.escript [Port]     (default 0: any free port)
%%
%% Prints the URL, then serves until Ctrl-C. Environment:
%%   ERLPY_WEB_STATUS_DIR   where the generator writes each stream's outcome (default: a
%%                          fresh directory under the system's temp directory)
%%   ERLPY_WEB_UNTIL_EOF=1  stop cleanly (httpd, then erlpy) when standard input ends, as
%%                          test/python/test_web_demo.py does
-mode(compile).

main(Args) ->
    Port = case Args of [P] -> list_to_integer(P); [] -> 0 end,
    Here = filename:dirname(filename:absname(escript:script_name())),
    Root = filename:dirname(filename:dirname(Here)),
    true = code:add_patha(filename:join([Root, "_build", "default", "lib", "erlpy", "ebin"])),
    %% web_demo.erl is compiled here, in memory: no build step for the example.
    {ok, web_demo, Beam} = compile:file(filename:join(Here, "web_demo.erl"),
                                        [binary, report, return_errors]),
    {module, web_demo} = code:load_binary(web_demo, "web_demo.erl", Beam),
    StatusDir = case os:getenv("ERLPY_WEB_STATUS_DIR") of
                    false -> temp_dir();
                    Dir -> Dir
                end,
    %% The default pool, with examples/web on its sys.path; two workers, each running
    %% any number of async generators at once.
    ok = application:load(erlpy),
    ok = application:set_env(erlpy, pools, #{default => #{size => 2, path => [Here]}}),
    {ok, _} = application:ensure_all_started(erlpy),
    {ok, Httpd, Bound} = web_demo:start(#{port => Port, dir => Here, status_dir => StatusDir}),
    io:format("erlpy web demo: http://127.0.0.1:~b/~n", [Bound]),
    io:format("  (several tabs at once; the generators' outcomes go to ~ts)~n", [StatusDir]),
    case os:getenv("ERLPY_WEB_UNTIL_EOF") of
        "1" -> wait_for_eof();
        _ -> io:format("  Ctrl-C stops it~n"), receive after infinity -> ok end
    end,
    ok = web_demo:stop(Httpd),
    ok = application:stop(erlpy).

wait_for_eof() ->
    case io:get_line("") of
        eof -> ok;
        {error, _} -> ok;
        _ -> wait_for_eof()
    end.

temp_dir() ->
    Base = case os:getenv("TMPDIR") of false -> "/tmp"; T -> T end,
    Dir = filename:join(Base, "erlpy-web-" ++ os:getpid()),
    ok = filelib:ensure_path(Dir),
    Dir.

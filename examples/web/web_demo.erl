%% The web demo's server: an `inets' httpd module that streams tokens from a Python async
%% generator (web_tokens.py) to the browser over Server-Sent Events.
%%
%%   GET /                     the page (index.html)
%%   GET /stream?id=ID&...     text/event-stream: `start', one `token' per word, then
%%                             `done', `cancelled' or `failure'
%%   GET /stop?id=ID           py:stream_cancel/1 on that stream (the Stop button)
%%   GET /status               JSON: the server's counters and, per stream, the outcome
%%                             that the generator's `finally' wrote
%%
%% The request handler process of /stream owns the erlpy stream: each
%% {py_stream, Ref, {data, Word}} becomes one chunk on the socket at once. A client that
%% goes away (tab closed) is noticed at the next failing send and the stream is cancelled
%% too. web_demo.escript compiles and starts this module (`make demo-web').
-module(web_demo).
-export([start/1, stop/1, do/1]).

-include_lib("inets/include/httpd.hrl").

-define(TABLE, web_demo_streams).
-define(COUNTERS, [started, completed, cancelled, failed, disconnected]).

%% Options: port (0 = any free port), dir (examples/web), status_dir (where the generator
%% writes its outcomes). Returns the httpd pid and the port it listens on.
-spec start(#{port := inet:port_number(), dir := file:filename(), status_dir := file:filename()}) ->
    {ok, pid(), inet:port_number()}.
start(#{port := Port0, dir := Dir, status_dir := StatusDir}) ->
    ok = filelib:ensure_path(StatusDir),
    persistent_term:put(web_demo, #{dir => Dir, status_dir => StatusDir}),
    %% A public table owned by the caller (the escript's process, which lives as long as
    %% the server): stream id -> request handler, and the counters of /status.
    ?TABLE = ets:new(?TABLE, [named_table, public, set]),
    true = ets:insert(?TABLE, [{{count, C}, 0} || C <- ?COUNTERS]),
    {ok, _} = application:ensure_all_started(inets),
    {ok, Pid} = inets:start(httpd, [{port, Port0},
                                    {bind_address, {127, 0, 0, 1}},
                                    {server_name, "erlpy-web-demo"},
                                    {server_root, Dir},
                                    {document_root, Dir},
                                    {modules, [?MODULE]}]),
    [{port, Port}] = httpd:info(Pid, [port]),
    {ok, Pid, Port}.

-spec stop(pid()) -> ok.
stop(Pid) ->
    inets:stop(httpd, Pid).

%% The httpd callback: every request comes here.
do(#mod{method = "GET", request_uri = Uri} = Mod) ->
    #{path := Path} = Parsed = uri_string:parse(Uri),
    Query = case Parsed of
                #{query := Q} -> maps:from_list(uri_string:dissect_query(Q));
                _ -> #{}
            end,
    route(Path, Query, Mod);
do(#mod{} = Mod) ->
    respond(Mod, 405, "text/plain", <<"GET only\n">>).

route("/", _, Mod) ->
    #{dir := Dir} = persistent_term:get(web_demo),
    {ok, Html} = file:read_file(filename:join(Dir, "index.html")),
    respond(Mod, 200, "text/html; charset=utf-8", Html);
route("/stream", Query, Mod) ->
    stream(Mod, Query);
route("/stop", Query, Mod) ->
    Id = maps:get("id", Query, ""),
    case ets:lookup(?TABLE, {stream, Id}) of
        [{_, Handler}] ->
            Handler ! {web_demo_stop, Id},
            respond(Mod, 200, "text/plain", <<"stopping\n">>);
        [] ->
            respond(Mod, 404, "text/plain", <<"no such stream\n">>)
    end;
route("/status", _, Mod) ->
    respond(Mod, 200, "application/json", status_json());
route(_, _, Mod) ->
    respond(Mod, 404, "text/plain", <<"not found\n">>).

respond(Mod, Code, Type, Body) ->
    Head = [{code, Code}, {content_type, Type}, {cache_control, "no-cache"},
            {content_length, integer_to_list(iolist_size(Body))}],
    {proceed, [{response, {response, Head, [Body]}} | Mod#mod.data]}.

%% --- /stream -------------------------------------------------------------------------

stream(Mod, Query) ->
    #{status_dir := StatusDir} = persistent_term:get(web_demo),
    Id = stream_id(maps:get("id", Query, "")),
    Kwargs = #{<<"delay">> => number(maps:get("delay", Query, "0.06"), 0.06),
               <<"fail_after">> => trunc(number(maps:get("fail_after", Query, "-1"), -1))},
    Kwargs1 = case Query of
                  #{"text" := Text} when Text =/= "" ->
                      Kwargs#{<<"text">> => unicode:characters_to_binary(Text)};
                  _ -> Kwargs
              end,
    ok = httpd_response:send_header(Mod, 200, [{"content-type", "text/event-stream"},
                                               {"cache-control", "no-cache"},
                                               {"transfer-encoding", "chunked"}]),
    Args = [list_to_binary(Id), unicode:characters_to_binary(StatusDir)],
    case py:stream_start(web_tokens, generate, Args, #{kwargs => Kwargs1}) of
        {ok, Ref} ->
            true = ets:insert(?TABLE, {{stream, Id}, self()}),
            count(started),
            T0 = erlang:monotonic_time(millisecond),
            Sent = send(Mod, event(<<"start">>, json_object([{id, json_string(Id)}]))),
            Result = relay(Mod, Ref, Sent, 0, T0),
            ets:delete(?TABLE, {stream, Id}),
            count(Result);
        {error, Reason} ->
            count(failed),
            send(Mod, event(<<"failure">>, json_object([{reason, json_string(format(Reason))}])))
    end,
    _ = httpd_response:send_final_chunk(Mod, false),
    {proceed, [{response, {already_sent, 200, 0}} | Mod#mod.data]}.

%% Forward the stream's messages to the socket as they come.
relay(Mod, Ref, ok, N, T0) ->
    receive
        {py_stream, Ref, {data, Word}} ->
            Ms = erlang:monotonic_time(millisecond) - T0,
            Data = json_object([{i, integer_to_binary(N)}, {t, json_string(Word)},
                                {ms, integer_to_binary(Ms)}]),
            relay(Mod, Ref, send(Mod, event(<<"token">>, Data)), N + 1, T0);
        {py_stream, Ref, done} ->
            _ = send(Mod, event(<<"done">>, json_object([{tokens, integer_to_binary(N)}]))),
            completed;
        {py_stream, Ref, {error, cancelled}} ->
            _ = send(Mod, event(<<"cancelled">>, json_object([{tokens, integer_to_binary(N)}]))),
            cancelled;
        {py_stream, Ref, {error, Reason}} ->
            Data = json_object([{tokens, integer_to_binary(N)},
                                {reason, json_string(format(Reason))}]),
            _ = send(Mod, event(<<"failure">>, Data)),
            failed;
        {web_demo_stop, _Id} ->
            ok = py:stream_cancel(Ref),
            relay(Mod, Ref, ok, N, T0)
    end;
relay(_Mod, Ref, socket_closed, _N, _T0) ->
    %% The browser went away: cancel, and wait for the terminal message (it comes after
    %% the generator's finally ran).
    ok = py:stream_cancel(Ref),
    receive {py_stream, Ref, {error, _}} -> disconnected; {py_stream, Ref, done} -> disconnected
    after 10000 -> disconnected
    end.

send(Mod, Event) ->
    case httpd_response:send_chunk(Mod, Event, false) of
        socket_closed -> socket_closed;
        _ -> ok
    end.

event(Name, Data) ->
    [<<"event: ">>, Name, <<"\ndata: ">>, Data, <<"\n\n">>].

stream_id(Id) ->
    case Id =/= "" andalso length(Id) =< 64 andalso
         lists:all(fun(C) -> (C >= $a andalso C =< $z) orelse (C >= $A andalso C =< $Z)
                                 orelse (C >= $0 andalso C =< $9) end, Id) of
        true -> Id;
        false -> integer_to_list(erlang:unique_integer([positive]))
    end.

number(String, Default) ->
    try list_to_float(String)
    catch error:badarg ->
        try list_to_integer(String) catch error:badarg -> Default end
    end.

format({python, Type, Message, _Traceback}) ->
    unicode:characters_to_list([Type, <<": ">>, Message]);
format(Reason) ->
    lists:flatten(io_lib:format("~0tp", [Reason])).

count(Counter) ->
    ets:update_counter(?TABLE, {count, Counter}, 1).

%% --- /status -------------------------------------------------------------------------

status_json() ->
    #{status_dir := StatusDir} = persistent_term:get(web_demo),
    Counters = [{C, integer_to_binary(ets:lookup_element(?TABLE, {count, C}, 2))}
                || C <- ?COUNTERS],
    Active = [json_string(Id) || [Id] <- ets:match(?TABLE, {{stream, '$1'}, '_'})],
    Files = case file:list_dir(StatusDir) of
                {ok, Names} -> lists:sort([N || N <- Names, filename:extension(N) =:= ".json"]);
                {error, _} -> []
            end,
    Outcomes = [{filename:basename(N, ".json"), Json}
                || N <- Files, {ok, Json} <- [file:read_file(filename:join(StatusDir, N))]],
    json_object([{server, json_object(Counters)},
                 {active, [<<"[">>, lists:join(<<",">>, Active), <<"]">>]},
                 {python, json_object(Outcomes)}]).

%% A little JSON writer (OTP's json module is newer than the OTP this runs on).
json_object(Pairs) ->
    [<<"{">>, lists:join(<<",">>, [[json_string(K), <<":">>, V] || {K, V} <- Pairs]), <<"}">>].

json_string(A) when is_atom(A) -> json_string(atom_to_binary(A));
json_string(L) when is_list(L) -> json_string(unicode:characters_to_binary(L));
json_string(B) when is_binary(B) ->
    [$", [escape(C) || <<C/utf8>> <= B], $"];
json_string(Other) -> json_string(format(Other)).

escape($") -> <<"\\\"">>;
escape($\\) -> <<"\\\\">>;
escape($\n) -> <<"\\n">>;
escape($\r) -> <<"\\r">>;
escape($\t) -> <<"\\t">>;
escape(C) when C < 16#20 -> io_lib:format("\\u~4.16.0b", [C]);
escape(C) -> <<C/utf8>>.

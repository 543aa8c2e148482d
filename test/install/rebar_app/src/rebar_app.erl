-module(rebar_app).
-export([greet/1, words/1, check/0]).

%% Python's greeting.greet, from this application's priv/python.
greet(Name) ->
    py:call(greeting, greet, [Name]).

%% The words of Text, streamed by a Python generator to this process.
words(Text) ->
    {ok, Ref} = py:stream_start(greeting, words, [Text]),
    collect(Ref, []).

collect(Ref, Acc) ->
    receive
        {py_stream, Ref, {data, Word}} -> collect(Ref, [Word | Acc]);
        {py_stream, Ref, done} -> {ok, lists:reverse(Acc)};
        {py_stream, Ref, {error, Reason}} -> {error, Reason}
    end.

%% What erlpy_install_SUITE looks at.
check() ->
    #{greet => greet(<<"Ada">>),
      words => words(<<"streamed from Python">>),
      erlpy_priv => filelib:is_regular(
                      filename:join(code:priv_dir(erlpy), "python/erlpy/_boot.py"))}.

defmodule Erlpy.ScriptsTest do
  # examples/batch.escript and examples/batch.exs, run as a user runs them, in a
  # subprocess, offline. The escript finds erlpy through ERL_LIBS (the build of this
  # suite); the Elixir script builds it with Mix.install into a fresh MIX_INSTALL_DIR.
  use ExUnit.Case, async: true

  import ErlpyCase

  @moduletag timeout: 300_000

  @items [
    "(x * x for x in range(5))",
    "__main__:fibonacci 10",
    "iter('abc')",
    "builtins:range 2 10 3",
    "batches(list(range(7)), 3)",
    "(None for _ in range(2))"
  ]

  @escript_out """
  (x * x for x in range(5)) => [0,1,4,9,16]
  __main__:fibonacci 10 => [0,1,1,2,3,5,8,13,21,34]
  iter('abc') => [<<"a">>,<<"b">>,<<"c">>]
  builtins:range 2 10 3 => [2,5,8]
  batches(list(range(7)), 3) => [[0,1,2],[3,4,5],[6]]
  (None for _ in range(2)) => [none,none]
  -- 6 items: 6 ok, 0 failed
  """

  @exs_out """
  (x * x for x in range(5)) => [0, 1, 4, 9, 16]
  __main__:fibonacci 10 => [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
  iter('abc') => ["a", "b", "c"]
  builtins:range 2 10 3 => [2, 5, 8]
  batches(list(range(7)), 3) => [[0, 1, 2], [3, 4, 5], [6]]
  (None for _ in range(2)) => [nil, nil]
  -- 6 items: 6 ok, 0 failed
  """

  defp escript(args, opts \\ []) do
    tmp = tmp_dir!("escript")
    cmd = Enum.map_join(["escript", "examples/batch.escript" | args], " ", &shq/1)
    sh(cmd, [cd: root(), tmp: tmp, env: [{"ERL_LIBS", mix_lib_dir()}]] ++ opts)
  end

  defp exs(args, opts) do
    tmp = Keyword.get_lazy(opts, :tmp, fn -> tmp_dir!("exs") end)
    cmd = Enum.map_join(["elixir", "examples/batch.exs" | args], " ", &shq/1)
    {status, out, err} = sh(cmd, [cd: root(), tmp: tmp] ++ Keyword.delete(opts, :tmp))
    {status, drop_build_lines(out), err}
  end

  test "batch.escript: items from the command line" do
    assert {0, @escript_out, ""} == escript(@items)
  end

  test "batch.escript: items from standard input, a failure sets the exit status" do
    input = "# squares\n(x * x for x in range(3))\n\n1 / 0\nnope:nothing\n"

    assert {1, out, ""} = escript([], input: input)

    assert out == """
           (x * x for x in range(3)) => [0,1,4]
           1 / 0 => ZeroDivisionError: division by zero
           nope:nothing => ModuleNotFoundError: No module named 'nope'
           -- 3 items: 1 ok, 2 failed
           """
  end

  test "batch.exs: items from the command line, then from standard input" do
    tmp = tmp_dir!("exs")
    assert {0, @exs_out, _} = exs(@items, tmp: tmp)

    input = "(x * x for x in range(3))\n1 / 0\n"
    assert {1, out, _} = exs([], input: input, tmp: tmp)

    assert out == """
           (x * x for x in range(3)) => [0, 1, 4]
           1 / 0 => ZeroDivisionError: division by zero
           -- 2 items: 1 ok, 1 failed
           """
  end

  @venv Path.join(ErlpyCase.root(), ".venv/bin/python")

  # As batch.escript does (use_checkout_venv/0): run from another directory, so the
  # script finds the checkout's .venv from its own location.
  @tag skip: not File.regular?(@venv) && "no .venv in this checkout"
  test "batch.exs: without $ERLPY_PYTHON, the checkout's .venv" do
    tmp = tmp_dir!("exs_venv")
    item = "iter([__import__('sys').executable])"
    cmd = "elixir #{shq(Path.join(root(), "examples/batch.exs"))} #{shq(item)}"
    assert {0, out, _} = sh(cmd, cd: tmp, tmp: tmp, env: [{"ERLPY_PYTHON", nil}])
    assert drop_build_lines(out) == "#{item} => [#{inspect(@venv)}]\n-- 1 items: 1 ok, 0 failed\n"
  end

  test "a Mix.install script whose default pool cannot start stops there, saying what to do" do
    tmp = tmp_dir!("exs_fail")
    script = Path.join(tmp, "fail.exs")

    File.write!(script, """
    Mix.install([{:erlpy, path: #{inspect(root())}}])
    IO.inspect(:py.eval("1"), label: "call")
    {:ok, _} = Application.ensure_all_started(:erlpy)
    IO.puts("not reached")
    """)

    env = [{"ERLPY_PYTHON", "/nonexistent/python3"}]
    assert {status, out, err} = sh("elixir #{shq(script)}", cd: tmp, tmp: tmp, env: env)
    text = out <> err
    assert status != 0
    refute text =~ "not reached"

    assert text =~
             "erlpy: pool default cannot start: no Python interpreter at /nonexistent/python3: " <>
               "install Python 3.11+ with msgpack, or set the pool option python (or $ERLPY_PYTHON) " <>
               "to such an interpreter"

    # Between Mix.install and the match, a call says why there is no pool.
    assert text =~ ~r/call: \{:error,\s+\{:no_pool, :default,\s+\{:python_start_failed,/
  end

  test "both scripts say one line starts erlpy" do
    escript = File.read!(Path.join(root(), "examples/batch.escript"))
    assert escript =~ "\n    {ok, _} = application:ensure_all_started(erlpy),\n"
    exs = File.read!(Path.join(root(), "examples/batch.exs"))
    assert [_] = Regex.scan(~r/^Mix\.install\(.*\)$/m, exs)
  end
end

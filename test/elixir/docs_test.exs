defmodule Erlpy.DocsTest.Blocks do
  @moduledoc false
  # The fenced blocks of the guides, parsed when the test module is compiled.

  def docs, do: Path.join(ErlpyCase.root(), "docs")

  def guides,
    do: docs() |> File.ls!() |> Enum.filter(&String.ends_with?(&1, ".md")) |> Enum.sort()

  @doc "[{kind, line, text}] of the blocks of a guide that this suite runs."
  def blocks(guide) do
    lines = docs() |> Path.join(guide) |> File.read!() |> String.split("\n")
    fences(Enum.with_index(lines, 1), [])
  end

  defp fences([], acc), do: Enum.reverse(acc)

  defp fences([{line, n} | rest], acc) do
    case String.trim(line) do
      "```" <> info when info != "" ->
        {body, rest} = Enum.split_while(rest, fn {l, _} -> String.trim(l) != "```" end)
        text = Enum.map_join(body, "\n", &elem(&1, 0)) <> "\n"
        acc = if kind = kind(String.split(info)), do: [{kind, n + 1, text} | acc], else: acc
        fences(Enum.drop(rest, 1), acc)

      _ ->
        fences(rest, acc)
    end
  end

  defp kind(["elixir"]), do: :elixir
  defp kind(["elixir", "file=" <> path]), do: {:quote, path}
  defp kind(["erlang", "file=" <> path]), do: {:quote, path}
  defp kind(["console"]), do: :console
  defp kind(["elixir" | other]), do: raise("unknown ```elixir block option: #{inspect(other)}")
  defp kind(_), do: nil
end

defmodule Erlpy.DocsTest do
  # The Elixir side of the guides (docs/*.md). test/erlang/erlpy_docs_SUITE.erl runs the
  # ```erlang and ```python blocks; this runs the rest, in order, one test per guide:
  #
  #   ```elixir              evaluated (Code.eval_string), bindings shared across the
  #                          blocks of one guide; a failing `=` match fails the test
  #   ```elixir file=PATH    a quote of PATH (a file of the checkout that another test
  #   ```erlang file=PATH    builds or runs): its lines must appear in PATH, in order,
  #                          contiguous (indentation and blank lines aside)
  #   ```console             a shell session: each `$ command` runs (bash, at the top of
  #                          the checkout, offline, escripts finding the erlpy this suite
  #                          built) and the whole session's stdout must be the lines
  #                          shown; build messages of a first Mix.install are left out
  #
  # ```elixir norun does not exist: every example runs. After each guide, no pool it
  # started is left and the default pool is idle.
  use ExUnit.Case, async: false

  import ErlpyCase

  @moduletag timeout: 300_000

  @docs Path.join(root(), "docs")

  import Erlpy.DocsTest.Blocks, only: [blocks: 1]

  for guide <- Erlpy.DocsTest.Blocks.guides(), Erlpy.DocsTest.Blocks.blocks(guide) != [] do
    @guide guide
    test "docs/#{guide}: every elixir, console and file-quoting block" do
      run_guide(@guide)
    end
  end

  test "the Elixir and scripts guides have examples of every kind" do
    assert Enum.any?(blocks("elixir.md"), &(elem(&1, 0) == :elixir))
    assert Enum.any?(blocks("elixir.md"), &match?({{:quote, _}, _, _}, &1))
    assert Enum.any?(blocks("scripts.md"), &(elem(&1, 0) == :console))
    assert Enum.any?(blocks("scripts.md"), &(elem(&1, 0) == :elixir))
  end

  defp run_guide(guide) do
    pools = Enum.sort(pools())
    tmp = tmp_dir!("docs")

    Enum.reduce(blocks(guide), [], fn {kind, line, text}, binding ->
      run_block(kind, guide, line, text, binding, tmp)
    end)

    assert Enum.sort(pools()) == pools, "docs/#{guide} left pools running"
    wait_until(fn -> idle?(:default) end, 20_000)
  end

  defp run_block(:elixir, guide, line, text, binding, _tmp) do
    {_, binding} = Code.eval_string(text, binding, file: Path.join(@docs, guide), line: line)
    binding
  end

  defp run_block({:quote, path}, guide, line, text, binding, _tmp) do
    file = Path.join(root(), path)
    assert File.regular?(file), "docs/#{guide}:#{line} quotes #{path}, which does not exist"
    quoted = normalize(text)
    assert quoted != []

    assert contains?(normalize(File.read!(file)), quoted),
           "docs/#{guide}:#{line}: the block is not a quote of #{path}"

    binding
  end

  defp run_block(:console, guide, line, text, binding, tmp) do
    {commands, expected} = session(text)
    script = Enum.join(commands, "\n")
    env = [{"ERL_LIBS", mix_lib_dir()}]
    {_status, out, err} = sh(script, cd: root(), tmp: tmp, env: env)

    assert drop_build_lines(out) == expected,
           "docs/#{guide}:#{line}: the session's output differs\n--- stderr:\n#{err}"

    binding
  end

  # The commands of a session and the output it shows.
  defp session(text) do
    lines = String.split(String.trim_trailing(text, "\n"), "\n")
    commands = for "$ " <> command <- lines, do: command
    output = for line <- lines, not String.starts_with?(line, "$ "), do: line <> "\n"
    {commands, Enum.join(output)}
  end

  defp normalize(text) do
    text |> String.split("\n") |> Enum.map(&String.trim/1) |> Enum.reject(&(&1 == ""))
  end

  defp contains?(lines, quoted) when length(lines) < length(quoted), do: false

  defp contains?([_ | rest] = lines, quoted),
    do: List.starts_with?(lines, quoted) or contains?(rest, quoted)
end

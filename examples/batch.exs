# Batch evaluation with erlpy from an Elixir script (docs/scripts.md); the same program as
# examples/batch.escript. Each item is one of
#
#   EXPR                  a Python expression giving an iterable, collected with :py.stream_eval
#   MODULE:FUNCTION ARG…  a function whose result is iterated, collected with :py.stream
#                         (each ARG is an integer, a float, else a string)
#
# taken from the command line, else one per line from standard input (blank lines and
# lines starting with # skipped). The items run concurrently on the default pool; the
# results are printed in input order, one `ITEM => RESULT` line each, then a summary.
# The exit status is 1 if an item failed. `fibonacci(n)` and `batches(data, size)`, the
# generators of the streaming guide, are defined in `__main__` for the items to use:
#
#   elixir examples/batch.exs '(x * x for x in range(5))' '__main__:fibonacci 10'
#
# Starting erlpy is the Mix.install line below: it builds erlpy from this checkout (offline,
# cached after the first run) and starts it, with Python None as nil in the default pool.
# Mix.install does not stop the script if erlpy cannot start (no usable Python, say): the
# line after it does, with the reason (docs/install.md). The two lines before it pick
# Python as batch.escript does: without $ERLPY_PYTHON, every pool runs the checkout's
# virtualenv (.venv, which `make` creates) if there is one, found from the script's own
# location, so the script runs from any directory.

venv = Path.expand("../.venv/bin/python", __DIR__)
if !System.get_env("ERLPY_PYTHON") and File.regular?(venv), do: System.put_env("ERLPY_PYTHON", venv)
Mix.install([{:erlpy, path: Path.expand("..", __DIR__)}], config: [erlpy: [pools: %{default: %{none_atom: nil}}]])
{:ok, _} = Application.ensure_all_started(:erlpy)

defmodule Batch do
  @prelude """
  def fibonacci(n):
      a, b = 0, 1
      for _ in range(n):
          yield a
          a, b = b, a + b

  def batches(data, size):
      for i in range(0, len(data), size):
          yield data[i:i + size]
  """

  @call ~r/^([A-Za-z_][A-Za-z0-9_.]*):([A-Za-z_][A-Za-z0-9_]*)(\s.*)?$/u

  def main(args) do
    :ok = :py.exec(@prelude)
    items = if args == [], do: read_items(), else: args

    results =
      items
      |> Task.async_stream(&run/1, ordered: true, timeout: :infinity)
      |> Enum.zip_with(items, fn {:ok, result}, item -> {item, result} end)

    Enum.each(results, &print/1)
    failed = Enum.count(results, &match?({_, {:error, _}}, &1))
    IO.puts("-- #{length(results)} items: #{length(results) - failed} ok, #{failed} failed")
    System.halt(min(failed, 1))
  end

  defp run(item) do
    case Regex.run(@call, item, capture: :all_but_first) do
      [module, function | rest] ->
        :py.stream(module, function, Enum.map(String.split(Enum.join(rest)), &arg/1))

      nil ->
        :py.stream_eval(item)
    end
  end

  defp arg(text) do
    case {Integer.parse(text), Float.parse(text)} do
      {{int, ""}, _} -> int
      {_, {float, ""}} -> float
      _ -> text
    end
  end

  defp print({item, {:ok, values}}),
    do: IO.puts("#{item} => #{inspect(values, limit: :infinity)}")

  defp print({item, {:error, {:python, type, message, _traceback}}}),
    do: IO.puts("#{item} => #{type}: #{message}")

  defp print({item, {:error, reason}}), do: IO.puts("#{item} => error #{inspect(reason)}")

  defp read_items do
    IO.stream(:stdio, :line)
    |> Enum.map(&String.trim/1)
    |> Enum.reject(&(&1 == "" or String.starts_with?(&1, "#")))
  end
end

Batch.main(System.argv())

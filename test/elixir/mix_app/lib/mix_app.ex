defmodule MixApp do
  @moduledoc "Calls into Python from a Mix application that depends on erlpy."

  @doc "Python's `greeting.greet`, on the application's own pool."
  def greet(name, opts \\ []), do: :py.call(:greeting, :greet, [name], opts, pool: :mix_app)

  @doc "The words of `text`, streamed by a Python generator and collected."
  def words(text) do
    {:ok, ref} = :py.stream_start(:greeting, :words, [text], pool: :mix_app)
    collect(ref, [])
  end

  defp collect(ref, acc) do
    receive do
      {:py_stream, ^ref, {:data, word}} -> collect(ref, [word | acc])
      {:py_stream, ^ref, :done} -> {:ok, Enum.reverse(acc)}
      {:py_stream, ^ref, {:error, reason}} -> {:error, reason}
    end
  end

  @doc "What the checks of test/elixir/mix_app_test.exs look at."
  def check do
    %{
      greet: greet("Ada", punctuation: "?"),
      words: words("streamed from Python"),
      none_default: :py.eval("None"),
      none_pool: :py.eval("None", %{}, pool: :mix_app),
      json: :py.call(:json, :dumps, [%{a: 1}], indent: 2),
      priv: :code.priv_dir(:erlpy) |> Path.join("python/erlpy/__init__.py") |> File.regular?(),
      children: Supervisor.which_children(MixApp.Supervisor) |> Enum.map(&elem(&1, 0))
    }
  end
end

defmodule MixApp do
  @moduledoc "Calls into Python from a Mix application that depends on erlpy."

  @doc "Python's `greeting.greet`, on the application's own pool."
  def greet(name, kwargs \\ []),
    do: Erlpy.call(:greeting, :greet, [name], kwargs: kwargs, pool: :mix_app)

  @doc "The words of `text`, from a Python generator, as a lazy Elixir stream."
  def words(text), do: Erlpy.stream(:greeting, :words, [text], pool: :mix_app)

  @doc "The type of the Python exception `code` raises."
  def python_error(code) do
    Erlpy.eval!(code)
  rescue
    error in Erlpy.PythonError -> error.type
  end

  @doc "What the checks of test/elixir/mix_app_test.exs look at."
  def check do
    %{
      greet: greet("Ada", punctuation: "?"),
      words: {:ok, words("streamed from Python") |> Enum.to_list()},
      first_words: words("one two three four") |> Enum.take(2),
      raised: python_error("int('x')"),
      none_default: Erlpy.eval("None"),
      none_pool: Erlpy.eval("None", %{}, pool: :mix_app),
      json: Erlpy.call(:json, :dumps, [%{a: 1}], kwargs: [indent: 2]),
      priv: :code.priv_dir(:erlpy) |> Path.join("python/erlpy/__init__.py") |> File.regular?(),
      children: Supervisor.which_children(MixApp.Supervisor) |> Enum.map(&elem(&1, 0))
    }
  end
end

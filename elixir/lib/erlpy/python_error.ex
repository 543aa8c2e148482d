defmodule Erlpy.PythonError do
  @moduledoc """
  A Python exception, raised by `Erlpy.call!/4`, `Erlpy.eval!/3`, `Erlpy.exec!/2` and in
  the consumer of `Erlpy.stream/4` and `Erlpy.stream_eval/3`, and returned by their
  non-bang forms as `{:error, %Erlpy.PythonError{}}`.

  Fields, all strings:

    * `:type` - the exception's class name, qualified with its module unless it is a
      builtin (`"ValueError"`, `"json.decoder.JSONDecodeError"`)
    * `:message` - `str(exc)`
    * `:traceback` - the formatted Python traceback

  It is the `{:python, type, message, traceback}` error of the `:py` module.

      iex> {:error, error} = Erlpy.eval("1 / 0")
      iex> error.type
      "ZeroDivisionError"
      iex> error.message
      "division by zero"
  """

  defexception type: "Exception", message: "", traceback: ""

  @type t :: %__MODULE__{type: String.t(), message: String.t(), traceback: String.t()}

  @impl true
  def message(%__MODULE__{type: type, message: message, traceback: traceback}) do
    headline = if message == "", do: type, else: "#{type}: #{message}"

    # The traceback ends with the headline; it has no frames for an error raised by C
    # code called directly (math.sqrt(-1)).
    case String.trim_trailing(traceback || "") do
      trace when trace in ["", headline] -> headline
      trace -> headline <> "\n\n" <> trace
    end
  end
end

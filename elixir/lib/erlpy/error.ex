defmodule Erlpy.Error do
  @moduledoc """
  Any failure of a request other than a Python exception: the `reason` is the error
  reason of the `:py` module, for instance `:timeout`, `:overloaded`, `:cancelled`,
  `{:worker_exited, detail}`, `{:badarg, detail}`, `{:bad_option, {key, value}}`,
  `{:no_pool, name}` or `{:python_start_failed, detail}` (docs/errors.md has them all).
  `hint`, when not `nil`, is advice that the message ends with (where the Python keyword
  arguments go, for an unknown option of a call).

      iex> {:error, %Erlpy.Error{reason: reason}} = Erlpy.eval("1", %{}, pool: :no_such_pool)
      iex> reason
      {:no_pool, :no_such_pool}
  """

  defexception [:reason, :hint]

  @type t :: %__MODULE__{reason: term(), hint: String.t() | nil}

  @impl true
  def message(%__MODULE__{reason: reason, hint: nil}), do: describe(reason)
  def message(%__MODULE__{reason: reason, hint: hint}), do: describe(reason) <> "; " <> hint

  defp describe(:timeout),
    do:
      "Python did not answer within the timeout, or a stream yielded nothing for its " <>
        "idle_timeout (:timeout)"

  defp describe(:overloaded), do: "the pool's queue is full (:overloaded)"
  defp describe(:cancelled), do: "the stream was cancelled (:cancelled)"

  defp describe({:worker_exited, detail}),
    do: "the Python worker exited: #{inspect(detail)} ({:worker_exited, _})"

  defp describe({:badarg, detail}),
    do: "a term or name cannot go to Python: #{inspect(detail)} ({:badarg, _})"

  defp describe({:bad_option, {:requirements, [spec | _] = value}})
       when is_binary(spec) or is_list(spec),
       do:
         "bad option :requirements: #{inspect(value)} ({:bad_option, _}); requirements are " <>
           "installed into the pool's virtualenv: give venv: too"

  defp describe({:bad_option, {key, value}}),
    do: "bad option #{inspect(key)}: #{inspect(value)} ({:bad_option, _})"

  defp describe({:no_pool, name}), do: "no pool #{inspect(name)} is running ({:no_pool, _})"

  defp describe({:no_pool, name, why}),
    do: "pool #{inspect(name)} did not start: #{describe(why)} ({:no_pool, _, _})"

  defp describe({:not_started, :erlpy}),
    do: "the erlpy application is not started: Application.ensure_all_started(:erlpy)"

  defp describe({:python_start_failed, %{message: message}}) when is_binary(message),
    do: "Python could not start: " <> message

  defp describe({:python_start_failed, detail}),
    do: "Python could not start: #{inspect(detail)}"

  defp describe({:nodedown, node}), do: "node #{inspect(node)} is unreachable ({:nodedown, _})"
  defp describe({:no_erlpy, node}), do: "node #{inspect(node)} runs no erlpy ({:no_erlpy, _})"

  defp describe({:stale_ref, _} = reason),
    do:
      "the handle's object is gone (released, its owner exited, or its Python " <>
        "restarted): #{inspect(reason)}"

  defp describe(:session_ended),
    do: "the session has ended (stopped, its owner exited, or its Python restarted)"

  defp describe({:max_refs, n}),
    do: "the worker holds max_refs (#{n}) handles already ({:max_refs, _})"

  defp describe(reason), do: "erlpy failed: #{inspect(reason)}"
end

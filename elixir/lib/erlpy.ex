defmodule Erlpy do
  @default_window 64
  @close_timeout 5_000

  @moduledoc """
  Run Python from Elixir: call it, evaluate it, and stream from it, on pools of Python
  worker processes.

      iex> Erlpy.call(:math, :sqrt, [16])
      {:ok, 4.0}
      iex> Erlpy.call!(:json, :dumps, [%{a: 1}], kwargs: [indent: 2])
      "{\\n  \\"a\\": 1\\n}"
      iex> Erlpy.eval!("x * y", %{x: 6, y: 7})
      42
      iex> Erlpy.stream(:itertools, :count, [10]) |> Enum.take(3)
      [10, 11, 12]

  `Erlpy` is the Elixir face of the Erlang module `:py`, and every function here runs the
  `:py` function of the same purpose (docs/elixir.md shows both).

  ## Options

  Calls and streams take their options as a keyword list, last (pools take the pool
  options of docs/pools.md, as a keyword list or a map):

    * `:pool` - the pool: an atom (default `:default`), `{pool, node}` for a pool on
      another node, or `{:cluster, pool}`
    * `:timeout` - milliseconds or `:infinity` (default 30 000); for streams, the time to
      start the stream
    * `:kwargs` - Python keyword arguments, a map or a keyword list (`call/4`, the
      streams)
    * any other option of the `:py` function underneath, which checks them all: an
      unknown option is `{:error, %Erlpy.Error{reason: {:bad_option, {key, value}}}}`,
      never silently ignored, whose message says where Python keyword arguments go
      (`kwargs:`; the locals, for `eval/3`), and which option a misspelt one may be

  Python keyword arguments never mix with options: `Erlpy.call(:m, :f, [1], pool: :ml)`
  runs on the pool `:ml`, and `kwargs: [pool: :ml]` is how Python would get `pool`.

  ## Results and errors

  `call/4`, `eval/3` and the other non-bang functions return `{:ok, value}` (`:ok` for
  `exec/2`) or `{:error, exception}`: an `Erlpy.PythonError` (with `type`, `message`,
  `traceback`) when Python raised, an `Erlpy.Error` (with the `:py` `reason`, such as
  `:timeout`) for anything else. The bang functions return the value or raise that
  exception. Arguments of the wrong shape for this module (options that are not a
  keyword list, locals that are not a map, args that are not a list, an Elixir alias
  such as `Math` as the Python module) raise `ArgumentError`.

  ## Streams

  `stream/4` and `stream_eval/3` return a lazy `Stream`: the Python generator starts
  when the stream is enumerated, in the process that enumerates it, runs at most
  `:window` items (default #{@default_window}) ahead of the consumer, and is cancelled when the
  consumer halts (`Enum.take/2`), raises, or dies; its `finally` blocks have run when
  `Enum.take/2` returns. `start_stream/4` is the message-based form.
  """

  @typedoc "A Python module or function name: an atom or a string (dotted names work)."
  @type name :: atom() | String.t()

  @typedoc "A pool: a local pool's name, `{name, node}`, or `{:cluster, name}`."
  @type pool :: atom() | {atom(), node()} | {:cluster, atom()}

  @typedoc "Python code: a string (or other chardata)."
  @type code :: String.t() | IO.chardata()

  @typedoc "Python keyword arguments or local variables, keyed by atoms or strings."
  @type kwargs :: %{optional(atom() | String.t()) => term()} | keyword()

  @typedoc "The exception of a failed request."
  @type exception :: Erlpy.PythonError.t() | Erlpy.Error.t()

  @typedoc "An option of a call (`call/4`, `eval/3`, `exec/2`)."
  @type call_option ::
          {:pool, pool()} | {:timeout, timeout()} | {:kwargs, kwargs()} | {atom(), term()}

  @typedoc "An option of `stream/4` and `stream_eval/3`."
  @type stream_option ::
          {:window, pos_integer()}
          | {:close_timeout, timeout()}
          | {:idle_timeout, pos_integer() | :infinity}
          | call_option()

  @typedoc "An option of `start_stream/4`."
  @type start_option ::
          {:owner, pid()}
          | {:window, pos_integer()}
          | {:input, boolean()}
          | {:idle_timeout, pos_integer() | :infinity}
          | call_option()

  @typedoc "A handle: a Python object kept in one worker (`return: :ref`, docs/state.md)."
  @type handle :: :py.ref()

  @typedoc "A session: a private Python namespace on one worker (`session_start/1`)."
  @type session :: :py.session()

  @typedoc "A stream reference (`start_stream/4`)."
  @type stream_ref :: reference()

  ## Calls

  @doc """
  Calls `module.function(*args, **kwargs)` in Python.

  Options: `:kwargs` (a map or keyword list), `:pool`, `:timeout`, and the other options
  of `:py.call/5` (see the moduledoc).

      iex> Erlpy.call(:math, :sqrt, [16])
      {:ok, 4.0}
      iex> Erlpy.call(:builtins, :sorted, [[2, 3, 1]], kwargs: [reverse: true], timeout: 5_000)
      {:ok, [3, 2, 1]}
      iex> {:error, %Erlpy.PythonError{type: "ValueError"}} = Erlpy.call(:math, :sqrt, [-1])
      iex> Erlpy.call(:math, :sqrt, [4], pool: :no_such_pool)
      {:error, %Erlpy.Error{reason: {:no_pool, :no_such_pool}}}
  """
  @spec call(name(), name(), list(), [call_option()]) :: {:ok, term()} | {:error, exception()}
  def call(module, function, args \\ [], opts \\ []) do
    check_module!(module, :call)
    check_args!(args, :call)
    {kwargs, opts} = pop_kwargs(opts, :call)
    result(:py.call(module, function, args, kwargs, opts), {:kwargs, :call, module, function})
  end

  @doc """
  Like `call/4`, but returns the value or raises the exception.

      iex> Erlpy.call!(:operator, :add, [1, 2])
      3
  """
  @spec call!(name(), name(), list(), [call_option()]) :: term()
  def call!(module, function, args \\ [], opts \\ []),
    do: unwrap!(call(module, function, args, opts))

  @doc """
  Evaluates a Python expression, with `locals` (a map keyed by atoms or strings) as
  variables. Options: `:pool`, `:timeout` and the other options of `:py.eval/3`.

      iex> Erlpy.eval("1 + 1")
      {:ok, 2}
      iex> Erlpy.eval("[v * v for v in xs]", %{xs: [1, 2, 3]})
      {:ok, [1, 4, 9]}
      iex> Erlpy.eval("None", %{}, timeout: 1_000)
      {:ok, nil}
  """
  @spec eval(code(), map(), [call_option()]) :: {:ok, term()} | {:error, exception()}
  def eval(code, locals \\ %{}, opts \\ []) do
    check_locals!(locals, :eval)
    check_opts!(opts, :eval)
    result(:py.eval(code, locals, opts), {:locals, :eval})
  end

  @doc """
  Like `eval/3`, but returns the value or raises the exception.

      iex> Erlpy.eval!("'-'.join(words)", %{words: ["a", "b"]})
      "a-b"
  """
  @spec eval!(code(), map(), [call_option()]) :: term()
  def eval!(code, locals \\ %{}, opts \\ []), do: unwrap!(eval(code, locals, opts))

  @doc """
  Runs Python statements in `__main__` on every worker of the pool; the pool replays
  them on the workers it starts later, so definitions survive restarts.
  Options: `:pool`, `:timeout`.

      iex> Erlpy.exec("def triple(x): return 3 * x")
      :ok
      iex> Erlpy.call(:__main__, :triple, [14])
      {:ok, 42}
  """
  @spec exec(code(), [call_option()]) :: :ok | {:error, exception()}
  def exec(code, opts \\ []) do
    check_opts!(opts, :exec)
    result(:py.exec(code, opts))
  end

  @doc """
  Like `exec/2`, but returns `:ok` or raises the exception.

      iex> Erlpy.exec!("import math")
      :ok
  """
  @spec exec!(code(), [call_option()]) :: :ok
  def exec!(code, opts \\ []), do: unwrap!(exec(code, opts))

  ## Lazy streams

  @doc """
  A lazy `Stream` of what the Python generator, iterator or iterable (sync or async)
  `module.function(*args, **kwargs)` yields.

  Nothing runs until the stream is enumerated. Python then runs in step with the
  consumer, at most `:window` items ahead of it (default #{@default_window}), so memory
  stays bounded however slow the consumer is. When the consumer stops early
  (`Enum.take/2`, `Stream.take_while/2`, an exception), the generator is cancelled and
  the consumer waits up to `:close_timeout` ms (default #{@close_timeout}) for it to
  close, so its `finally` blocks have run when `Enum.take/2` returns; when the consumer
  dies, the generator is cancelled too. A Python exception raises `Erlpy.PythonError`
  in the consumer (after the items yielded before it); any other failure raises
  `Erlpy.Error`.

  Options: `:window`, `:close_timeout`, `:kwargs`, `:idle_timeout` (ends a stream that
  yields nothing for that long with `Erlpy.Error` `:timeout`), `:pool`, `:timeout` (to
  start the stream).

  The stream is enumerated by one process at a time, the one that starts it (a
  `Task`, a GenServer, a pipeline's stage); enumerate it again to run the generator
  again.

      iex> Erlpy.stream(:builtins, :range, [4]) |> Enum.to_list()
      [0, 1, 2, 3]
      iex> Erlpy.stream(:itertools, :count, [], window: 8) |> Stream.map(&(&1 * 2)) |> Enum.take(3)
      [0, 2, 4]
  """
  @spec stream(name(), name(), list(), [stream_option()]) :: Enumerable.t()
  def stream(module, function, args \\ [], opts \\ []) do
    check_module!(module, :stream)
    check_args!(args, :stream)
    {window, close_timeout, opts} = stream_opts!(opts, :stream)

    lazy(
      fn -> :py.stream_start(module, function, args, opts) end,
      {:kwargs, :stream, module, function},
      window,
      close_timeout
    )
  end

  @doc """
  A lazy `Stream` of what a Python expression that gives a generator, iterator or
  iterable yields, with `locals` as variables; see `stream/4` for how it runs and for
  the options (all but `:kwargs`).

      iex> Erlpy.stream_eval("(x * x for x in range(n))", %{n: 4}) |> Enum.to_list()
      [0, 1, 4, 9]
      iex> Erlpy.stream_eval("iter('abc')") |> Enum.map(&String.upcase/1)
      ["A", "B", "C"]
  """
  @spec stream_eval(code(), map(), [stream_option()]) :: Enumerable.t()
  def stream_eval(code, locals \\ %{}, opts \\ []) do
    check_locals!(locals, :stream_eval)
    {window, close_timeout, opts} = stream_opts!(opts, :stream_eval)

    if Keyword.has_key?(opts, :kwargs),
      do: raise(ArgumentError, "Erlpy.stream_eval/3 takes no :kwargs (use locals)")

    # `:py` collects stream_eval whole; a lazy one evaluates the expression with
    # Python's eval in the namespace `:py.eval` uses: __main__'s globals plus the locals.
    lazy(
      fn ->
        case eval_args(code, locals) do
          {:ok, args} -> :py.stream_start(:builtins, :eval, args, opts)
          {:error, _} = error -> error
        end
      end,
      {:locals, :stream_eval},
      window,
      close_timeout
    )
  end

  @eval_code """
  eval(compile(c, '<erlpy>', 'eval'), {**__import__('sys').modules['__main__'].__dict__, **l} \
  if l else __import__('sys').modules['__main__'].__dict__)\
  """

  defp eval_args(code, locals) do
    with {:ok, code} <- code_string(code),
         :ok <- local_names(locals) do
      {:ok, [@eval_code, %{"c" => code, "l" => locals}]}
    end
  end

  defp code_string(code) when is_binary(code), do: {:ok, code}

  defp code_string(code) do
    case :unicode.characters_to_binary(code) do
      binary when is_binary(binary) -> {:ok, binary}
      _ -> {:error, {:badarg, {:bad_code, code}}}
    end
  rescue
    ArgumentError -> {:error, {:badarg, {:bad_code, code}}}
  end

  defp local_names(locals) do
    case Enum.find(Map.keys(locals), &(not (is_atom(&1) or is_binary(&1)))) do
      nil -> :ok
      key -> {:error, {:badarg, {:bad_local, key}}}
    end
  end

  defp lazy(start, example, window, close_timeout) do
    ack_every = max(1, div(window, 2))

    Stream.resource(
      fn ->
        case result(start.(), example) do
          {:ok, ref} -> {:running, ref, ack_every, 0, 0}
          {:error, exception} -> raise exception
        end
      end,
      &next_items/1,
      &close(&1, close_timeout)
    )
  end

  # {:running, ref, ack_every, unacked, delivered}: `delivered` items went to the
  # consumer last time, which asks for more only once it has handled them; they are
  # acknowledged in batches of `ack_every`, so Python never runs more than the window
  # ahead of what the consumer has handled.
  defp next_items({:running, ref, ack_every, unacked, delivered}) do
    unacked =
      case unacked + delivered do
        n when n >= ack_every ->
          :ok = :py.stream_ack(ref, n)
          0

        n ->
          n
      end

    receive do
      {:py_stream, ^ref, {:data, item}} ->
        items = more_items(ref, ack_every - 1, [item])
        {items, {:running, ref, ack_every, unacked, length(items)}}

      {:py_stream, ^ref, :done} ->
        {:halt, :done}

      {:py_stream, ^ref, {:error, reason}} ->
        {:halt, {:failed, reason}}
    end
  end

  # The items already in the mailbox (up to `n` more), without waiting.
  defp more_items(_ref, 0, acc), do: Enum.reverse(acc)

  defp more_items(ref, n, acc) do
    receive do
      {:py_stream, ^ref, {:data, item}} -> more_items(ref, n - 1, [item | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp close(:done, _timeout), do: :ok
  defp close({:failed, reason}, _timeout), do: raise(to_exception(reason))

  defp close({:running, ref, _, _, _}, timeout) do
    :ok = :py.stream_cancel(ref)
    deadline = if timeout == :infinity, do: :infinity, else: now() + timeout
    await_end(ref, deadline)
  end

  # Drop what is left of a cancelled stream, up to its terminal message: the generator
  # has then been closed.
  defp await_end(ref, deadline) do
    wait = if deadline == :infinity, do: :infinity, else: max(deadline - now(), 0)

    receive do
      {:py_stream, ^ref, {:data, _}} -> await_end(ref, deadline)
      {:py_stream, ^ref, _terminal} -> :ok
    after
      wait -> :ok
    end
  end

  defp now, do: System.monotonic_time(:millisecond)

  defp stream_opts!(opts, function) do
    check_opts!(opts, function)

    for key <- [:owner, :input], Keyword.has_key?(opts, key) do
      raise ArgumentError,
            "Erlpy.#{function} takes no #{inspect(key)} option: it streams to the process " <>
              "that enumerates it (use Erlpy.start_stream/4 for messages)"
    end

    {window, opts} = Keyword.pop(opts, :window, @default_window)
    {close_timeout, opts} = Keyword.pop(opts, :close_timeout, @close_timeout)

    # At most 2^32-1 ms, the longest wait a receive takes.
    unless close_timeout == :infinity or :erlpy_pool.is_ms(close_timeout, 0),
      do: raise(ArgumentError, "bad :close_timeout: #{inspect(close_timeout)}")

    # `:py` checks the window when the stream starts.
    ack_window = if is_integer(window) and window > 0, do: window, else: 1
    {ack_window, close_timeout, [{:window, window} | opts]}
  end

  ## Message-based streams

  @doc """
  Starts `module.function(*args, **kwargs)` as a stream and returns its reference at
  once; this is `:py.stream_start/4`. The owner (the caller, or the process given as
  `:owner`) receives `{:py_stream, ref, {:data, item}}` for each item, then exactly one
  of `{:py_stream, ref, :done}` or `{:py_stream, ref, {:error, reason}}` (`to_exception/1`
  turns the reason into an exception). When the owner dies, the stream is cancelled.

  Options: `:kwargs`, `:owner`, `:window` (the owner then grants items with `ack/2`;
  the first `window` are granted), `:input` (the Python callable gets, first, an async
  iterator over the values of `send_input/2`), `:idle_timeout`, `:pool`, `:timeout` (to
  start).

      iex> {:ok, ref} = Erlpy.start_stream(:builtins, :range, [2])
      iex> receive do: ({:py_stream, ^ref, {:data, x}} -> x)
      0
      iex> receive do: ({:py_stream, ^ref, {:data, x}} -> x)
      1
      iex> receive do: ({:py_stream, ^ref, terminal} -> terminal)
      :done
  """
  @spec start_stream(name(), name(), list(), [start_option()]) ::
          {:ok, stream_ref()} | {:error, exception()}
  def start_stream(module, function, args \\ [], opts \\ []) do
    check_module!(module, :start_stream)
    check_args!(args, :start_stream)
    check_opts!(opts, :start_stream)

    result(
      :py.stream_start(module, function, args, opts),
      {:kwargs, :start_stream, module, function}
    )
  end

  @doc """
  Cancels a stream of `start_stream/4`: the generator is closed (its `finally` blocks
  run) and its owner receives `{:py_stream, ref, {:error, :cancelled}}`. Returns `:ok`,
  also for a stream that already ended.

      iex> {:ok, ref} = Erlpy.start_stream(:itertools, :count, [], window: 1)
      iex> Erlpy.cancel(ref)
      :ok
      iex> receive do: ({:py_stream, ^ref, {:error, reason}} -> reason)
      :cancelled
  """
  @spec cancel(stream_ref()) :: :ok
  def cancel(ref) when is_reference(ref), do: :py.stream_cancel(ref)

  def cancel(other) do
    raise ArgumentError,
          "Erlpy.cancel takes the reference that start_stream returned, got: #{inspect(other)}"
  end

  @doc """
  Grants `n` more items to a stream started with `window: ...`.

      iex> {:ok, ref} = Erlpy.start_stream(:builtins, :range, [3], window: 1)
      iex> receive do: ({:py_stream, ^ref, {:data, x}} -> x)
      0
      iex> Erlpy.ack(ref, 2)
      :ok
      iex> for _ <- 1..2, do: (receive do: ({:py_stream, ^ref, {:data, x}} -> x))
      [1, 2]
      iex> receive do: ({:py_stream, ^ref, terminal} -> terminal)
      :done
  """
  @spec ack(stream_ref(), pos_integer()) :: :ok
  def ack(ref, n), do: :py.stream_ack(ref, n)

  @doc """
  Sends `value` to the input of a stream started with `input: true`; it returns at
  once, like `send/2`.

      iex> :ok = Erlpy.exec("async def echo(inbox):\\n    async for x in inbox:\\n        yield x")
      iex> {:ok, ref} = Erlpy.start_stream(:__main__, :echo, [], input: true)
      iex> Erlpy.send_input(ref, "hi")
      :ok
      iex> receive do: ({:py_stream, ^ref, {:data, x}} -> x)
      "hi"
      iex> Erlpy.close_input(ref)
      :ok
      iex> receive do: ({:py_stream, ^ref, terminal} -> terminal)
      :done
  """
  @spec send_input(stream_ref(), term()) :: :ok
  def send_input(ref, value), do: :py.stream_send(ref, value)

  @doc """
  Ends the input of a stream started with `input: true` (see `send_input/2`).
  """
  @spec close_input(stream_ref()) :: :ok
  def close_input(ref), do: :py.stream_close(ref)

  ## Erlang and Elixir functions callable from Python

  @doc """
  Lets Python call `fun` as `erlang.call(name, *args)` (or `erlang.name(*args)`,
  `erlpy.erlang` being `erlang` in `__main__`).

  A fun of arity N receives the N arguments Python passed (a fun of arity 1, the one
  argument). When the fun raises, Python gets an `erlpy.erlang.ErlangError` that
  carries the Elixir exception's message.

      iex> Erlpy.register_function(:add, fn a, b -> a + b end)
      :ok
      iex> Erlpy.eval("erlang.call('add', 1, 2)")
      {:ok, 3}
  """
  @spec register_function(name(), function()) :: :ok
  def register_function(name, fun)
      when (is_atom(name) or is_binary(name)) and is_function(fun) do
    {:arity, arity} = Function.info(fun, :arity)
    # `:py` gives a fun of arity 1 the argument list.
    :py.register_function(name, fn args -> run_registered(fun, arity, args) end)
  end

  def register_function(name, fun) do
    raise ArgumentError,
          "Erlpy.register_function/2 needs an atom or string name and a fun, got: " <>
            "#{inspect(name)}, #{inspect(fun)}"
  end

  defp run_registered(fun, arity, args) when length(args) == arity do
    apply(fun, args)
  rescue
    exception -> :erlang.error(Exception.message(exception))
  end

  defp run_registered(_fun, arity, args) do
    :erlang.error("the function takes #{arity} argument(s), Python passed #{length(args)}")
  end

  @doc """
  Removes a function registered with `register_function/2`.

      iex> Erlpy.register_function("short_lived", fn -> :ok end)
      :ok
      iex> Erlpy.unregister_function("short_lived")
      :ok
  """
  @spec unregister_function(name()) :: :ok
  def unregister_function(name), do: :py.unregister_function(name)

  ## Pools

  @doc """
  A child spec for a pool in your supervision tree: `name` plus the pool's options
  (docs/pools.md), so `{Erlpy, name: :ml, size: 4, none_atom: nil}` goes in a children
  list. The child's id is `{:erlpy_pool, name}`. Options are checked when the pool
  starts.

      iex> %{id: {:erlpy_pool, :ml}, type: :supervisor} = Erlpy.child_spec(name: :ml, size: 4)
  """
  @spec child_spec(keyword() | map()) :: Supervisor.child_spec()
  def child_spec(opts), do: :py.child_spec(opts)

  @doc """
  Starts a pool under erlpy's own supervisor; returns once its workers are up.

      iex> {:ok, _pid} = Erlpy.start_pool(:doc_pool, size: 1)
      iex> Erlpy.eval("1 + 1", %{}, pool: :doc_pool)
      {:ok, 2}
      iex> Erlpy.stop_pool(:doc_pool)
      :ok
  """
  @spec start_pool(atom(), keyword() | map()) :: {:ok, pid()} | {:error, exception()}
  def start_pool(name, opts \\ []), do: result(:py.start_pool(name, opts))

  @doc """
  Stops a pool started with `start_pool/2` (or by the application's configuration).

      iex> Erlpy.stop_pool(:no_such_pool)
      {:error, %Erlpy.Error{reason: {:no_pool, :no_such_pool}}}
  """
  @spec stop_pool(atom()) :: :ok | {:error, exception()}
  def stop_pool(name), do: result(:py.stop_pool(name))

  @doc """
  A map from the name of each running pool to `info/1` of that pool.

      iex> %{default: %{size: _}} = Erlpy.info()
  """
  @spec info() :: %{atom() => map()}
  def info, do: :py.info()

  @doc """
  A pool's `size`, `workers` (each with `os_pid`, `in_flight`, `restarts`, ...),
  `queued` and `python` (the version), or `{:error, exception}`.

      iex> %{size: 2, workers: [_, _]} = Erlpy.info(:default)
  """
  @spec info(pool()) :: map() | {:error, exception()}
  def info(pool) do
    case :py.info(pool) do
      {:error, reason} -> {:error, to_exception(reason)}
      info -> info
    end
  end

  ## State: handles, sessions, reload (docs/state.md)

  @doc """
  Calls method `method` of the Python object a handle names (made with `return: :ref`),
  in the worker that holds it. Options as for `call/4`.

      iex> {:ok, counter} = Erlpy.call(:collections, :Counter, [], return: :ref)
      iex> Erlpy.call_method(counter, :update, ["abca"])
      {:ok, nil}
      iex> Erlpy.call_method(counter, :get, ["a"])
      {:ok, 2}
      iex> Erlpy.release(counter)
      :ok
  """
  @spec call_method(handle(), name(), list(), [call_option()]) ::
          {:ok, term()} | {:error, exception()}
  def call_method(ref, method, args \\ [], opts \\ []) do
    check_args!(args, :call_method)
    {kwargs, opts} = pop_kwargs(opts, :call_method)

    result(
      :py.call_method(ref, method, args, kwargs, opts),
      {:kwargs, :call_method, :handle, method}
    )
  end

  @doc """
  Like `call_method/4`, but returns the value or raises the exception.

      iex> {:ok, list} = Erlpy.eval("[3, 1, 2]", %{}, return: :ref)
      iex> Erlpy.call_method!(list, :sort, [], kwargs: [reverse: true])
      nil
      iex> Erlpy.eval!("xs", %{xs: list})
      [3, 2, 1]
  """
  @spec call_method!(handle(), name(), list(), [call_option()]) :: term()
  def call_method!(ref, method, args \\ [], opts \\ []),
    do: unwrap!(call_method(ref, method, args, opts))

  @doc """
  An attribute of the Python object a handle names.

      iex> {:ok, frac} = Erlpy.call(:fractions, :Fraction, [3, 4], return: :ref)
      iex> Erlpy.getattr(frac, :denominator)
      {:ok, 4}
  """
  @spec getattr(handle(), name(), [call_option()]) :: {:ok, term()} | {:error, exception()}
  def getattr(ref, name, opts \\ []) do
    check_opts!(opts, :getattr)
    result(:py.getattr(ref, name, opts))
  end

  @doc """
  Lets the worker drop the object a handle names; later uses of the handle fail with
  `{:stale_ref, _}`. Handles are also released when the process that made them (or
  their `:owner`) exits.

      iex> {:ok, obj} = Erlpy.eval("object()", %{}, return: :ref)
      iex> Erlpy.release(obj)
      :ok
  """
  @spec release(handle()) :: :ok
  def release(ref), do: :py.release(ref)

  @doc """
  Starts a session: a private Python namespace on one worker. Pass it as
  `session: session` to `eval/3`, `exec/2`, `call/4` (of `:__main__` functions) and the
  streams. Options: `:pool`, `:owner`, `:timeout`.

      iex> {:ok, s} = Erlpy.session_start()
      iex> Erlpy.exec("n = 41", session: s)
      :ok
      iex> Erlpy.eval("n + 1", %{}, session: s)
      {:ok, 42}
      iex> Erlpy.session_stop(s)
      :ok
  """
  @spec session_start([call_option()]) :: {:ok, session()} | {:error, exception()}
  def session_start(opts \\ []) do
    check_opts!(opts, :session_start)
    result(:py.session_start(opts))
  end

  @doc "Ends a session; its namespace is dropped."
  @spec session_stop(session()) :: :ok
  def session_stop(session), do: :py.session_stop(session)

  @doc """
  Runs `fun` with a new session and stops the session when `fun` returns or raises;
  returns what `fun` returns. Options as for `session_start/1`.

      iex> Erlpy.session(fn s ->
      ...>   :ok = Erlpy.exec!("history = []", session: s)
      ...>   Erlpy.eval!("history.append('hi') or history", %{}, session: s)
      ...> end)
      ["hi"]
  """
  @spec session([call_option()], (session() -> result)) :: result when result: term()
  def session(opts \\ [], fun) when is_function(fun, 1) do
    case session_start(opts) do
      {:ok, session} ->
        try do
          fun.(session)
        after
          session_stop(session)
        end

      {:error, exception} ->
        raise exception
    end
  end

  @doc """
  Loads the current source of a Python module on every worker of the pool, and installs
  it only if it loaded everywhere (else the old code stays everywhere). Options:
  `:pool`, `:timeout`.

      iex> Erlpy.reload(:json)
      :ok
  """
  @spec reload(name(), [call_option()]) :: :ok | {:error, exception()}
  def reload(module, opts \\ []) do
    check_module!(module, :reload)
    check_opts!(opts, :reload)
    result(:py.reload(module, opts))
  end

  ## Errors

  @doc """
  The exception for an error reason of `:py` (as in the terminal message of a stream
  of `start_stream/4`): `Erlpy.PythonError` for a Python exception, `Erlpy.Error`
  for anything else.

      iex> Erlpy.to_exception({:python, "KeyError", "'k'", ""})
      %Erlpy.PythonError{type: "KeyError", message: "'k'", traceback: ""}
      iex> Erlpy.to_exception(:timeout)
      %Erlpy.Error{reason: :timeout}
  """
  @spec to_exception(term()) :: exception()
  def to_exception({:python, type, message, traceback}),
    do: %Erlpy.PythonError{type: type, message: message, traceback: traceback}

  def to_exception(reason), do: %Erlpy.Error{reason: reason}

  ## Internal

  defp result({:error, reason}), do: {:error, to_exception(reason)}
  defp result(ok), do: ok

  # Every option any function here takes; another is an unknown option.
  @option_names [:pool, :timeout, :kwargs, :return, :owner, :session, :input] ++
                  [:window, :idle_timeout, :close_timeout]

  # An unknown option of a call, eval or stream is most likely a Python keyword argument
  # (for eval, a variable) given as an option: the error says where it goes. The example
  # is only built into text when there is an error, away from the calls' path.
  defp result({:error, {:bad_option, {key, _} = option} = reason}, example)
       when key not in @option_names do
    {:error, %Erlpy.Error{reason: reason, hint: hint(example, option)}}
  end

  defp result(other, _example), do: result(other)

  defp hint(example, {key, _} = option) do
    case did_you_mean(key) do
      nil -> hint_where(example, option)
      name -> "did you mean #{name}:? (#{hint_where(example, option)})"
    end
  end

  defp hint_where({:kwargs, function, target, name}, option) do
    target = if target == :handle, do: "handle", else: inspect(target)

    "Python keyword arguments go in kwargs:, as in " <>
      "Erlpy.#{function}(#{target}, #{inspect(name)}, args, kwargs: #{inspect([option])})"
  end

  defp hint_where({:locals, function}, {key, value}) do
    "Python variables go in the locals, as in " <>
      "Erlpy.#{function}(code, #{inspect(%{key => value})})"
  end

  # The option an unknown key is most likely a misspelling of (timout:, windw:), if any.
  defp did_you_mean(key) when is_atom(key) do
    key = Atom.to_string(key)

    @option_names
    |> Enum.map(&{String.jaro_distance(key, Atom.to_string(&1)), &1})
    |> Enum.filter(fn {distance, _} -> distance >= 0.9 end)
    |> Enum.max(fn -> {0, nil} end)
    |> elem(1)
  end

  defp did_you_mean(_key), do: nil

  defp unwrap!({:ok, value}), do: value
  defp unwrap!(:ok), do: :ok
  defp unwrap!({:error, exception}), do: raise(exception)

  defp pop_kwargs(opts, function) do
    check_opts!(opts, function)
    {kwargs, opts} = Keyword.pop(opts, :kwargs, %{})
    {kwargs, opts}
  end

  defp check_opts!(opts, function) do
    unless is_list(opts) and Keyword.keyword?(opts) do
      raise ArgumentError,
            "Erlpy.#{function} takes its options as a keyword list (Python keyword " <>
              "arguments go in kwargs:), got: #{inspect(opts)}"
    end
  end

  # An Elixir alias (`Math`, the atom :"Elixir.Math") never names a Python module; Python
  # would only say that there is no module named 'Elixir'.
  defp check_module!(module, function) when is_atom(module) do
    case Atom.to_string(module) do
      "Elixir." <> name ->
        python = String.downcase(name)

        raise ArgumentError,
              "Erlpy.#{function}: #{name} is an Elixir module alias, not a Python module; " <>
                "name the Python module with an atom or a string, such as " <>
                "#{inspect(String.to_atom(python))} or #{inspect(python)}"

      _ ->
        :ok
    end
  end

  # A charlist (~c"math", 'math') is the Elixir spelling of an Erlang string, never a
  # Python module's name.
  defp check_module!([c | _] = module, function) when is_integer(c) do
    raise ArgumentError,
          "Erlpy.#{function}: #{inspect(module)} is a charlist; name the Python module " <>
            "with a string or an atom, such as #{inspect(List.to_string(module))}"
  end

  defp check_module!(_module, _function), do: :ok

  # :py would return {:error, {:badarg, {:bad_args, args}}}: a mistake in the program.
  defp check_args!(args, _function) when is_list(args), do: :ok

  defp check_args!(args, function) do
    raise ArgumentError,
          "Erlpy.#{function} takes the Python arguments as a list, such as " <>
            "#{inspect([args])}; got: #{inspect(args)}"
  end

  defp check_locals!(locals, _function) when is_map(locals), do: :ok

  defp check_locals!(locals, function) do
    raise ArgumentError,
          "Erlpy.#{function} takes the Python locals as a map and its options last, as in " <>
            "Erlpy.#{function}(code, %{}, pool: :name); got locals: #{inspect(locals)}"
  end
end

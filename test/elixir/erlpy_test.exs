defmodule Erlpy.ApiTest do
  # The Elixir API (elixir/lib): calls, options, exceptions, message-based streams,
  # pools, registered functions, and the docs IEx shows. The lazy streams are in
  # erlpy_stream_test.exs. The examples of the @doc strings run here as doctests.
  use ExUnit.Case, async: false

  import ErlpyCase

  doctest Erlpy
  doctest Erlpy.PythonError
  doctest Erlpy.Error

  @python """
  def who(*args, **kwargs):
      return ['default', list(args), sorted(kwargs)]
  """

  setup_all do
    :ok = Erlpy.exec(@python)
    :ok
  end

  setup do
    on_exit(fn -> wait_until(fn -> idle?(:default) end, 20_000) end)
  end

  # A pool whose `who` says which pool it is.
  defp with_pool(name, fun) do
    init = "def who(*args, **kwargs):\n    return ['#{name}', list(args), sorted(kwargs)]"
    {:ok, _} = Erlpy.start_pool(name, size: 1, none_atom: nil, init: init)

    try do
      fun.()
    after
      :ok = Erlpy.stop_pool(name)
    end
  end

  describe "call/4 and call!/4" do
    test "args, kwargs as a map or a keyword list, and a default of no arguments" do
      assert {:ok, 4.0} = Erlpy.call(:math, :sqrt, [16])
      assert {:ok, ["default", [], []]} = Erlpy.call(:__main__, :who)

      assert {:ok, ~s({"a": 1, "b": 2})} =
               Erlpy.call(:json, :dumps, [%{b: 2, a: 1}], kwargs: [sort_keys: true])

      assert {:ok, ~s({"a": 1, "b": 2})} =
               Erlpy.call(:json, :dumps, [%{b: 2, a: 1}], kwargs: %{"sort_keys" => true})

      assert {:ok, "a/b"} = Erlpy.call("os.path", "join", ["a", "b"])
      assert 3 = Erlpy.call!(:operator, :add, [1, 2])
    end

    test "pool: chooses the pool and never reaches Python as a keyword argument" do
      with_pool(:erlpy_api_llm, fn ->
        assert {:ok, ["erlpy_api_llm", ["x"], []]} =
                 Erlpy.call(:__main__, :who, ["x"], pool: :erlpy_api_llm)

        assert {:ok, ["erlpy_api_llm", [], ["pool"]]} =
                 Erlpy.call(:__main__, :who, [],
                   kwargs: [pool: :erlpy_api_llm],
                   pool: :erlpy_api_llm
                 )

        assert ["erlpy_api_llm", [1], ["k"]] =
                 Erlpy.call!(:__main__, :who, [1], pool: :erlpy_api_llm, kwargs: %{k: 2})
      end)

      assert {:ok, ["default", ["x"], []]} = Erlpy.call(:__main__, :who, ["x"])
    end

    test "timeout: is the request's deadline" do
      assert {:error, %Erlpy.Error{reason: :timeout} = error} =
               Erlpy.call(:asyncio, :sleep, [10], timeout: 100)

      assert Exception.message(error) =~ "timeout"
      assert {:ok, nil} = Erlpy.call(:asyncio, :sleep, [0], timeout: 5_000)
    end

    test "Python errors are Erlpy.PythonError, returned or raised" do
      assert {:error, %Erlpy.PythonError{type: "ValueError", message: "math domain error"} = e} =
               Erlpy.call(:math, :sqrt, [-1])

      assert e.traceback == "ValueError: math domain error\n"
      assert Exception.message(e) == "ValueError: math domain error"

      error = assert_raise Erlpy.PythonError, fn -> Erlpy.call!(:math, :sqrt, [-1]) end
      assert %Erlpy.PythonError{type: "ValueError", message: "math domain error"} = error
      assert Exception.message(error) == "ValueError: math domain error"

      # With the traceback, when Python code raised.
      error = assert_raise Erlpy.PythonError, fn -> Erlpy.eval!("int('x')") end
      assert error.traceback =~ ~r/^Traceback \(most recent call last\):\n/

      assert Exception.message(error) ==
               "ValueError: invalid literal for int() with base 10: 'x'\n\n" <>
                 String.trim_trailing(error.traceback)

      assert_raise Erlpy.PythonError, ~r/^ModuleNotFoundError: No module named 'nosuch'/, fn ->
        Erlpy.call!(:nosuch, :f, [])
      end
    end

    test "other errors are Erlpy.Error with the reason of :py" do
      assert {:error, %Erlpy.Error{reason: {:no_pool, :nope}}} =
               Erlpy.call(:math, :sqrt, [4], pool: :nope)

      assert {:error, %Erlpy.Error{reason: {:bad_option, {:indent, 2}}}} =
               Erlpy.call(:json, :dumps, [1], indent: 2)

      assert {:error, %Erlpy.Error{reason: {:badarg, {:improper_list, :b}}}} =
               Erlpy.call(:builtins, :len, [[:a | :b]])

      error = assert_raise Erlpy.Error, fn -> Erlpy.call!(:math, :sqrt, [4], pool: :nope) end
      assert Exception.message(error) == "no pool :nope is running ({:no_pool, _})"

      assert {:error, %Erlpy.Error{reason: {:worker_exited, {:exit_status, 3}}}} =
               Erlpy.call(:os, :_exit, [3])
    end

    test "options that are not a keyword list raise ArgumentError" do
      assert_raise ArgumentError, ~r/keyword list.*kwargs:/, fn ->
        Erlpy.call(:json, :dumps, [1], %{indent: 2})
      end

      assert_raise ArgumentError, fn -> Erlpy.call(:json, :dumps, [1], [1]) end
      assert_raise ArgumentError, fn -> Erlpy.call(:json, :dumps, [1], 5_000) end
    end
  end

  describe "the slips of a new user" do
    test "an unknown option says where Python keyword arguments (or eval's variables) go" do
      assert {:error, %Erlpy.Error{reason: {:bad_option, {:indent, 2}}} = error} =
               Erlpy.call(:json, :dumps, [1], indent: 2)

      assert Exception.message(error) ==
               "bad option :indent: 2 ({:bad_option, _}); Python keyword arguments go in " <>
                 "kwargs:, as in Erlpy.call(:json, :dumps, args, kwargs: [indent: 2])"

      assert_raise Erlpy.Error, ~r/bad option :indent: 2 .*kwargs: \[indent: 2\]/, fn ->
        Erlpy.call!(:json, :dumps, [1], indent: 2)
      end

      {:ok, list} = Erlpy.eval("[3, 1, 2]", %{}, return: :ref)

      assert_raise Erlpy.Error,
                   ~r/as in Erlpy.call_method\(handle, :sort, args, kwargs: \[reverse: true\]\)$/,
                   fn -> Erlpy.call_method!(list, :sort, [], reverse: true) end

      :ok = Erlpy.release(list)

      assert {:error, %Erlpy.Error{} = error} =
               Erlpy.start_stream(:builtins, :range, [3], step: 2)

      assert Exception.message(error) =~
               "Erlpy.start_stream(:builtins, :range, args, kwargs: [step: 2])"

      assert_raise Erlpy.Error,
                   ~r/Erlpy.stream\("itertools", "count", args, kwargs: \[step: 2\]\)$/,
                   fn ->
                     Erlpy.stream("itertools", "count", [], step: 2) |> Enum.take(1)
                   end

      # eval takes no keyword arguments: Python variables go in the locals.
      assert_raise Erlpy.Error,
                   ~r/; Python variables go in the locals, as in Erlpy.eval\(code, %\{x: 2\}\)$/,
                   fn ->
                     Erlpy.eval!("x", %{}, x: 2)
                   end

      assert_raise Erlpy.Error, ~r/as in Erlpy.stream_eval\(code, %\{n: 2\}\)$/, fn ->
        Erlpy.stream_eval("range(n)", %{}, n: 2) |> Enum.to_list()
      end

      # A bad value of a known option is no keyword argument.
      assert {:error, %Erlpy.Error{reason: {:bad_option, {:timeout, -1}}, hint: nil} = error} =
               Erlpy.call(:json, :dumps, [1], timeout: -1)

      assert Exception.message(error) == "bad option :timeout: -1 ({:bad_option, _})"
    end

    test "a misspelt option gets a did-you-mean before where keyword arguments go" do
      assert {:error, %Erlpy.Error{reason: {:bad_option, {:timout, 100}}} = error} =
               Erlpy.call(:math, :sqrt, [16], timout: 100)

      assert Exception.message(error) ==
               "bad option :timout: 100 ({:bad_option, _}); did you mean timeout:? (Python " <>
                 "keyword arguments go in kwargs:, as in Erlpy.call(:math, :sqrt, args, " <>
                 "kwargs: [timout: 100]))"

      assert_raise Erlpy.Error, ~r/did you mean window:\?/, fn ->
        Erlpy.stream(:builtins, :range, [3], windw: 2) |> Enum.to_list()
      end

      assert {:error, %Erlpy.Error{} = error} =
               Erlpy.start_stream(:builtins, :range, [3], idle_timout: 10)

      assert Exception.message(error) =~ "did you mean idle_timeout:?"
      # A keyword argument that looks like no option gets no guess.
      assert {:error, %Erlpy.Error{} = error} = Erlpy.call(:json, :dumps, [1], indent: 2)
      refute Exception.message(error) =~ "did you mean"
    end

    test "requirements without venv say that they need one" do
      assert {:error, %Erlpy.Error{reason: {:bad_option, {:requirements, ["six"]}}} = error} =
               Erlpy.start_pool(:needs_a_venv, requirements: ["six"])

      assert Exception.message(error) =~ "give venv: too"
    end

    test "a charlist as the Python module, or anything but a stream to cancel, raises ArgumentError" do
      # (how a charlist inspects depends on the Elixir version: 'math' or ~c"math")
      assert_raise ArgumentError,
                   ~r/^Erlpy.call: (~c"math"|'math') is a charlist; name the Python module with a string or an atom, such as "math"$/,
                   fn -> Erlpy.call(~c"math", :sqrt, [16]) end

      assert_raise ArgumentError,
                   ~r/^Erlpy.stream: (~c"itertools"|'itertools') is a charlist/,
                   fn ->
                     Erlpy.stream(~c"itertools", :count, [])
                   end

      assert_raise ArgumentError,
                   "Erlpy.cancel takes the reference that start_stream returned, got: :x",
                   fn -> Erlpy.cancel(:x) end
    end

    test "an Elixir alias as the Python module raises ArgumentError" do
      message =
        "Erlpy.call: Math is an Elixir module alias, not a Python module; name the Python " <>
          "module with an atom or a string, such as :math or \"math\""

      assert_raise ArgumentError, message, fn -> Erlpy.call(Math, :sqrt, [16]) end

      assert_raise ArgumentError, ~r/^Erlpy.call: Math is an Elixir/, fn ->
        Erlpy.call!(Math, :sqrt, [16])
      end

      assert_raise ArgumentError,
                   ~r/^Erlpy.stream: Os.Path .* such as :"os.path" or "os.path"$/,
                   fn ->
                     Erlpy.stream(Os.Path, :join, ["a"])
                   end

      assert_raise ArgumentError,
                   ~r/^Erlpy.start_stream: Itertools is an Elixir module alias/,
                   fn ->
                     Erlpy.start_stream(Itertools, :count, [])
                   end

      assert_raise ArgumentError, ~r/^Erlpy.reload: Json is an Elixir/, fn ->
        Erlpy.reload(Json)
      end

      # Atoms and strings name Python modules, dotted or not.
      assert {:ok, "a/b"} = Erlpy.call(:"os.path", :join, ["a", "b"])
    end

    test "args that are not a list raise ArgumentError" do
      assert_raise ArgumentError,
                   "Erlpy.call takes the Python arguments as a list, such as [16]; got: 16",
                   fn -> Erlpy.call(:math, :sqrt, 16) end

      assert_raise ArgumentError, ~r/^Erlpy.call takes the Python arguments as a list/, fn ->
        Erlpy.call!(:math, :sqrt, 16)
      end

      assert_raise ArgumentError, ~r/such as \[3\]; got: 3$/, fn ->
        Erlpy.stream(:builtins, :range, 3)
      end

      assert_raise ArgumentError, ~r/^Erlpy.start_stream takes the Python arguments/, fn ->
        Erlpy.start_stream(:builtins, :range, 3)
      end

      {:ok, list} = Erlpy.eval("[3, 1, 2]", %{}, return: :ref)

      assert_raise ArgumentError, ~r/^Erlpy.call_method takes the Python arguments/, fn ->
        Erlpy.call_method(list, :index, 1)
      end

      assert_raise ArgumentError, fn -> Erlpy.call_method!(list, :index, 1) end
      :ok = Erlpy.release(list)
    end
  end

  describe "eval/3, eval!/3, exec/2, exec!/2" do
    test "locals and options" do
      assert {:ok, 2} = Erlpy.eval("1 + 1")
      assert {:ok, 100} = Erlpy.eval("x * y", %{"y" => 10, x: 10})
      # One namespace: comprehensions see the locals.
      assert {:ok, [3, 6]} = Erlpy.eval("[v * k for v in xs]", %{xs: [1, 2], k: 3})
      assert {:ok, nil} = Erlpy.eval("None", %{}, timeout: 1_000)

      assert {:error, %Erlpy.Error{reason: :timeout}} =
               Erlpy.eval("asyncio.sleep(10)", %{}, timeout: 100)

      assert 42 = Erlpy.eval!("6 * 7")

      with_pool(:erlpy_api_eval, fn ->
        assert {:ok, "erlpy_api_eval"} = Erlpy.eval("who()[0]", %{}, pool: :erlpy_api_eval)
      end)
    end

    test "a keyword list in place of the locals raises instead of becoming Python locals" do
      error = assert_raise ArgumentError, fn -> Erlpy.eval("1", pool: :llm) end
      assert Exception.message(error) =~ "Erlpy.eval(code, %{}, pool: :name)"
      assert_raise ArgumentError, fn -> Erlpy.eval!("x", x: 1) end
      assert_raise ArgumentError, fn -> Erlpy.eval("1", %{}, %{pool: :default}) end
    end

    test "errors" do
      assert {:error, %Erlpy.PythonError{type: "ZeroDivisionError", message: "division by zero"}} =
               Erlpy.eval("1 / 0")

      assert_raise Erlpy.PythonError, ~r/^SyntaxError/, fn -> Erlpy.eval!("x = 1") end

      assert {:error, %Erlpy.Error{reason: {:badarg, {:bad_local, 1}}}} =
               Erlpy.eval("1", %{1 => 2})
    end

    test "exec defines names on every worker; exec! raises" do
      assert :ok = Erlpy.exec("def erlpy_api_double(x): return 2 * x")
      assert :ok = Erlpy.exec!("erlpy_api_constant = 21")

      for _ <- 1..4,
          do: assert({:ok, 42} = Erlpy.eval("erlpy_api_double(erlpy_api_constant)"))

      assert {:error, %Erlpy.PythonError{type: "SyntaxError"}} = Erlpy.exec("def (")
      assert_raise Erlpy.PythonError, fn -> Erlpy.exec!("raise KeyError('k')") end
      assert {:error, %Erlpy.Error{reason: {:no_pool, :nope}}} = Erlpy.exec("x = 1", pool: :nope)
      assert_raise ArgumentError, fn -> Erlpy.exec("x = 1", %{pool: :default}) end
    end
  end

  describe "start_stream/4, cancel/1, ack/2, send_input/2, close_input/1" do
    test "messages of a stream, kwargs: and owner:" do
      assert {:ok, ref} =
               Erlpy.start_stream(:builtins, :sorted, [[1, 3, 2]], kwargs: [reverse: true])

      assert {:done, [3, 2, 1]} = collect(ref)

      parent = self()

      owner =
        spawn_link(fn -> receive(do: ({:go, ref} -> send(parent, {:owner, collect(ref)}))) end)

      assert {:ok, ref} = Erlpy.start_stream(:builtins, :range, [3], owner: owner)
      send(owner, {:go, ref})
      assert_receive {:owner, {:done, [0, 1, 2]}}, 10_000
    end

    test "a Python error is the terminal message; to_exception/1 makes it an exception" do
      assert {:ok, ref} = Erlpy.start_stream(:no_such_module, :gen)
      assert {{:error, reason}, []} = collect(ref)
      assert %Erlpy.PythonError{type: "ModuleNotFoundError"} = Erlpy.to_exception(reason)

      assert {:error, %Erlpy.Error{reason: {:bad_option, {:window, 0}}}} =
               Erlpy.start_stream(:builtins, :range, [3], window: 0)
    end

    test "window: and ack/2" do
      assert {:ok, ref} = Erlpy.start_stream(:builtins, :range, [10], window: 4)
      assert [0, 1, 2, 3] = for(_ <- 1..4, do: receive(do: ({:py_stream, ^ref, {:data, x}} -> x)))
      refute_receive {:py_stream, ^ref, _}, 200
      assert :ok = Erlpy.ack(ref, 6)
      assert {:done, [4, 5, 6, 7, 8, 9]} = collect(ref)
    end

    test "cancel/1 closes the generator" do
      :ok =
        Erlpy.exec("""
        def erlpy_api_ticker(notify):
            try:
                n = 0
                while True:
                    yield n
                    n += 1
            finally:
                erlang.send(notify, erlang.atom('erlpy_api_ticker_closed'))
        """)

      assert {:ok, ref} = Erlpy.start_stream(:__main__, :erlpy_api_ticker, [self()], window: 2)
      assert_receive {:py_stream, ^ref, {:data, 0}}, 10_000
      assert :ok = Erlpy.cancel(ref)
      assert {{:error, :cancelled}, _} = collect(ref)
      assert_received :erlpy_api_ticker_closed
      assert :ok = Erlpy.cancel(ref)
    end

    test "input: true, send_input/2 and close_input/1" do
      :ok =
        Erlpy.exec("""
        async def erlpy_api_shout(inbox, suffix):
            async for text in inbox:
                yield text.upper() + suffix
        """)

      assert {:ok, ref} = Erlpy.start_stream(:__main__, :erlpy_api_shout, ["!"], input: true)
      assert :ok = Erlpy.send_input(ref, "hello")
      assert_receive {:py_stream, ^ref, {:data, "HELLO!"}}, 10_000
      assert :ok = Erlpy.send_input(ref, "bye")
      assert :ok = Erlpy.close_input(ref)
      assert {:done, ["BYE!"]} = collect(ref)
    end

    test "idle_timeout: and timeout:" do
      :ok =
        Erlpy.exec("""
        async def erlpy_api_stalls():
            yield 'first'
            await asyncio.sleep(60)
        """)

      assert {:ok, ref} =
               Erlpy.start_stream(:__main__, :erlpy_api_stalls, [],
                 idle_timeout: 100,
                 timeout: 5_000
               )

      assert {{:error, :timeout}, ["first"]} = collect(ref)

      assert {:error, %Erlpy.Error{reason: {:bad_option, {:idle_timeout, 0}}}} =
               Erlpy.start_stream(:__main__, :erlpy_api_stalls, [], idle_timeout: 0)

      assert_raise ArgumentError, fn -> Erlpy.start_stream(:builtins, :range, [1], %{}) end
    end

    test "a stream reference of the wrong type raises, as in :py" do
      assert_raise ArgumentError, fn -> Erlpy.cancel(:not_a_ref) end
      assert_raise ArgumentError, fn -> Erlpy.ack(make_ref(), 0) end
    end
  end

  describe "pools" do
    test "{Erlpy, opts} in a Supervisor.start_link children list" do
      python = System.get_env("ERLPY_PYTHON", "python3")

      children = [
        {Erlpy, name: :erlpy_api_ml, size: 2, python: python, none_atom: nil},
        {Erlpy, %{name: :erlpy_api_scratch, size: 1}}
      ]

      {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)

      try do
        assert {:ok, 4.0} = Erlpy.call(:math, :sqrt, [16], pool: :erlpy_api_ml)
        assert {:ok, nil} = Erlpy.eval("None", %{}, pool: :erlpy_api_ml)
        assert {:ok, :none} = Erlpy.eval("None", %{}, pool: :erlpy_api_scratch)
        assert %{size: 2, workers: [_, _]} = Erlpy.info(:erlpy_api_ml)
        assert %{erlpy_api_ml: %{size: 2}, erlpy_api_scratch: %{size: 1}} = Erlpy.info()

        assert [
                 {{:erlpy_pool, :erlpy_api_scratch}, _, :supervisor, _},
                 {{:erlpy_pool, :erlpy_api_ml}, _, :supervisor, _}
               ] = Supervisor.which_children(sup)
      after
        :ok = Supervisor.stop(sup)
      end

      assert {:error, %Erlpy.Error{reason: {:no_pool, :erlpy_api_ml}}} =
               Erlpy.eval("1", %{}, pool: :erlpy_api_ml)

      assert_raise ArgumentError, fn -> Erlpy.child_spec(size: 2) end
    end

    test "a bad option makes the supervisor's start fail" do
      Process.flag(:trap_exit, true)

      assert {:error,
              {:shutdown,
               {:failed_to_start_child, {:erlpy_pool, :erlpy_api_bad}, {:bad_option, {:sise, 2}}}}} =
               Supervisor.start_link([{Erlpy, name: :erlpy_api_bad, sise: 2}],
                 strategy: :one_for_one
               )
    end

    test "start_pool/2, stop_pool/1, info/0,1" do
      assert {:ok, pid} = Erlpy.start_pool(:erlpy_api_pool, %{size: 1})
      assert is_pid(pid)

      assert {:error, %Erlpy.Error{reason: {:already_started, :erlpy_api_pool}}} =
               Erlpy.start_pool(:erlpy_api_pool, [])

      assert %{size: 1, workers: [%{os_pid: _, in_flight: 0, restarts: 0}], queued: 0, python: _} =
               Erlpy.info(:erlpy_api_pool)

      assert Map.has_key?(Erlpy.info(), :erlpy_api_pool)
      assert :ok = Erlpy.stop_pool(:erlpy_api_pool)

      assert {:error, %Erlpy.Error{reason: {:no_pool, :erlpy_api_pool}}} =
               Erlpy.info(:erlpy_api_pool)

      assert {:error, %Erlpy.Error{reason: {:no_pool, :erlpy_api_pool}}} =
               Erlpy.stop_pool(:erlpy_api_pool)

      refute Map.has_key?(Erlpy.info(), :erlpy_api_pool)

      assert {:error, %Erlpy.Error{reason: {:bad_option, {:size, 0}}}} =
               Erlpy.start_pool(:erlpy_api_pool, size: 0)

      assert {:error,
              %Erlpy.Error{reason: {:python_start_failed, %{reason: :python_not_found}}} = error} =
               Erlpy.start_pool(:erlpy_api_broken, python: "/nonexistent/python3")

      assert Exception.message(error) =~
               "Python could not start: no Python interpreter at /nonexistent/python3"

      assert {:error,
              %Erlpy.Error{reason: {:no_pool, :erlpy_api_broken, {:python_start_failed, _}}} =
                error} = Erlpy.eval("1", %{}, pool: :erlpy_api_broken)

      assert Exception.message(error) =~ "did not start: Python could not start"
    end
  end

  describe "register_function/2" do
    test "a fun of arity N gets the N arguments Python passed" do
      :ok = Erlpy.register_function(:erlpy_api_add, fn a, b -> a + b end)
      :ok = Erlpy.register_function("erlpy_api_upcase", &String.upcase/1)
      :ok = Erlpy.register_function(:erlpy_api_node, fn -> node() end)
      :ok = Erlpy.register_function(:erlpy_api_first, fn list -> hd(list) end)

      try do
        assert {:ok, 3} = Erlpy.eval("erlang.call('erlpy_api_add', 1, 2)")
        assert {:ok, "ADA"} = Erlpy.eval("erlang.erlpy_api_upcase('ada')")
        assert {:ok, node} = Erlpy.eval("erlang.call('erlpy_api_node')")
        assert node == node()
        # Arity 1: the one argument, even when it is a list.
        assert {:ok, 1} = Erlpy.eval("erlang.erlpy_api_first([1, 2])")
      after
        for name <- [:erlpy_api_add, "erlpy_api_upcase", :erlpy_api_node, :erlpy_api_first],
            do: :ok = Erlpy.unregister_function(name)
      end

      assert {:error, %Erlpy.PythonError{type: "erlpy.erlang.ErlangError", message: message}} =
               Erlpy.eval("erlang.call('erlpy_api_add', 1, 2)")

      assert message =~ "no Erlang function is registered as 'erlpy_api_add'"
    end

    test "an Elixir exception reaches Python with its message" do
      :ok =
        Erlpy.register_function(:erlpy_api_fail, fn x -> raise ArgumentError, "bad x: #{x}" end)

      :ok = Erlpy.register_function(:erlpy_api_two, fn a, b -> {a, b} end)

      :ok =
        Erlpy.exec("""
        def erlpy_api_catch(name, *args):
            try:
                erlang.call(name, *args)
            except erlang.ErlangError as e:
                return [str(e), e.reason[1]]
        """)

      try do
        assert {:ok, [text, "bad x: 7"]} = Erlpy.eval("erlpy_api_catch('erlpy_api_fail', 7)")
        assert text =~ "bad x: 7"

        assert {:ok, [_, "the function takes 2 argument(s), Python passed 1"]} =
                 Erlpy.eval("erlpy_api_catch('erlpy_api_two', 7)")

        assert {:error, %Erlpy.PythonError{message: message}} =
                 Erlpy.eval("erlang.erlpy_api_fail(1)")

        assert message =~ "bad x: 1"
      after
        :ok = Erlpy.unregister_function(:erlpy_api_fail)
        :ok = Erlpy.unregister_function(:erlpy_api_two)
      end
    end

    test "a name or fun of the wrong type raises ArgumentError" do
      assert_raise ArgumentError, fn -> Erlpy.register_function(~c"f", fn -> 1 end) end
      assert_raise ArgumentError, fn -> Erlpy.register_function(:f, :not_a_fun) end
    end
  end

  describe "docs and specs" do
    test "Code.fetch_docs/1 has the module doc and a doc for every public function" do
      assert {:docs_v1, _, :elixir, "text/markdown", %{"en" => moduledoc}, _, docs} =
               Code.fetch_docs(Erlpy)

      assert moduledoc =~ "Run Python from Elixir"

      assert {{:function, :call, 4}, _, ["call(module, function, args \\\\ [], opts \\\\ [])"],
              %{"en" => doc}, _} = List.keyfind(docs, {:function, :call, 4}, 0)

      assert doc =~ "kwargs"

      # A function with default arguments: its doc is on the highest arity.
      for {name, arity} <- Erlpy.__info__(:functions) do
        assert Enum.any?(docs, fn
                 {{:function, ^name, a}, _, _, %{"en" => text}, _} -> a >= arity and text != ""
                 _ -> false
               end),
               "Erlpy.#{name}/#{arity} has no doc"
      end

      for module <- [Erlpy.PythonError, Erlpy.Error] do
        assert {:docs_v1, _, :elixir, _, %{"en" => _}, _, _} = Code.fetch_docs(module)
      end
    end

    test "the Mix build carries the EDoc of :py as a chunk, so h :py.call works too" do
      assert {:docs_v1, _, :erlang, _, _, _, docs} = Code.fetch_docs(:py)
      assert {_, _, _, %{"en" => _}, _} = List.keyfind(docs, {:function, :call, 3}, 0)
    end

    test "every public function has a typespec" do
      {:ok, specs} = Code.Typespec.fetch_specs(Erlpy)
      specced = for {{name, arity}, _} <- specs, do: {name, arity}

      # A function with default arguments: its spec is on the highest arity.
      for {name, arity} <- Erlpy.__info__(:functions) do
        assert Enum.any?(specced, fn {n, a} -> n == name and a >= arity end),
               "Erlpy.#{name}/#{arity} has no @spec"
      end

      for module <- [Erlpy.PythonError, Erlpy.Error] do
        assert {:ok, types} = Code.Typespec.fetch_types(module)
        assert Enum.any?(types, &match?({:type, {:t, _, []}}, &1))
      end
    end
  end
end

defmodule Erlpy.LazyStreamTest do
  # Erlpy.stream/4 and Erlpy.stream_eval/3: lazy, bounded by a window, cancelled when the
  # consumer halts, raises or dies; inside Tasks, GenServers and pipelines of processes.
  use ExUnit.Case, async: false

  import ErlpyCase

  @python """
  import time

  def erlpy_counted(notify, tag='closed'):
      # Endless; tells `notify` each item it makes and when it is closed.
      n = 0
      try:
          while True:
              erlang.send(notify, (erlang.atom('produced'), n))
              yield n
              n += 1
      finally:
          erlang.send(notify, erlang.atom(tag))

  async def erlpy_async_counted(notify):
      n = 0
      try:
          while True:
              yield n
              n += 1
              await asyncio.sleep(0)
      finally:
          erlang.send(notify, erlang.atom('async_closed'))

  def erlpy_fails_after(n):
      yield from range(n)
      raise ValueError('no more')

  def erlpy_started(notify):
      erlang.send(notify, erlang.atom('started'))
      yield from range(3)

  def erlpy_kw(a, b=0, c=0):
      yield from (a, b, c)

  async def erlpy_stalls():
      yield 'first'
      await asyncio.sleep(60)
  """

  setup_all do
    :ok = Erlpy.exec(@python)
    :ok
  end

  setup do
    on_exit(fn -> wait_until(fn -> idle?(:default) end, 20_000) end)
  end

  defp no_stream_messages_left do
    refute_received {:py_stream, _, _}
  end

  describe "stream/4" do
    test "Enum.take(5) of an endless generator: 5 items, and its finally has run" do
      assert [0, 1, 2, 3, 4] = Erlpy.stream(:__main__, :erlpy_counted, [self()]) |> Enum.take(5)
      # The halt waits for the stream's terminal message, which Python sends after the
      # generator's finally; the finally's own message may still be on its way.
      assert_receive :closed, 5_000
      no_stream_messages_left()
    end

    test "it is lazy: Python starts when enumeration starts, and anew each time" do
      stream = Erlpy.stream(:__main__, :erlpy_started, [self()])
      refute_receive :started, 200
      assert [0, 1, 2] = Enum.to_list(stream)
      assert_received :started
      assert [0, 1, 2] = Enum.to_list(stream)
      assert_received :started
      no_stream_messages_left()
    end

    test "finite generators, kwargs:, async generators, piping" do
      assert [0, 1, 2, 3] = Erlpy.stream(:builtins, :range, [4]) |> Enum.to_list()
      assert [] = Erlpy.stream(:builtins, :range, [0]) |> Enum.to_list()

      assert [1, 2, 3] =
               Erlpy.stream(:__main__, :erlpy_kw, [1], kwargs: [b: 2, c: 3]) |> Enum.to_list()

      assert [1, 0, 5] =
               Erlpy.stream(:__main__, :erlpy_kw, [1], kwargs: %{"c" => 5}) |> Enum.to_list()

      assert 4950 = Erlpy.stream(:builtins, :range, [100], window: 3) |> Enum.sum()

      assert ["A", "B"] =
               Erlpy.stream(:builtins, :iter, ["ab"])
               |> Stream.map(&String.upcase/1)
               |> Enum.to_list()

      assert Enum.to_list(0..9999) ==
               Erlpy.stream(:builtins, :range, [10_000], window: 1) |> Enum.to_list()

      assert [0, 1, 2] = Erlpy.stream(:__main__, :erlpy_async_counted, [self()]) |> Enum.take(3)
      assert_receive :async_closed, 10_000
      no_stream_messages_left()
    end

    test "Stream.take_while/2 and Stream.zip/2 halt the generators they stop" do
      assert [0, 1, 2] =
               Erlpy.stream(:__main__, :erlpy_counted, [self()])
               |> Stream.take_while(&(&1 < 3))
               |> Enum.to_list()

      assert_received :closed

      assert [{0, 10}, {1, 11}] =
               Stream.zip(
                 Erlpy.stream(:__main__, :erlpy_counted, [self(), "left"]),
                 Erlpy.stream(:__main__, :erlpy_counted, [self()]) |> Stream.drop(10)
               )
               |> Enum.take(2)

      assert_received :left
      assert_received :closed
      no_stream_messages_left()
    end

    test "a slow consumer of an endless generator with window: 16 finds Python at most a window or two ahead" do
      tracker = spawn_link(fn -> track(-1) end)
      window = 16

      ahead =
        Erlpy.stream(:__main__, :erlpy_counted, [tracker], window: window)
        |> Stream.map(fn n ->
          Process.sleep(5)
          produced(tracker) - n
        end)
        |> Enum.take(100)

      assert Enum.max(ahead) <= 2 * window, "Python ran #{Enum.max(ahead)} items ahead"
      # Python did run ahead of the consumer (the window is used, not one item at a time).
      assert Enum.max(ahead) > 1
      no_stream_messages_left()
    end

    test "the default window bounds Python too" do
      tracker = spawn_link(fn -> track(-1) end)

      ahead =
        Erlpy.stream(:__main__, :erlpy_counted, [tracker])
        |> Stream.map(fn n ->
          Process.sleep(2)
          produced(tracker) - n
        end)
        |> Enum.take(200)

      assert Enum.max(ahead) <= 2 * 64
    end

    test "a Python error raises Erlpy.PythonError in the consumer, after the items before it" do
      parent = self()

      error =
        assert_raise Erlpy.PythonError, ~r/^ValueError: no more/, fn ->
          Erlpy.stream(:__main__, :erlpy_fails_after, [2])
          |> Stream.each(&send(parent, {:item, &1}))
          |> Stream.run()
        end

      assert %Erlpy.PythonError{type: "ValueError", message: "no more"} = error
      assert_received {:item, 0}
      assert_received {:item, 1}

      assert_raise Erlpy.PythonError, ~r/^ModuleNotFoundError/, fn ->
        Erlpy.stream(:no_such_module, :gen, []) |> Enum.to_list()
      end

      no_stream_messages_left()
    end

    test "failures to start and other ends raise Erlpy.Error" do
      assert_raise Erlpy.Error, ~r/bad option :window: 0/, fn ->
        Erlpy.stream(:builtins, :range, [3], window: 0) |> Enum.to_list()
      end

      assert %Erlpy.Error{reason: {:no_pool, :nope}} =
               catch_error(Erlpy.stream(:builtins, :range, [3], pool: :nope) |> Enum.to_list())

      assert %Erlpy.Error{reason: {:bad_option, {:tiemout, 5}}} =
               catch_error(Erlpy.stream(:builtins, :range, [3], tiemout: 5) |> Enum.to_list())

      parent = self()

      assert %Erlpy.Error{reason: :timeout} =
               catch_error(
                 Erlpy.stream(:__main__, :erlpy_stalls, [], idle_timeout: 200)
                 |> Stream.each(&send(parent, {:item, &1}))
                 |> Stream.run()
               )

      assert_received {:item, "first"}
      no_stream_messages_left()
    end

    test "pool: and timeout: (to start) for stream and stream_eval" do
      init = "def erlpy_which():\n    yield 'erlpy_stream_pool'"
      {:ok, _} = Erlpy.start_pool(:erlpy_stream_pool, size: 1, init: init)

      try do
        assert ["erlpy_stream_pool"] =
                 Erlpy.stream(:__main__, :erlpy_which, [],
                   pool: :erlpy_stream_pool,
                   timeout: 5_000
                 )
                 |> Enum.to_list()

        assert ["erlpy_stream_pool"] =
                 Erlpy.stream_eval("erlpy_which()", %{}, pool: :erlpy_stream_pool, timeout: 5_000)
                 |> Enum.to_list()

        # Not on the default pool.
        assert_raise Erlpy.PythonError, ~r/^NameError/, fn ->
          Erlpy.stream_eval("erlpy_which()") |> Enum.to_list()
        end
      after
        :ok = Erlpy.stop_pool(:erlpy_stream_pool)
      end

      assert %Erlpy.Error{reason: {:bad_option, {:timeout, -1}}} =
               catch_error(Erlpy.stream(:builtins, :range, [3], timeout: -1) |> Enum.to_list())
    end

    test "options of the wrong shape raise ArgumentError at once" do
      assert_raise ArgumentError, ~r/no :owner option/, fn ->
        Erlpy.stream(:builtins, :range, [3], owner: self())
      end

      assert_raise ArgumentError, fn -> Erlpy.stream(:builtins, :range, [3], input: true) end
      assert_raise ArgumentError, fn -> Erlpy.stream(:builtins, :range, [3], %{window: 2}) end

      assert_raise ArgumentError, fn ->
        Erlpy.stream(:builtins, :range, [3], close_timeout: -1)
      end

      # longer than a receive can wait (2^32-1 ms): it would crash the consumer at the end
      assert_raise ArgumentError, fn ->
        Erlpy.stream(:builtins, :range, [3], close_timeout: Bitwise.bsl(1, 32))
      end
    end

    test "an exception in the consumer cancels the generator (its finally has run)" do
      assert_raise RuntimeError, "enough", fn ->
        Erlpy.stream(:__main__, :erlpy_counted, [self()])
        |> Stream.each(fn n -> if n == 3, do: raise("enough") end)
        |> Stream.run()
      end

      assert_received :closed
      no_stream_messages_left()
    end

    test "the consumer's death cancels the generator" do
      parent = self()

      consumer =
        spawn(fn ->
          Erlpy.stream(:__main__, :erlpy_counted, [parent])
          |> Stream.each(&send(parent, {:consumed, &1}))
          |> Stream.run()
        end)

      assert_receive {:consumed, 2}, 10_000
      Process.exit(consumer, :kill)
      assert_receive :closed, 10_000
    end

    test "close_timeout: bounds the wait for the generator to close" do
      # With 0, Enum.take/2 does not wait: the end of the stream reaches the mailbox later.
      assert [0] = Erlpy.stream(:itertools, :count, [], close_timeout: 0) |> Enum.take(1)
      assert_receive {:py_stream, _, {:error, :cancelled}}, 10_000
      assert [0] = Erlpy.stream(:itertools, :count, [], close_timeout: :infinity) |> Enum.take(1)
      no_stream_messages_left()
    end
  end

  describe "stream_eval/3" do
    test "lazy, with locals in one namespace with __main__" do
      :ok = Erlpy.exec("erlpy_offset = 100")
      stream = Erlpy.stream_eval("(x * k + erlpy_offset for x in xs)", %{xs: [1, 2, 3], k: 2})
      assert [102, 104, 106] = Enum.to_list(stream)
      assert [0, 1, 4] = Erlpy.stream_eval("(x * x for x in range(3))") |> Enum.to_list()
      assert ["a", "b"] = Erlpy.stream_eval(~c"iter('ab')") |> Enum.to_list()

      assert [0, 1, 2, 3, 4] =
               Erlpy.stream_eval("__import__('itertools').count()", %{}, window: 2)
               |> Enum.take(5)

      assert [0, 1, 2] = Erlpy.stream_eval("erlpy_counted(p)", %{"p" => self()}) |> Enum.take(3)

      assert_received :closed
      no_stream_messages_left()
    end

    test "errors" do
      assert_raise Erlpy.PythonError, ~r/^NameError/, fn ->
        Erlpy.stream_eval("nope") |> Enum.to_list()
      end

      assert_raise Erlpy.PythonError, ~r/^SyntaxError/, fn ->
        Erlpy.stream_eval("x = 1") |> Enum.to_list()
      end

      assert_raise Erlpy.PythonError, ~r/^TypeError/, fn ->
        Erlpy.stream_eval("1") |> Enum.to_list()
      end

      assert %Erlpy.Error{reason: {:badarg, {:bad_local, 1}}} =
               catch_error(Erlpy.stream_eval("x", %{1 => 2}) |> Enum.to_list())

      assert %Erlpy.Error{reason: {:no_pool, :nope}} =
               catch_error(Erlpy.stream_eval("range(2)", %{}, pool: :nope) |> Enum.to_list())

      assert_raise ArgumentError, fn -> Erlpy.stream_eval("range(n)", n: 2) end
      assert_raise ArgumentError, fn -> Erlpy.stream_eval("range(2)", %{}, kwargs: [a: 1]) end
      no_stream_messages_left()
    end
  end

  describe "in processes" do
    test "Task.async_stream: each task enumerates its own Python stream" do
      results =
        1..6
        |> Task.async_stream(
          fn n -> Erlpy.stream(:builtins, :range, [n], window: 2) |> Enum.sum() end,
          max_concurrency: 3
        )
        |> Enum.map(fn {:ok, sum} -> sum end)

      assert results == Enum.map(1..6, &Enum.sum(0..(&1 - 1)))
    end

    defmodule Summer do
      use GenServer

      def init(:ok), do: {:ok, 0}

      def handle_call({:sum, n}, _from, calls) do
        {:reply, Erlpy.stream_eval("range(n)", %{n: n}) |> Enum.sum(), calls + 1}
      end

      def handle_call({:first, n, notify}, _from, calls) do
        {:reply, Erlpy.stream(:__main__, :erlpy_counted, [notify]) |> Enum.take(n), calls + 1}
      end
    end

    test "a GenServer enumerates streams in its callbacks; nothing is left in its mailbox" do
      {:ok, server} = GenServer.start_link(Summer, :ok)
      assert 4950 = GenServer.call(server, {:sum, 100})
      assert [0, 1] = GenServer.call(server, {:first, 2, self()})
      assert_receive :closed, 10_000
      assert {:messages, []} = Process.info(server, :messages)
      GenServer.stop(server)
    end

    test "a pipeline of processes: a stream made here, enumerated by a producer stage" do
      parent = self()
      stream = Erlpy.stream(:__main__, :erlpy_counted, [parent]) |> Stream.map(&(&1 * 10))

      # A producer stage that emits what a consumer stage asks for, as GenStage does.
      producer =
        spawn_link(fn ->
          stream
          |> Stream.chunk_every(3)
          |> Stream.each(fn chunk ->
            receive(do: ({:demand, from} -> send(from, {:events, chunk})))
          end)
          |> Stream.take(2)
          |> Stream.run()

          send(parent, :producer_done)
        end)

      consumer =
        spawn_link(fn ->
          events =
            for _ <- 1..2 do
              send(producer, {:demand, self()})
              receive(do: ({:events, events} -> events))
            end

          send(parent, {:consumed, List.flatten(events)})
        end)

      assert is_pid(consumer)
      assert_receive {:consumed, [0, 10, 20, 30, 40, 50]}, 10_000
      assert_receive :producer_done, 10_000
      assert_receive :closed, 10_000
    end
  end

  # A process that remembers the highest item the generator said it produced.
  defp track(max) do
    receive do
      {:produced, n} -> track(max(n, max))
      {:get, from} -> send(from, {:max, max}) && track(max)
    end
  end

  defp produced(tracker) do
    send(tracker, {:get, self()})
    receive(do: ({:max, max} -> max))
  end
end

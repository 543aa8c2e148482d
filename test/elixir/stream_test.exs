defmodule Erlpy.StreamTest do
  # :py.stream_start from Elixir: events go to an Elixir process (the caller, a spawned
  # collector, a GenServer), windows, cancellation. The lazy streams of the Elixir API
  # (Erlpy.stream/4, built on it) are tested in erlpy_stream_test.exs.
  use ExUnit.Case, async: false

  import ErlpyCase

  @tokens """
  async def tokens(text, delay=0.001):
      for word in text.split():
          await asyncio.sleep(delay)
          yield word

  def countdown(n):
      try:
          while n > 0:
              yield n
              n -= 1
      finally:
          global closed
          closed = True
  """

  setup_all do
    :ok = :py.exec(@tokens)
    :ok
  end

  setup do
    on_exit(fn -> wait_until(fn -> idle?(:default) end, 20_000) end)
  end

  defmodule Collector do
    # A process that collects the tokens of one stream and reports them when it ends.
    def start(parent) do
      spawn_link(fn ->
        receive do
          {:collect, ref} -> send(parent, {:collected, ref, loop(ref, [])})
        end
      end)
    end

    defp loop(ref, acc) do
      receive do
        {:py_stream, ^ref, {:data, token}} -> loop(ref, [token | acc])
        {:py_stream, ^ref, :done} -> {:done, Enum.reverse(acc)}
        {:py_stream, ^ref, {:error, reason}} -> {{:error, reason}, Enum.reverse(acc)}
      end
    end
  end

  test "the caller receives the tokens of an async generator" do
    {:ok, ref} = :py.stream_start(:__main__, :tokens, ["streamed one word at a time"])
    assert {:done, ["streamed", "one", "word", "at", "a", "time"]} = collect(ref)
  end

  test "owner: sends the tokens to another Elixir process" do
    collector = Collector.start(self())
    {:ok, ref} = :py.stream_start(:__main__, :tokens, ["to another process"], owner: collector)
    send(collector, {:collect, ref})
    assert_receive {:collected, ^ref, {:done, ["to", "another", "process"]}}, 30_000
    refute_received {:py_stream, ^ref, _}
  end

  defmodule TokenServer do
    # A GenServer that starts streams and keeps their tokens in its state.
    use GenServer

    def start_link(_), do: GenServer.start_link(__MODULE__, %{})
    def stream(server, text), do: GenServer.call(server, {:stream, text})
    def result(server, ref), do: GenServer.call(server, {:result, ref})

    @impl true
    def init(state), do: {:ok, state}

    @impl true
    def handle_call({:stream, text}, _from, state) do
      {:ok, ref} = :py.stream_start(:__main__, :tokens, [text])
      {:reply, ref, Map.put(state, ref, {:running, []})}
    end

    def handle_call({:result, ref}, _from, state), do: {:reply, Map.fetch!(state, ref), state}

    @impl true
    def handle_info({:py_stream, ref, {:data, token}}, state) do
      {:noreply, Map.update!(state, ref, fn {:running, acc} -> {:running, [token | acc]} end)}
    end

    def handle_info({:py_stream, ref, terminal}, state) do
      {:noreply, Map.update!(state, ref, fn {:running, acc} -> {terminal, Enum.reverse(acc)} end)}
    end
  end

  test "a GenServer receives several streams in handle_info" do
    server = start_supervised!(TokenServer)
    refs = for text <- ["a b c", "d e", "f"], do: {text, TokenServer.stream(server, text)}

    for {text, ref} <- refs do
      wait_until(fn -> match?({:done, _}, TokenServer.result(server, ref)) end)
      assert {:done, String.split(text)} == TokenServer.result(server, ref)
    end
  end

  test "stream_start options as a keyword list: window, stream_ack, idle_timeout" do
    {:ok, ref} = :py.stream_start(:builtins, :range, [5], window: 2, idle_timeout: 10_000)
    assert_receive {:py_stream, ^ref, {:data, 0}}, 30_000
    assert_receive {:py_stream, ^ref, {:data, 1}}, 30_000
    refute_receive {:py_stream, ^ref, _}, 100
    :ok = :py.stream_ack(ref, 10)
    assert {:done, [2, 3, 4]} = collect(ref)
  end

  test "stream_cancel closes the generator; its finally runs" do
    {:ok, _} = :py.start_pool(:ex_cancel, size: 1, init: @tokens)
    :ok = :py.exec("closed = False", pool: :ex_cancel)
    {:ok, ref} = :py.stream_start(:__main__, :countdown, [1_000_000], window: 3, pool: :ex_cancel)
    assert_receive {:py_stream, ^ref, {:data, 1_000_000}}, 30_000
    :ok = :py.stream_cancel(ref)
    assert {{:error, :cancelled}, _} = collect(ref)
    assert {:ok, true} = :py.eval("closed", %{}, pool: :ex_cancel)
    :ok = :py.stop_pool(:ex_cancel)
  end

  test "a stream whose owner dies is cancelled" do
    parent = self()

    owner =
      spawn(fn ->
        {:ok, ref} = :py.stream_start(:__main__, :countdown, [1_000_000], window: 1)
        send(parent, {:started, ref})
        Process.sleep(:infinity)
      end)

    assert_receive {:started, _ref}, 30_000
    Process.exit(owner, :kill)
    wait_until(fn -> idle?(:default) end, 20_000)
  end

  test "batch streams: stream_eval and stream" do
    assert {:ok, [0, 1, 4, 9]} = :py.stream_eval("(x * x for x in range(4))")
    assert {:ok, ["H", "I"]} = :py.stream_eval("(c.upper() for c in s)", %{s: "hi"})
    assert {:ok, ["a", "b"]} = :py.stream(:__main__, :tokens, ["a b"], delay: 0)
    assert {:ok, [3, 2, 1]} = :py.stream(:__main__, :countdown, [3], [], timeout: 10_000)
  end
end

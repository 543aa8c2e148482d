defmodule Erlpy.ConcurrencyTest do
  # Many Elixir processes calling Python at once: Task, Task.async_stream, and a pool
  # with more callers than workers.
  use ExUnit.Case, async: false

  import ErlpyCase

  setup do
    on_exit(fn -> wait_until(fn -> idle?(:default) end, 20_000) end)
  end

  test "Task.async / Task.await_many: concurrent calls each get their own answer" do
    tasks = for n <- 1..50, do: Task.async(fn -> {n, :py.call(:math, :factorial, [n])} end)

    for {n, result} <- Task.await_many(tasks, 60_000) do
      assert result == {:ok, Enum.reduce(1..n, 1, &(&1 * &2))}
    end
  end

  test "Task.async_stream over a pool keeps the order and uses every worker" do
    {:ok, _} = :py.start_pool(:ex_tasks, size: 3)
    :ok = :py.exec("import os, time", pool: :ex_tasks)

    results =
      1..30
      |> Task.async_stream(
        fn n ->
          :py.eval("(n * n, os.getpid(), time.sleep(0.02))[:2]", %{n: n}, pool: :ex_tasks)
        end,
        max_concurrency: 10,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, {:ok, {square, os_pid}}} -> {square, os_pid} end)

    assert Enum.map(results, &elem(&1, 0)) == Enum.map(1..30, &(&1 * &1))
    worker_pids = for %{os_pid: os_pid} <- :py.info(:ex_tasks).workers, do: os_pid

    assert results |> Enum.map(&elem(&1, 1)) |> Enum.uniq() |> Enum.sort() ==
             Enum.sort(worker_pids)

    :ok = :py.stop_pool(:ex_tasks)
  end

  test "async Python functions interleave on one worker" do
    {:ok, _} = :py.start_pool(:ex_async, size: 1)

    # Each call waits until all 20 have arrived: they can only all return if the one
    # worker runs them at the same time.
    :ok =
      :py.exec(
        """
        arrived = 0

        async def rendezvous(x, n):
            global arrived
            arrived += 1
            while arrived < n:
                await asyncio.sleep(0.005)
            return x
        """,
        pool: :ex_async
      )

    results =
      1..20
      |> Enum.map(fn i ->
        Task.async(fn ->
          :py.call(:__main__, :rendezvous, [i, 20], [], pool: :ex_async, timeout: 20_000)
        end)
      end)
      |> Task.await_many(30_000)

    assert results == Enum.map(1..20, &{:ok, &1})
    :ok = :py.stop_pool(:ex_async)
  end

  test "a caller that exits while its call runs does not disturb the others" do
    task = Task.async(fn -> :py.eval("__import__('time').sleep(2)") end)
    Process.sleep(50)
    Task.shutdown(task, :brutal_kill)
    assert {:ok, 2} = :py.eval("1 + 1")
  end
end

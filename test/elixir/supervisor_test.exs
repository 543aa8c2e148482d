defmodule Erlpy.SupervisorTest do
  # Pools in Elixir supervision trees: `{:py, opts}` is a child spec (py:child_spec/1).
  use ExUnit.Case, async: false

  import ErlpyCase

  setup do
    on_exit(fn -> assert pools() == [:default] end)
  end

  test "{:py, keyword list} is a child of an Elixir Supervisor" do
    children = [{:py, name: :ex_sup, size: 2, none_atom: nil}]
    {:ok, sup} = Supervisor.start_link(children, strategy: :one_for_one)

    assert [{{:erlpy_pool, :ex_sup}, pid, :supervisor, [:erlpy_pool_sup]}] =
             Supervisor.which_children(sup)

    assert is_pid(pid)
    assert {:ok, 4.0} = :py.call(:math, :sqrt, [16], [], pool: :ex_sup)
    assert {:ok, nil} = :py.eval("None", %{}, pool: :ex_sup)
    assert %{size: 2, workers: [_, _]} = :py.info(:ex_sup)

    # The pool belongs to this supervisor: stopping it stops the pool and its Pythons.
    os_pids = for %{os_pid: os_pid} <- :py.info(:ex_sup).workers, do: os_pid
    :ok = Supervisor.stop(sup)
    assert {:error, {:no_pool, :ex_sup}} = :py.eval("1", %{}, pool: :ex_sup)
    wait_until(fn -> not Enum.any?(os_pids, &File.exists?("/proc/#{&1}")) end)
  end

  test "a map of options works too, and the pool options are checked when it starts" do
    {:ok, sup} = Supervisor.start_link([{:py, %{name: :ex_map, size: 1}}], strategy: :one_for_one)
    assert {:ok, :none} = :py.eval("None", %{}, pool: :ex_map)
    :ok = Supervisor.stop(sup)

    Process.flag(:trap_exit, true)

    assert {:error,
            {:shutdown,
             {:failed_to_start_child, {:erlpy_pool, :ex_bad}, {:bad_option, {:sise, 2}}}}} =
             Supervisor.start_link([{:py, name: :ex_bad, sise: 2}], strategy: :one_for_one)
  end

  test "several pools under one supervisor, next to Elixir children, in a module-based supervisor" do
    defmodule ExApp.Supervisor do
      use Supervisor

      def start_link(arg), do: Supervisor.start_link(__MODULE__, arg)

      @impl true
      def init(_arg) do
        children = [
          {:py, name: :ex_fast, size: 1, none_atom: nil},
          {:py, name: :ex_ml, size: 1, init: "import math", none_atom: nil},
          {Agent, fn -> :ready end}
        ]

        Supervisor.init(children, strategy: :one_for_one)
      end
    end

    {:ok, sup} = ExApp.Supervisor.start_link([])
    ids = sup |> Supervisor.which_children() |> Enum.map(&elem(&1, 0)) |> Enum.sort()
    assert ids == [Agent, {:erlpy_pool, :ex_fast}, {:erlpy_pool, :ex_ml}]
    assert {:ok, 3.0} = :py.eval("math.sqrt(9)", %{}, pool: :ex_ml)
    assert {:error, {:python, "NameError", _, _}} = :py.eval("math.sqrt(9)", %{}, pool: :ex_fast)
    :ok = Supervisor.stop(sup)
  end

  test "Supervisor.child_spec/2 overrides fields of the spec, DynamicSupervisor starts pools" do
    spec =
      Supervisor.child_spec({:py, name: :ex_dyn, size: 1}, id: :python_pool, restart: :transient)

    assert %{
             id: :python_pool,
             restart: :transient,
             type: :supervisor,
             start: {:erlpy_pool_sup, :start_link, _}
           } = spec

    {:ok, dyn} = DynamicSupervisor.start_link(strategy: :one_for_one)
    {:ok, pool_sup} = DynamicSupervisor.start_child(dyn, spec)
    assert {:ok, 2} = :py.eval("1 + 1", %{}, pool: :ex_dyn)
    :ok = DynamicSupervisor.terminate_child(dyn, pool_sup)
    assert {:error, {:no_pool, :ex_dyn}} = :py.eval("1", %{}, pool: :ex_dyn)
    :ok = DynamicSupervisor.stop(dyn)
  end

  @tag :capture_log
  test "a pool whose Python crashes keeps serving; the supervisor does not see it" do
    {:ok, sup} = Supervisor.start_link([{:py, name: :ex_crash, size: 1}], strategy: :one_for_one)
    [{_, pool_sup, _, _}] = Supervisor.which_children(sup)

    assert {:error, {:worker_exited, _}} =
             :py.eval("__import__('os')._exit(3)", %{}, pool: :ex_crash)

    assert {:ok, 2} = :py.eval("1 + 1", %{}, pool: :ex_crash)
    assert [{_, ^pool_sup, _, _}] = Supervisor.which_children(sup)
    assert [%{restarts: 1}] = :py.info(:ex_crash).workers
    :ok = Supervisor.stop(sup)
  end

  test "start_pool/2 takes a keyword list" do
    assert {:ok, _} = :py.start_pool(:ex_kw, size: 1, none_atom: nil, env: %{"EX_MODE" => "kw"})
    assert {:ok, "kw"} = :py.eval("__import__('os').environ['EX_MODE']", %{}, pool: :ex_kw)
    assert {:error, {:already_started, :ex_kw}} = :py.start_pool(:ex_kw, size: 1)
    assert :ok = :py.stop_pool(:ex_kw)
  end
end

defmodule Erlpy.StateTest do
  # Handles, sessions and reload from Elixir (docs/state.md, docs/elixir.md).
  use ExUnit.Case, async: false

  @pool :elixir_state

  setup do
    {:ok, _} =
      Erlpy.start_pool(@pool,
        size: 1,
        none_atom: nil,
        init: "import weakref\nfreed = []\nclass Thing:\n    def __init__(self, name):\n        self.name = name\n        weakref.finalize(self, freed.append, name)\n    def hello(self, greeting='hi'):\n        return greeting + ' ' + self.name\n"
      )

    on_exit(fn -> Erlpy.stop_pool(@pool) end)
    :ok
  end

  test "return: :ref keeps an object; call_method, getattr, passing it, release" do
    {:ok, thing} = Erlpy.call(:__main__, :Thing, ["bob"], pool: @pool, return: :ref)
    assert {:ok, "hi bob"} = Erlpy.call_method(thing, :hello)
    assert "yo bob" = Erlpy.call_method!(thing, :hello, [], kwargs: [greeting: "yo"])
    assert {:ok, "bob"} = Erlpy.getattr(thing, :name)
    assert {:ok, "BOB"} = Erlpy.eval("t.name.upper()", %{t: thing}, pool: @pool)
    assert :ok = Erlpy.release(thing)
    assert {:error, %Erlpy.Error{reason: {:stale_ref, _}} = e} = Erlpy.call_method(thing, :hello)
    assert Exception.message(e) =~ "gone"
    # let go on a thread of erlpy's: the finalizer runs soon after
    ErlpyCase.wait_until(fn -> Erlpy.eval("freed", %{}, pool: @pool) == {:ok, ["bob"]} end)
  end

  test "a handle is released when its owner exits" do
    parent = self()

    {pid, mon} =
      spawn_monitor(fn ->
        send(parent, Erlpy.call(:__main__, :Thing, ["ann"], pool: @pool, return: :ref))
        receive do: (:stop -> :ok)
      end)

    assert_receive {:ok, thing}, 10_000
    assert {:ok, "hi ann"} = Erlpy.call_method(thing, :hello)
    send(pid, :stop)
    assert_receive {:DOWN, ^mon, :process, ^pid, :normal}
    Process.sleep(200)
    assert {:ok, ["ann"]} = Erlpy.eval("freed", %{}, pool: @pool)
    assert {:error, %Erlpy.Error{reason: {:stale_ref, _}}} = Erlpy.call_method(thing, :hello)
  end

  test "Erlpy.session/2 runs a function in a session and stops it" do
    result =
      Erlpy.session([pool: @pool], fn s ->
        :ok = Erlpy.exec!("seen = []\ndef note(x):\n    seen.append(x)\n    return len(seen)", session: s)
        assert {:ok, 1} = Erlpy.call(:__main__, :note, [:a], session: s)
        assert {:ok, 2} = Erlpy.call(:__main__, :note, [:b], session: s)
        assert {:error, %Erlpy.PythonError{type: "NameError"}} = Erlpy.eval("seen", %{}, pool: @pool)
        assert [0, 1, 2] = Erlpy.stream(:builtins, :range, [3], session: s) |> Enum.to_list()
        {s, Erlpy.eval!("seen", %{}, session: s)}
      end)

    {s, seen} = result
    assert seen == [:a, :b]
    assert {:error, %Erlpy.Error{reason: :session_ended}} = Erlpy.eval("seen", %{}, session: s)
  end

  test "two sessions do not see each other" do
    {:ok, s1} = Erlpy.session_start(pool: @pool)
    {:ok, s2} = Erlpy.session_start(pool: @pool)
    :ok = Erlpy.exec("x = 1", session: s1)
    :ok = Erlpy.exec("x = 2", session: s2)
    assert {:ok, 1} = Erlpy.eval("x", %{}, session: s1)
    assert {:ok, 2} = Erlpy.eval("x", %{}, session: s2)
    :ok = Erlpy.session_stop(s1)
    :ok = Erlpy.session_stop(s2)
  end

  test "reload serves new code" do
    dir = Path.join(System.tmp_dir!(), "erlpy_state_ex_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    file = Path.join(dir, "exreloaded.py")
    File.write!(file, "def v():\n    return 1\n")
    {:ok, _} = Erlpy.start_pool(:elixir_reload, size: 2, path: [dir])

    try do
      assert {:ok, 1} = Erlpy.call(:exreloaded, :v, [], pool: :elixir_reload)
      File.write!(file, "def v():\n    return 2\n")
      assert :ok = Erlpy.reload(:exreloaded, pool: :elixir_reload)
      assert {:ok, 2} = Erlpy.call(:exreloaded, :v, [], pool: :elixir_reload)
      File.write!(file, "def v(:\n")

      assert {:error, %Erlpy.PythonError{type: "SyntaxError"}} =
               Erlpy.reload(:exreloaded, pool: :elixir_reload)

      assert {:ok, 2} = Erlpy.call(:exreloaded, :v, [], pool: :elixir_reload)
    after
      Erlpy.stop_pool(:elixir_reload)
      File.rm_rf!(dir)
    end
  end
end

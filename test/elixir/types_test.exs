defmodule Erlpy.TypesTest do
  # Elixir values across the bridge: strings are binaries, atoms, maps, nil (with
  # none_atom: nil, as the suite's default pool has), keyword lists as kwargs and options.
  use ExUnit.Case, async: false

  @identity "x"

  defp roundtrip(value, opts \\ []), do: :py.eval(@identity, %{x: value}, opts)

  test "strings are binaries; charlists are lists of integers" do
    assert {:ok, "str"} = :py.eval("type(s).__name__", %{s: "héllo"})
    assert {:ok, "héllo wörld"} = :py.eval("s + ' wörld'", %{s: "héllo"})
    assert {:ok, [104, 105]} = roundtrip(~c"hi")
    assert {:ok, "bytes"} = :py.eval("type(b).__name__", %{b: <<255, 0>>})
    assert {:ok, <<255, 0>>} = roundtrip(<<255, 0>>)
  end

  test "nil is None both ways when the pool's none_atom is nil" do
    assert {:ok, nil} = :py.eval("None")
    assert {:ok, true} = :py.eval("x is None", %{x: nil})
    assert {:ok, [nil, %{"k" => nil}]} = :py.eval("[None, {'k': None}]")
    # :none is then an ordinary atom.
    assert {:ok, "Atom"} = :py.eval("type(x).__name__", %{x: :none})
    assert {:ok, :none} = roundtrip(:none)
  end

  test "with the default none_atom, nil is an atom and None is :none" do
    {:ok, _} = :py.start_pool(:ex_none, size: 1)
    assert {:ok, :none} = :py.eval("None", %{}, pool: :ex_none)
    assert {:ok, false} = :py.eval("x is None", %{x: nil}, pool: :ex_none)
    assert {:ok, nil} = roundtrip(nil, pool: :ex_none)
    :ok = :py.stop_pool(:ex_none)
  end

  test "atoms, booleans, numbers, tuples, lists and maps round-trip" do
    values = [
      :ok,
      :"Elixir.MyApp.Worker",
      true,
      false,
      42,
      -(2 ** 100),
      1.5,
      {:tagged, "tuple", [1, 2]},
      [1, "two", :three, [4.0]],
      %{a: 1, b: [2, 3], c: %{"nested" => true}},
      %{"string key" => :atom_value, 1 => "int key"},
      %{}
    ]

    for value <- values, do: assert({:ok, ^value} = roundtrip(value))
  end

  test "how Elixir values look in Python" do
    assert {:ok, ["Atom", "str", "int", "float", "tuple", "list", "dict", "bool", "NoneType"]} =
             :py.eval("[type(v).__name__ for v in vs]", %{
               vs: [:a, "s", 1, 1.0, {1}, [1], %{}, true, nil]
             })

    # Atom keys are str subclasses in Python, so keyword-style access works.
    assert {:ok, 3} = :py.eval("d['a'] + d['b']", %{d: %{a: 1, b: 2}})
    assert {:ok, %{"a" => 1}} = :py.call(:json, :loads, [~s({"a": 1})])
  end

  test "keyword lists are kwargs and options" do
    assert {:ok, "{\n  \"a\": 1\n}"} = :py.call(:json, :dumps, [%{a: 1}], indent: 2)
    assert {:ok, ~s({"a": 1, "b": 2})} = :py.call(:json, :dumps, [%{b: 2, a: 1}], sort_keys: true)

    assert {:ok, [3, 2, 1]} =
             :py.call(:builtins, :sorted, [[2, 3, 1]], [reverse: true], timeout: 5_000)

    assert {:ok, 2.0} = :py.call(:math, :sqrt, [4], [], pool: :default, timeout: 5_000)
    assert {:ok, 2} = :py.eval("1 + 1", %{}, timeout: 5_000)
    assert {:ok, [0, 1]} = :py.stream(:builtins, :range, [2], [], timeout: 5_000)
    assert {:ok, [0]} = :py.stream_eval("iter([0])", %{}, timeout: 5_000)
    assert :ok = :py.exec("kw_defined = 1", timeout: 5_000)
    assert {:error, {:bad_option, {:timout, 5_000}}} = :py.eval("1", %{}, timout: 5_000)
  end

  test "module and function names: atoms, strings, dotted, __main__" do
    assert {:ok, "a/b"} = :py.call(:"os.path", :join, ["a", "b"])
    assert {:ok, "a/b"} = :py.call("os", "path.join", ["a", "b"])
    :ok = :py.exec("def double(x): return 2 * x")
    assert {:ok, 4} = :py.call(:__main__, :double, [2])
  end

  test "errors are tuples with binaries" do
    assert {:error, {:python, "ZeroDivisionError", "division by zero", traceback}} =
             :py.eval("1 / 0")

    assert traceback =~ "ZeroDivisionError"
    assert {:error, {:python, "erlpy.EncodeError", _, _}} = :py.eval("object()")

    assert {:error, {:badarg, _}} =
             :py.eval("x", %{
               x: self() |> :erlang.term_to_binary() |> then(&<<&1::bitstring, 1::1>>)
             })
  end
end

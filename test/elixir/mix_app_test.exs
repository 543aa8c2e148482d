defmodule Erlpy.MixAppTest do
  # A Mix project that depends on erlpy and uses its Elixir API, Erlpy
  # (test/elixir/mix_app, by path, also as a
  # `mix release`; and a git dependency on a snapshot of this checkout) compiles and runs
  # offline: fresh
  # MIX_HOME, no Hex, no rebar3, network closed. Its _build is removed first, so every
  # run starts from scratch.
  use ExUnit.Case, async: true

  import ErlpyCase

  @moduletag timeout: 300_000

  @app Path.join(root(), "test/elixir/mix_app")

  @expected ~S"""
  %{
    children: [erlpy_pool: :mix_app],
    first_words: ["one", "two"],
    greet: {:ok, "Hello, Ada?"},
    json: {:ok, "{\n  \"a\": 1\n}"},
    none_default: {:ok, nil},
    none_pool: {:ok, nil},
    priv: true,
    raised: "ValueError",
    words: {:ok, ["streamed", "from", "Python"]}
  }
  """

  test "mix compile and mix run in test/elixir/mix_app, from a clean state" do
    tmp = tmp_dir!("mix_app")
    File.rm_rf!(Path.join(@app, "_build"))
    File.rm_rf!(Path.join(@app, "deps"))

    assert {0, out, err} = sh("mix compile", cd: @app, tmp: tmp)
    assert out =~ "==> erlpy"
    assert out =~ "Generated erlpy app"
    assert out =~ "Generated mix_app app"
    refute err =~ ~r/hex|rebar/i

    # The built erlpy has the application resource of erlang/src/erlpy.app.src and a
    # priv directory in which the Python package resolves.
    lib = Path.join(@app, "_build/dev/lib/erlpy")
    {:ok, [{:application, :erlpy, built}]} = :file.consult(Path.join(lib, "ebin/erlpy.app"))

    {:ok, [{:application, :erlpy, source}]} =
      :file.consult(Path.join(root(), "erlang/src/erlpy.app.src"))

    for key <- [:vsn, :description, :mod, :env, :registered],
        do: assert(built[key] == source[key])

    # Built by Mix, erlpy holds the Elixir API (elixir/lib) too, for which :elixir is at
    # most an optional application: Erlang code can start this build without Elixir.
    assert :"Elixir.Erlpy" in built[:modules]
    assert built[:applications] -- [:elixir] == source[:applications]

    if :elixir in built[:applications],
      do: assert(:elixir in Keyword.get(built, :optional_applications, []))

    assert File.regular?(Path.join(lib, "priv/python/erlpy/_boot.py"))

    expected = @expected
    assert {0, ^expected, _} = sh("mix run -e 'IO.inspect(MixApp.check())'", cd: @app, tmp: tmp)
    refute File.exists?(Path.join(@app, "mix.lock"))
  end

  test "mix release of test/elixir/mix_app (configured only through erlpy's defaults and pools) runs as a daemon and calls Python" do
    tmp = tmp_dir!("mix_release")
    app = Path.join(tmp, "mix_app")
    File.cp_r!(@app, app)
    File.rm_rf!(Path.join(app, "_build"))
    File.rm_rf!(Path.join(app, "deps"))
    mix_exs = Path.join(app, "mix.exs")
    text = File.read!(mix_exs)
    new = String.replace(text, ~s(path: "../../.."), "path: #{inspect(root())}")
    assert new != text
    File.write!(mix_exs, new)

    assert {0, _, _} = sh("MIX_ENV=prod mix release", cd: app, tmp: tmp)

    # The Python package is in the release, as files (a link would dangle there).
    rel = Path.join(app, "_build/prod/rel/mix_app")
    [erlpy] = Path.wildcard(Path.join(rel, "lib/erlpy-*"))
    assert {:ok, %File.Stat{type: :directory}} = File.lstat(Path.join(erlpy, "priv/python"))
    assert File.regular?(Path.join(erlpy, "priv/python/erlpy/_boot.py"))

    # Started from another directory, as a daemon; asked over distribution.
    bin = Path.join(rel, "bin/mix_app")
    env = [{"RELEASE_NODE", "erlpy_mix_release_#{System.unique_integer([:positive])}"}]

    try do
      assert {0, _, _} = sh("#{shq(bin)} daemon", cd: tmp, tmp: tmp, env: env)

      wait_until(
        fn -> match?({0, _, _}, sh("#{shq(bin)} pid", cd: tmp, tmp: tmp, env: env)) end,
        30_000
      )

      expected = @expected

      assert {0, ^expected, _} =
               sh("#{shq(bin)} rpc 'IO.inspect(MixApp.check())'", cd: tmp, tmp: tmp, env: env)
    after
      sh("#{shq(bin)} stop", cd: tmp, tmp: tmp, env: env)
    end
  end

  test "Hex package metadata: one source (erlpy.app.src) for both build tools, files that exist and hold the build" do
    {:ok, [{:application, :erlpy, props}]} =
      :file.consult(Path.join(root(), "erlang/src/erlpy.app.src"))

    config = Mix.Project.config()
    package = config[:package]
    assert config[:description] == to_string(props[:description])
    assert package[:licenses] == Enum.map(props[:licenses], &to_string/1)
    assert package[:licenses] == ["Apache-2.0"]
    # The files of erlpy.app.src, plus the Elixir API that only Mix builds.
    assert package[:files] == Enum.map(props[:files], &to_string/1) ++ ["elixir/lib"]
    assert package[:build_tools] == ["rebar3", "mix"]
    assert File.regular?(Path.join(root(), "LICENSE"))

    for file <- package[:files], do: assert(File.exists?(Path.join(root(), file)), file)

    for needed <- ~w(erlang/src/py.erl erlang/src/erlpy.app.src python/erlpy/_boot.py priv/python
                     elixir/lib/erlpy.ex
                     rebar.config mix.exs README.md LICENSE) do
      assert Enum.any?(
               package[:files],
               &(&1 == needed or String.starts_with?(needed, &1 <> "/"))
             ),
             "#{needed} is not in the package's files"
    end
  end

  test "a git dependency on erlpy (a snapshot of this checkout) fetches and runs offline" do
    tmp = tmp_dir!("git_dep")
    src = Path.join(tmp, "erlpy.git")
    app = Path.join(tmp, "git_app")
    File.mkdir_p!(src)
    File.mkdir_p!(Path.join(app, "config"))

    snapshot = """
    set -e
    (git ls-files; git ls-files --others --exclude-standard) | while read -r f; do [ -e "$f" ] || [ -L "$f" ] && echo "$f"; done \
      | tar cf - -T - | tar xf - -C #{shq(src)}
    cd #{shq(src)}
    git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm snapshot && git tag v0.1.0
    """

    assert {0, _, _} = sh(snapshot, cd: root(), tmp: tmp)

    File.write!(Path.join(app, "mix.exs"), """
    defmodule GitApp.MixProject do
      use Mix.Project
      def project, do: [app: :git_app, version: "0.1.0", deps: [{:erlpy, git: #{inspect(src)}, tag: "v0.1.0"}]]
      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(app, "config/config.exs"), """
    import Config
    config :erlpy, pools: %{default: %{size: 1, none_atom: nil}}
    """)

    assert {0, _, _} = sh("mix deps.get", cd: app, tmp: tmp)

    assert {0, out, _} =
             sh(~S"mix run -e 'IO.inspect({:py.call(:math, :sqrt, [16]), Erlpy.eval(\"None\")})'",
               cd: app,
               tmp: tmp
             )

    assert drop_build_lines(out) =~ ~r/^\{\{:ok, 4\.0\}, \{:ok, nil\}\}$/m
  end
end

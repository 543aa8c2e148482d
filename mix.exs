# erlpy for Mix projects: `{:erlpy, path: "../erlpy"}` or `{:erlpy, git: URL, tag: TAG}`
# in your deps (docs/install.md). Builds offline: no Hex, no rebar3.
#
# rebar.config is the build of record for Erlang. This file compiles the same sources
# (erlang/src) with Mix's own Erlang compiler and takes everything about the application
# (version, description, mod, env, registered, applications) and the package metadata
# (licenses, links, files) from erlang/src/erlpy.app.src, so they live in one place.
# The Elixir API (the `Erlpy` module, docs/elixir.md) is in elixir/lib, which only this
# file compiles: rebar3 never looks there, so Erlang users get exactly what they had.
# The application's priv directory is priv/, whose `python` link holds the Python
# package the workers run; the `erlpy_priv` step below copies it, links followed, when
# the build is embedded (a link would dangle there). `mix release` copies it too.
defmodule Erlpy.MixProject do
  use Mix.Project

  @app_src Path.join(__DIR__, "erlang/src/erlpy.app.src")
  @external_resource @app_src
  {:ok, [{:application, :erlpy, props}]} = :file.consult(@app_src)
  @props props

  def project do
    [
      app: :erlpy,
      version: to_string(@props[:vsn]),
      elixir: "~> 1.12",
      description: to_string(@props[:description]),
      package: package(),
      # The Elixir API needs :elixir only when Elixir code calls it, which runs with
      # :elixir anyway; Erlang code using this build (an escript, `erl -eval`) must not
      # need it. So :elixir is an optional application (see application/0).
      language: :erlang,
      erlc_paths: ["erlang/src"],
      erlc_include_path: "erlang/src",
      erlc_options: [:debug_info],
      elixirc_paths: ["elixir/lib"],
      compilers: [:erlang, :elixir, :app, :erlpy_priv, :erlpy_docs],
      deps: [],
      # Used only when this checkout itself runs Mix (its ExUnit suite, `mix test`);
      # a project depending on erlpy builds it into its own _build. rebar3 owns
      # _build/default and _build/test, so Mix keeps to _build/mix.
      build_path: "_build/mix",
      test_paths: ["test/elixir"],
      # For ExDoc, where it is installed (`mix docs`); erlpy itself depends on nothing.
      name: "erlpy",
      docs: [
        main: "Erlpy",
        extras: [
          "README.md"
          | Enum.map(
              Path.wildcard(Path.join(__DIR__, "docs/*.md")),
              &Path.relative_to(&1, __DIR__)
            )
        ]
      ],
      aliases: [test: "test --no-start"]
    ]
  end

  def application do
    [
      description: @props[:description],
      registered: Keyword.get(@props, :registered, []),
      mod: @props[:mod],
      env: Keyword.get(@props, :env, []),
      # :elixir, optional: the Elixir API calls it, Erlang users may not have it.
      extra_applications:
        (Keyword.get(@props, :applications, []) -- [:kernel, :stdlib]) ++ [elixir: :optional]
    ]
  end

  defp package do
    [
      name: "erlpy",
      licenses: Enum.map(@props[:licenses], &to_string/1),
      links: Map.new(@props[:links], fn {k, v} -> {to_string(k), to_string(v)} end),
      # erlpy.app.src lists the files of the Erlang build; Mix adds the Elixir sources.
      files: Enum.map(@props[:files], &to_string/1) ++ ["elixir/lib"],
      build_tools: Enum.map(@props[:build_tools], &to_string/1)
    ]
  end
end

defmodule Mix.Tasks.Compile.ErlpyPriv do
  @moduledoc false
  # Mix links priv/ into the build (its relative `python` link then resolves inside the
  # checkout); with `build_embedded: true` it copies priv/ but keeps the link, which would
  # dangle: this step copies it again with links followed.
  use Mix.Task.Compiler

  @root __DIR__

  @impl true
  def run(_args) do
    config = Mix.Project.config()
    source = Path.join(@root, "priv")
    target = Path.join(Mix.Project.app_path(config), "priv")

    if config[:build_embedded] do
      File.rm_rf!(target)
      File.cp_r!(source, target, dereference_symlinks: true)
    else
      Mix.Utils.symlink_or_copy(source, target)
    end

    :noop
  end
end

defmodule Mix.Tasks.Compile.ErlpyDocs do
  @moduledoc false
  # The EDoc of `py` as a documentation chunk (doc/chunks/py.chunk in the build, where
  # Code.fetch_docs/1 looks), so that `h :py.call` works in IEx as `h Erlpy.call` does:
  # OTP 25 has no -doc attributes. Best effort: without EDoc, `py` has no docs in IEx.
  use Mix.Task.Compiler

  @root __DIR__

  @impl true
  def run(_args) do
    source = Path.join(@root, "erlang/src/py.erl")
    dir = Path.join(Mix.Project.app_path(), "doc")

    if Mix.Utils.stale?([source], [Path.join(dir, "chunks/py.chunk")]) do
      opts = [
        doclet: :edoc_doclet_chunks,
        layout: :edoc_layout_chunks,
        dir: to_charlist(dir),
        preprocess: true,
        includes: [to_charlist(Path.join(@root, "erlang/src"))]
      ]

      try do
        :edoc.files([to_charlist(source)], opts)
      catch
        _, _ -> :ok
      end
    end

    :noop
  end
end

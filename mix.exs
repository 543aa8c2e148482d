# erlpy for Mix projects: `{:erlpy, path: "../erlpy"}` or `{:erlpy, git: URL, tag: TAG}`
# in your deps (see docs/elixir.md). Builds offline: no Hex, no rebar3.
#
# rebar.config stays the build of record for Erlang. This file compiles the same sources
# (erlang/src) with Mix's own Erlang compiler and takes everything about the application
# (version, description, mod, env, registered, applications) from erlang/src/erlpy.app.src,
# so the version lives in one place. Mix only links a top-level `priv`; ours is
# erlang/priv (its `python` link holds the Python package the workers run), so the
# `erlpy_priv` step below puts it in the build as the application's priv directory.
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
      language: :erlang,
      erlc_paths: ["erlang/src"],
      erlc_include_path: "erlang/src",
      erlc_options: [:debug_info],
      compilers: [:erlang, :app, :erlpy_priv],
      deps: [],
      # Used only when this checkout itself runs Mix (its ExUnit suite, `mix test`);
      # a project depending on erlpy builds it into its own _build. rebar3 owns
      # _build/default and _build/test, so Mix keeps to _build/mix.
      build_path: "_build/mix",
      test_paths: ["test/elixir"],
      aliases: [test: "test --no-start"]
    ]
  end

  def application do
    [
      description: @props[:description],
      registered: Keyword.get(@props, :registered, []),
      mod: @props[:mod],
      env: Keyword.get(@props, :env, []),
      extra_applications: Keyword.get(@props, :applications, []) -- [:kernel, :stdlib]
    ]
  end
end

defmodule Mix.Tasks.Compile.ErlpyPriv do
  @moduledoc false
  # erlang/priv becomes the priv directory of the built application: a link in a normal
  # build (its relative `python` link then resolves inside the checkout), a copy with
  # links followed when `build_embedded: true`.
  use Mix.Task.Compiler

  @root __DIR__

  @impl true
  def run(_args) do
    config = Mix.Project.config()
    source = Path.join(@root, "erlang/priv")
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

# A Mix project that depends on erlpy by path, as an Elixir application would: the ExUnit
# suite (test/elixir/mix_app_test.exs) compiles it and runs it in a subprocess, offline,
# with a fresh MIX_HOME (no Hex, no rebar3). docs/elixir.md quotes this file.
defmodule MixApp.MixProject do
  use Mix.Project

  def project do
    [app: :mix_app, version: "0.1.0", elixir: "~> 1.14", deps: deps()]
  end

  def application do
    [mod: {MixApp.Application, []}, extra_applications: [:logger]]
  end

  defp deps do
    [
      # path: your checkout of erlpy, relative to this file; or git: URL, branch: "main"
      {:erlpy, path: "../../.."}
    ]
  end
end

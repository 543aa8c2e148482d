defmodule ErlpyCase do
  @moduledoc """
  Helpers shared by the ExUnit suites: stream collection, temporary pools, and running
  the scripts and the Mix project of test/elixir/mix_app in a subprocess, offline.
  """

  import ExUnit.Assertions

  @root Path.expand("../../..", __DIR__)

  @doc "The checkout."
  def root, do: @root

  @doc "Everything the owner of `ref` receives: `{terminal, items}`."
  def collect(ref, timeout \\ 30_000, acc \\ []) do
    receive do
      {:py_stream, ^ref, {:data, item}} -> collect(ref, timeout, [item | acc])
      {:py_stream, ^ref, terminal} -> {terminal, Enum.reverse(acc)}
    after
      timeout -> {:no_terminal, Enum.reverse(acc)}
    end
  end

  @doc "Poll `fun` until it returns true (tests may wait, never assert timings)."
  def wait_until(fun, timeout \\ 10_000) do
    cond do
      fun.() ->
        :ok

      timeout <= 0 ->
        flunk("condition not met in time")

      true ->
        Process.sleep(20)
        wait_until(fun, timeout - 20)
    end
  end

  @doc "The names of the pools running now."
  def pools do
    for {{:erlpy_pool, name}, pid, _, _} <- Supervisor.which_children(:erlpy_sup),
        is_pid(pid),
        do: name
  end

  @doc "True when no request or stream is in flight on `pool`."
  def idle?(pool) do
    %{workers: workers, queued: queued} = :py.info(pool)
    queued == 0 and Enum.all?(workers, &(&1.in_flight == 0 and &1.state == :ready))
  end

  @doc """
  The environment of a subprocess that runs Mix or a script: no variable of the `mix test`
  running now leaks in (MIX_ENV, build paths), MIX_HOME is fresh (so no Hex, no rebar3
  can be found), and every network access fails (HEX_OFFLINE, proxies to a closed port).
  """
  def offline_env(tmp) do
    mix_vars =
      for {name, _} <- System.get_env(), String.starts_with?(name, "MIX_"), do: {name, nil}

    mix_vars ++
      [
        {"MIX_HOME", Path.join(tmp, "mix_home")},
        {"MIX_INSTALL_DIR", Path.join(tmp, "mix_installs")},
        {"HEX_HOME", Path.join(tmp, "hex_home")},
        {"HEX_OFFLINE", "1"},
        {"HTTP_PROXY", "http://127.0.0.1:9"},
        {"HTTPS_PROXY", "http://127.0.0.1:9"},
        {"http_proxy", "http://127.0.0.1:9"},
        {"https_proxy", "http://127.0.0.1:9"},
        {"ERLPY_PYTHON", System.get_env("ERLPY_PYTHON", "python3")}
      ]
  end

  @doc """
  Run `script` with bash in `dir`: `{status, stdout, stderr}`. Standard input is
  empty unless `input` is given.
  """
  def sh(script, opts) do
    dir = Keyword.fetch!(opts, :cd)
    tmp = Keyword.fetch!(opts, :tmp)
    env = offline_env(tmp) ++ Keyword.get(opts, :env, [])
    err = Path.join(tmp, "stderr.#{System.unique_integer([:positive])}")
    input = Path.join(tmp, "stdin.#{System.unique_integer([:positive])}")
    File.write!(input, Keyword.get(opts, :input, ""))

    {out, status} =
      System.cmd("bash", ["-c", "exec <#{shq(input)} 2>#{shq(err)}\n" <> script],
        cd: dir,
        env: env
      )

    {status, out, File.read!(err)}
  end

  @doc "Single-quote `text` for bash."
  def shq(text), do: "'" <> String.replace(text, "'", ~S('\'')) <> "'"

  @doc "Lines a first Mix.install or Mix compile prints on stdout (not the program's output)."
  def drop_build_lines(text) do
    text
    |> String.split("\n")
    |> Enum.reject(
      &Regex.match?(~r/^(==> \w+|Compiling \d+ files? \(\.\w+\)|Generated \w+ app)$/, &1)
    )
    |> Enum.join("\n")
  end

  @doc "The directory of the erlpy application Mix built for this suite (ERL_LIBS for escripts)."
  def mix_lib_dir, do: Path.join(Mix.Project.build_path(), "lib")

  @doc "A fresh temporary directory, removed when the test ends."
  def tmp_dir!(name) do
    dir =
      Path.join(System.tmp_dir!(), "erlpy-exunit-#{name}-#{System.unique_integer([:positive])}")

    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    ExUnit.Callbacks.on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end
end

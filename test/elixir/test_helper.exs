# The ExUnit suite of erlpy: `make test-elixir`, or `mix test` in the checkout (with
# ERLPY_PYTHON set, as the Makefile does). Mix builds erlpy into _build/mix/test.
#
# The application is started here rather than by Mix (`mix test` is aliased to
# `mix test --no-start` in mix.exs) so that the default pool is configured the way
# docs/elixir.md tells Elixir users to configure theirs: Python None is nil.
Code.require_file("support/erlpy_case.exs", __DIR__)

Application.put_env(:erlpy, :pools, %{default: %{size: 2, none_atom: nil}})
{:ok, _} = Application.ensure_all_started(:erlpy)

ExUnit.start(exclude: [], timeout: 180_000)

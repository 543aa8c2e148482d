defmodule MixApp.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    python_dir = Application.app_dir(:mix_app, "priv/python")

    children = [
      # A pool of this application's own, started and stopped by its supervisor.
      {:py, name: :mix_app, size: 2, none_atom: nil, path: [python_dir]}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: MixApp.Supervisor)
  end
end

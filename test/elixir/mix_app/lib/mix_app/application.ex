defmodule MixApp.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      # A pool of this application's own, started and stopped by its supervisor; its
      # options come from the erlpy defaults of config/config.exs.
      {:py, name: :mix_app}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: MixApp.Supervisor)
  end
end

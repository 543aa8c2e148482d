import Config

# The default pool: two workers, and Python None is nil.
config :erlpy, pools: %{default: %{size: 2, none_atom: nil}}

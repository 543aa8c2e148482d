import Config

# Every pool starts with these (the default pool and the application's own pool, started
# from a child spec, alike): two workers, Python None is nil, and the application's
# priv/python is on sys.path. A pool's own options would win.
config :erlpy,
  defaults: %{size: 2, none_atom: nil, path: [{:priv, :mix_app, "python"}]},
  pools: %{default: %{}}

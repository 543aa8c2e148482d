"""``py:reload``: new code for a module on every worker of a pool, or on none.

Erlang runs :func:`prepare` on every worker; only when all of them succeeded does it run
:func:`commit` on every worker (else :func:`abort`), so a module that fails to load
anywhere leaves the old code running everywhere. The new module object replaces the old
one in ``sys.modules``, and the old object's names are pointed at the new code, so code
that imported the module before sees the new functions too.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

from ._names import clear_caches

_pending: dict[Any, tuple[str, types.ModuleType]] = {}


def prepare(token: Any, name: str) -> None:
    """Load the current source of module ``name`` into a new module object, kept until
    :func:`commit` or :func:`abort` with the same ``token``.

    Raises:
        ModuleNotFoundError: no module of that name.
        Exception: whatever loading the module raises (its code is not installed).
    """
    importlib.invalidate_caches()
    old = sys.modules.get(name)
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    origin = spec.origin
    if origin is not None and origin.endswith(".py") and spec.loader is not None:
        # From the source itself: a .pyc written in the same second as an edit of the
        # same size would pass for up to date.
        with open(origin, "rb") as source:
            code = compile(source.read(), origin, "exec")
        sys.modules[name] = module  # as an import does, while the module's code runs
        try:
            exec(code, module.__dict__)
        finally:
            _restore(name, old)
    else:
        assert spec.loader is not None
        spec.loader.exec_module(module)
    _pending[token] = (name, module)


def commit(token: Any) -> bool:
    """Install what :func:`prepare` loaded; False if this Python never prepared it (it
    started since, and imports the new code anyway)."""
    entry = _pending.pop(token, None)
    if entry is None:
        return False
    name, module = entry
    old = sys.modules.get(name)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    if old is not None and old is not module:
        old.__dict__.update(module.__dict__)
    clear_caches()
    return True


def abort(token: Any) -> None:
    """Drop what :func:`prepare` loaded."""
    _pending.pop(token, None)


def _restore(name: str, old: types.ModuleType | None) -> None:
    if old is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = old

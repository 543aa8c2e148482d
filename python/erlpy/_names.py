"""Names and code from Erlang: resolving ``module.function`` to a callable, compiling
``eval``/``exec`` code, and the keyword and local names that come with them."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import textwrap
import types
import weakref
from collections.abc import Callable
from typing import Any

from ._errors import BadName
from ._handles import Session

Resolved = tuple[Callable[..., Any], bool]  # the function, and whether it is async


_resolvers: weakref.WeakSet[Resolver] = weakref.WeakSet()


def clear_caches() -> None:
    """Forget every resolved name: a module was reloaded (py:reload)."""
    for resolver in list(_resolvers):
        resolver.clear()


class Resolver:
    """Resolves names, caching them. A name of ``__main__`` (which ``exec`` and user code
    rebind) is used from the cache only while ``__main__`` still holds the same object."""

    def __init__(self, main_module: types.ModuleType) -> None:
        self._main = main_module
        self._globals = main_module.__dict__
        self._cache: dict[tuple[str, str], Resolved] = {}
        self._main_cache: dict[str, Resolved] = {}
        _resolvers.add(self)

    def clear(self) -> None:
        """Forget what is cached: an ``exec`` may have rebound what names point to."""
        self._cache.clear()
        self._main_cache.clear()

    def _cached(self, module: Any, name: Any) -> Resolved | None:
        if module == "__main__":
            hit = self._main_cache.get(name)
            if hit is not None and self._globals.get(name) is hit[0]:
                return hit
            return None
        return self._cache.get((module, name))

    def now(self, module: Any, name: Any) -> Resolved | None:
        """Resolve without importing (the loop thread must not block on imports)."""
        module = _in_session(module)
        if type(module) is tuple:  # (object,): a handle's object, or a session
            try:
                return method(module[0], name)
            except Exception:
                return None  # the main thread resolves again and reports the error
        try:
            cached = self._cached(module, name)
        except TypeError:  # not a name at all (unhashable): the main thread reports it
            return None
        if cached is not None:
            return cached
        if module != "__main__" and module not in sys.modules:
            return None
        try:
            return self.resolve(module, name)
        except Exception:
            return None  # the main thread resolves again and reports the error

    def resolve(self, module: Any, name: Any) -> Resolved:
        module = _in_session(module)
        if type(module) is tuple and len(module) == 1:
            return method(module[0], name)
        cached = self._cached(module, name)
        if cached is not None:
            return cached
        if not _valid_name(module):
            raise BadName(f"invalid module name: {module!r}")
        if not _valid_name(name):
            raise BadName(f"invalid function name: {name!r}")
        obj: Any = self._main if module == "__main__" else _import_named(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{module}.{name} is not callable")
        resolved = (obj, inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj))
        if module != "__main__":
            self._cache[(module, name)] = resolved
        elif "." not in name:
            self._main_cache[name] = resolved
        return resolved


def _in_session(module: Any) -> Any:
    """A module named in a session comes as (session, name): the session only travels so
    that a request in one that has ended is refused (stale_ref, session_ended in Erlang)."""
    if type(module) is tuple and len(module) == 2 and isinstance(module[0], Session):
        return module[1]
    return module


def method(obj: Any, name: Any) -> Resolved:
    """A method (or any callable attribute) of a handle's object, or a function of a
    session's namespace; never cached."""
    if not _valid_name(name):
        raise BadName(f"invalid method name: {name!r}")
    parts = name.split(".")
    if isinstance(obj, Session):
        try:
            obj = obj.globals[parts[0]]
        except KeyError:
            raise NameError(f"name {parts[0]!r} is not defined in this session") from None
        parts = parts[1:]
    for part in parts:
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{name} is not callable")
    return (obj, inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj))


def _import_named(module: str) -> Any:
    """Import the module a request names; if its top-level package is nowhere, the
    traceback says where erlpy looked (the message stays Python's own)."""
    try:
        return _import(module)
    except ModuleNotFoundError as exc:
        if exc.name == module.partition(".")[0]:
            exc.add_note(
                f"erlpy: {exc.name!r} is not on the pool's path: Python code of your own goes "
                'in a directory of the pool\'s `path` option (path => ["."] for the '
                "working directory, which is not searched otherwise), installed packages "
                "in the interpreter's environment or the pool's `venv`"
            )
        raise


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # 'pkg.mod.Class': import the longest module prefix, then walk attributes.
        head, _, attr = module.rpartition(".")
        if not head or exc.name != module:
            raise
        return getattr(_import(head), attr)


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and all(part.isidentifier() for part in name.split("."))


@functools.lru_cache(maxsize=1024)
def compile_code(code: str, mode: str) -> types.CodeType:
    if mode == "exec" and _indented(code):
        # Code indented to sit inside Erlang source (py:exec, a pool's `init`).
        code = textwrap.dedent(code)
    try:
        return compile(code, "<erlpy>", mode)
    except SyntaxError as exc:
        if mode == "eval" and _compiles(code, "exec"):
            exc.add_note("erlpy: eval takes one expression; run statements with exec")
        raise


def _compiles(code: str, mode: str) -> bool:
    try:
        compile(code, "<erlpy>", mode)
    except SyntaxError:
        return False
    return True


def _indented(code: str) -> bool:
    for line in code.splitlines():
        if line.strip():
            return line[0] in " \t"
    return False


def namespace(globals_: dict[str, Any], local_vars: dict[Any, Any]) -> dict[str, Any]:
    """Where ``eval`` code runs: the worker's globals, plus the locals Erlang gave."""
    if not local_vars:
        return globals_
    # One namespace, so comprehensions and lambdas in the expression see the locals.
    return {**globals_, **{str_key(k): v for k, v in local_vars.items()}}


def kwargs(kw: dict[Any, Any]) -> dict[str, Any]:
    return {str_key(k): v for k, v in kw.items()} if kw else {}


def str_key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    raise TypeError(f"keyword and local names must be atoms or strings, not {key!r}")

"""The package's shape: protocol numbers shared with Erlang, no import cycle, modules of
one concern each, and an import that changes nothing outside the package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from erlpy import _protocol as P

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "python" / "erlpy"
HRL = ROOT / "erlang" / "src" / "erlpy_protocol.hrl"


def test_the_protocol_numbers_agree_with_erlang() -> None:
    defines = re.findall(r"^-define\(OP_(\w+),\s*(\d+)\)\.", HRL.read_text(), re.M)
    erlang = {name: int(number) for name, number in defines}
    python = {
        name: value for name, value in vars(P).items() if name.isupper() and isinstance(value, int)
    }
    assert len(erlang) == len(defines)  # no name defined twice
    assert erlang == python


def _module_name(path: Path) -> str:
    return "erlpy" if path.name == "__init__.py" else f"erlpy.{path.stem}"


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports: anywhere in it (in functions, and under
    ``if TYPE_CHECKING``), since a cycle kept apart by where it is imported is one all the
    same."""
    modules = {_module_name(p) for p in PACKAGE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = "erlpy" + (f".{node.module}" if node.module else "")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules} - {_module_name(path)}


def test_no_import_cycle_in_the_package() -> None:
    graph = {_module_name(p): _imports(p) for p in PACKAGE.glob("*.py")}
    # The package's __init__ runs before any of its modules whatever they import, so an
    # edge into it is no cycle; __init__ itself imports only leaves (_codec, _errors,
    # _batched, _deadline).
    for edges in graph.values():
        edges.discard("erlpy")
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in visiting:
            raise AssertionError("import cycle: " + " -> ".join([*visiting, module]))
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    # A stream's plumbing: the wire, and the process it runs in (_process, a leaf).
    allowed = {"erlpy._protocol", "erlpy._codec", "erlpy._wire", "erlpy._process"}
    assert graph["erlpy._stream"] <= allowed
    assert graph["erlpy._process"] <= {"erlpy._protocol"}


def test_terminal_messages_are_sent_by_jobs_finish_only() -> None:
    """Exactly one terminal message per job rests on Jobs.finish being the only sender."""
    terminal = {"RESULT", "ERROR", "FAIL", "DONE"}
    senders = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.List)
                and node.elts
                and isinstance(first := node.elts[0], ast.Attribute)
                and first.attr in terminal
            ):
                senders.add(path.name)
    assert senders == {"_jobs.py"}


def test_modules_keep_to_about_500_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    del sizes["streams.py"]  # the public stream combinators, one family of functions
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_importing_erlpy_changes_nothing_outside_it() -> None:
    # In a fresh interpreter: every module of the package, then what the process looks like.
    modules = sorted(_module_name(p) for p in PACKAGE.glob("*.py") if p.stem != "_boot")
    code = f"""
import ctypes, logging, sys
switch, limit, out, err = sys.getswitchinterval(), sys.getrecursionlimit(), sys.stdout, sys.stderr
handlers = list(logging.getLogger().handlers)
import importlib
for name in {modules!r}:
    importlib.import_module(name)
assert ctypes.pythonapi.PyThreadState_SetAsyncExc.argtypes is None
assert (sys.getswitchinterval(), sys.getrecursionlimit()) == (switch, limit)
assert (sys.stdout, sys.stderr) == (out, err)
assert logging.getLogger().handlers == handlers
assert "erlang" not in sys.modules and sys.modules["__main__"].__name__ == "__main__"
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "python",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_import_erlpy_leaves_the_runtime_out() -> None:
    code = "import sys, erlpy; print(sorted(m for m in sys.modules if m.startswith('erlpy')))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT / "python", capture_output=True, text=True
    )
    leaves = ["erlpy", "erlpy._batched", "erlpy._codec", "erlpy._deadline", "erlpy._errors"]
    assert done.stdout.strip() == repr(leaves), done.stderr


def test_one_version_for_both_sides() -> None:
    # The version lives in erlang/src/erlpy.app.src (Mix reads it from there too) and in
    # pyproject.toml; a release changes both, and this keeps them from drifting apart.
    import tomllib

    app_src = (ROOT / "erlang" / "src" / "erlpy.app.src").read_text()
    match = re.search(r'\{vsn,\s*"([^"]+)"\}', app_src)
    assert match is not None
    with open(ROOT / "pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    assert pyproject["project"]["version"] == match.group(1)


def _older_pythons() -> list[str]:
    """Interpreters older than 3.11 on this machine (pyenv's, python3.N on PATH)."""
    import glob
    import shutil

    found = set(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.*" / "bin" / "python")))
    found |= {p for v in range(7, 11) if (p := shutil.which(f"python3.{v}"))}
    older = []
    for python in sorted(found):
        run = subprocess.run(
            [python, "-c", "import sys; print((3, 7) <= sys.version_info[:2] < (3, 11))"],
            capture_output=True,
            text=True,
        )
        if run.stdout.strip() == "True":
            older.append(python)
    return older


def test_an_older_python_gets_the_one_line_reason_and_no_traceback() -> None:
    # _boot.py must get as far as its version check on 3.7-3.10: before it evaluated its
    # annotations, 3.7 and 3.8 died on `dict[str, str]` with a traceback on stderr.
    import os

    import pytest

    older = _older_pythons()
    if not older:
        pytest.skip("no Python 3.7-3.10 on this machine")
    launch = (
        "import os, sys; os.dup2(int(sys.argv[1]), 4); "
        "os.execv(sys.executable, [sys.executable] + sys.argv[2:])"
    )
    for python in older:
        r, w = os.pipe()
        proc = subprocess.Popen(
            [python, "-c", launch, str(w), str(PACKAGE / "_boot.py"), str(PACKAGE.parent)],
            pass_fds=(w,),
            stderr=subprocess.PIPE,
        )
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            frame = pipe.read()
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 3, (python, stderr)
        assert stderr == b"", (python, stderr)
        assert b"python_too_old" in frame, (python, frame)

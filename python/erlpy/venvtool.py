"""Helper of erlpy_venv.erl (the virtualenvs that pools build), run as a script with `-I`.

It needs nothing but the standard library, since it runs with the interpreter an
environment is built from (which may lack msgpack):

    python -I venvtool.py probe
        prints `version<TAB>sys.version` and pip's effective index settings, one
        `key<TAB>value` a line (index_url, extra_index_url, find_links, no_index,
        trusted_host, cert), read the way pip reads them: its configuration files
        (global, user, site, $PIP_CONFIG_FILE) and the PIP_* variables.

    python -I venvtool.py lock FILE OWNER
        takes an exclusive flock on FILE (created if needed), printing `busy<TAB>text`
        first if another process holds it (the text is that holder's OWNER), then writes
        OWNER into FILE and prints `locked`; holds the lock until standard input ends
        (the Erlang port closes, or the VM dies), then exits. The kernel releases the
        lock with the process, so no lock outlives its holder.

    python -I venvtool.py run COMMAND ARGS...
        runs the installer (uv, pip, python -m venv) in a process group of its own and
        returns its exit status; when standard input ends (the Erlang process that runs
        the build went away, or the VM died) it kills that group, so no installer goes
        on writing into an environment that another builder takes over.
"""

from __future__ import annotations

import configparser
import fcntl
import os
import signal
import subprocess
import sys
import threading
from typing import NoReturn

# pip's settings that say where packages come from, and whether they are lists.
_KEYS = {
    "index-url": False,
    "extra-index-url": True,
    "find-links": True,
    "no-index": False,
    "trusted-host": True,
    "cert": False,
}


def _config_files(prefix: str) -> list[str]:
    """pip's configuration files, lowest priority first (pip's OVERRIDE_ORDER)."""
    env_file = os.environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [os.path.join(d, "pip", "pip.conf") for d in xdg_dirs.split(os.pathsep) if d]
    files.append("/etc/pip.conf")
    if not (env_file and os.path.exists(env_file)):
        home = os.path.expanduser("~")
        xdg_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        files += [os.path.join(home, ".pip", "pip.conf"), os.path.join(xdg_home, "pip", "pip.conf")]
    files.append(os.path.join(prefix, "pip.conf"))
    if env_file:
        files.append(env_file)
    return files


def pip_settings(prefix: str) -> dict[str, str]:
    """The settings pip's `install` would use: [global] < [install] < PIP_* variables."""
    merged: dict[str, str] = {}
    for path in _config_files(prefix):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    merged[f"{section}.{key.replace('_', '-')}"] = value
    settings: dict[str, str] = {}
    for section in ("global", "install"):
        for key in _KEYS:
            if f"{section}.{key}" in merged:
                settings[key] = merged[f"{section}.{key}"]
    for key in _KEYS:
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            settings[key] = env
    return settings


def probe(prefix: str) -> None:
    lines = [f"version\t{' '.join(sys.version.split())}"]
    for key, value in pip_settings(prefix).items():
        name = key.replace("-", "_")
        if key == "no-index":
            truthy = value.strip().lower() in ("1", "true", "yes", "on", "y")
            lines.append(f"{name}\t{'true' if truthy else 'false'}")
        elif _KEYS[key]:
            lines += [f"{name}\t{item}" for item in value.split()]
        elif value.strip():
            lines.append(f"{name}\t{value.strip()}")
    sys.stdout.write("".join(line + "\n" for line in lines))


def lock(path: str, owner: str) -> None:
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = " ".join(f.read().split()) or "another process"
            sys.stdout.write(f"busy\t{holder}\n")
            sys.stdout.flush()
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(owner + "\n")
        f.flush()
        sys.stdout.write("locked\n")
        sys.stdout.flush()
        while sys.stdin.buffer.read(65536):
            pass


def run(command: list[str]) -> NoReturn:
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)

    def watch() -> None:
        while sys.stdin.buffer.read(65536):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    threading.Thread(target=watch, daemon=True).start()
    status = proc.wait()
    # The watcher still blocks on stdin: leave without the interpreter's shutdown, which
    # would wait for stdin's lock.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status if status >= 0 else 128 - status)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "probe":
        probe(argv[2])
        return 0
    if len(argv) == 4 and argv[1] == "lock":
        lock(argv[2], argv[3])
        return 0
    if len(argv) >= 3 and argv[1] == "run":
        try:
            run(argv[2:])
        except OSError as e:
            sys.stderr.write(f"error: cannot run {argv[2]}: {e}\n")
            return 127
    sys.stderr.write("usage: venvtool.py probe PREFIX | lock FILE OWNER | run COMMAND...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

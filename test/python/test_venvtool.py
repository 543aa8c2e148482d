"""erlpy/venvtool.py: pip's settings as erlpy_venv.erl passes them on to uv, and the lock."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from erlpy import venvtool

TOOL = venvtool.__file__
MP = pytest.MonkeyPatch


@pytest.fixture
def home(tmp_path: pathlib.Path, monkeypatch: MP) -> pathlib.Path:
    """A fresh HOME and no PIP_* variables; the machine's /etc files stay out of it."""
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    return tmp_path


def write(path: pathlib.Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_user_file_install_section_and_variables(home: pathlib.Path, monkeypatch: MP) -> None:
    write(
        home / ".config/pip/pip.conf",
        "[global]\nindex-url = https://a.invalid/simple\nfind-links = /w1 /w2\n"
        "[install]\nindex-url = https://b.invalid/simple\n",
    )
    settings = venvtool.pip_settings(str(home / "env"))
    assert settings["index-url"] == "https://b.invalid/simple"
    assert settings["find-links"] == "/w1 /w2"
    monkeypatch.setenv("PIP_FIND_LINKS", "/w3")
    monkeypatch.setenv("PIP_NO_INDEX", "yes")
    settings = venvtool.pip_settings(str(home / "env"))
    assert settings["find-links"] == "/w3"
    assert settings["no-index"] == "yes"


def test_config_file_variable_wins_over_user_files(home: pathlib.Path, monkeypatch: MP) -> None:
    write(home / ".pip/pip.conf", "[global]\nextra-index-url = https://user.invalid/simple\n")
    own = write(home / "own.conf", "[global]\nno-index = true\nfind-links = /wheels\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", own)
    settings = venvtool.pip_settings(str(home / "env"))
    # pip skips the user's files when PIP_CONFIG_FILE names a file that exists
    assert (
        "extra-index-url" not in settings
        or settings["extra-index-url"] != "https://user.invalid/simple"
    )
    assert settings["find-links"] == "/wheels"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    assert "find-links" not in venvtool.pip_settings(str(home / "env"))


def test_probe_prints_version_and_lists(home: pathlib.Path, monkeypatch: MP) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://x.invalid/simple https://y.invalid/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "0")
    out = subprocess.run(
        [sys.executable, "-I", TOOL, "probe", str(home)], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert out[0].startswith("version\t3.")
    assert "extra_index_url\thttps://x.invalid/simple" in out
    assert "extra_index_url\thttps://y.invalid/simple" in out
    assert "no_index\tfalse" in out


def test_lock_is_exclusive_and_released_with_its_holder(tmp_path: pathlib.Path) -> None:
    lock = str(tmp_path / "env.lock")

    def holder(owner: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-I", TOOL, "lock", lock, owner],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    first = holder("first")
    assert first.stdout is not None and first.stdout.readline() == "locked\n"
    second = holder("second")
    assert second.stdout is not None and second.stdout.readline() == "busy\tfirst\n"
    assert first.stdin is not None
    first.stdin.close()  # the holder's Erlang side went away
    assert first.wait(10) == 0
    assert second.stdout.readline() == "locked\n"
    assert pathlib.Path(lock).read_text() == "second\n"
    assert second.stdin is not None
    second.stdin.close()
    assert second.wait(10) == 0
    first.stdout.close()
    second.stdout.close()

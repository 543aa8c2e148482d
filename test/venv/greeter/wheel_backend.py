"""A PEP 517 build backend with no dependencies, for the packages of erlpy's test tree.

It builds a wheel of the package directories of the project being built (those with an
__init__.py) from the name and version in its pyproject.toml, so pip and uv install these
packages offline: nothing is fetched for the build. A project with a file BUILD_FAILS
fails to build (the test of a requirement that cannot be installed). The other test
projects link to this file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import re
import tomllib
import zipfile

def _project() -> tuple[str, str]:
    with open("pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    return re.sub(r"[-_.]+", "_", project["name"]), project["version"]


def _record(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    # PEP 517: hooks run in the project's directory.
    here = pathlib.Path.cwd()
    name, version = _project()
    if (here / "BUILD_FAILS").exists():
        raise RuntimeError(f"{name} cannot be built (a test package that must fail)")
    dist_info = f"{name}-{version}.dist-info"
    files = {}
    for pkg in sorted(p.parent for p in here.glob("*/__init__.py")):
        for src in sorted(pkg.rglob("*.py")):
            files[src.relative_to(here).as_posix()] = src.read_bytes()
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: erlpy-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    records = [_record(n, d) for n, d in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(records) + "\n").encode()
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return wheel

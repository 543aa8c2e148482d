"""Entry point of a worker process: ``python .../erlpy/_boot.py PKG_PARENT [PATH ...]``.

Runs before erlpy (or msgpack) is imported, so that a missing dependency is reported to
Erlang as a FATAL message naming the module and the interpreter, instead of a bare exit.
"""

import os
import sys


def _fatal(detail: dict[str, str]) -> None:
    # Hand-encoded msgpack [99, {str: str}]: msgpack itself may be what is missing.
    def s(text: str) -> bytes:
        data = text.encode("utf-8", "replace")
        return b"\xdb" + len(data).to_bytes(4, "big") + data

    body = b"\x92\x63" + bytes([0x80 | len(detail)])
    body += b"".join(s(k) + s(v) for k, v in detail.items())
    os.write(4, len(body).to_bytes(4, "big") + body)
    os._exit(3)


def main() -> None:
    # Running this file put its own directory first on sys.path; replace it with the
    # package's parent and the pool's `path` entries.
    sys.path[0:1] = sys.argv[1:]
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs on any Python
        _fatal(
            {
                "reason": "python_too_old",
                "message": f"erlpy needs Python 3.11+, not {sys.version.split()[0]}",
                "python": sys.executable,
            }
        )
    try:
        import msgpack  # noqa: F401
    except ImportError as exc:
        _fatal(
            {
                "reason": "missing_module",
                "missing_module": exc.name or "msgpack",
                "message": f"{exc} (python: {sys.executable})",
                "python": sys.executable,
            }
        )
    try:
        import ctypes
        import signal

        # Die with the VM even if fd 3 never reports EOF (Linux: parent-death signal).
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    from erlpy._runtime import Runtime

    Runtime().serve()


if __name__ == "__main__":
    main()

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
    in_fd, out_fd = _move_protocol()
    _start_watchdog(in_fd)
    try:
        import ctypes
        import signal

        # Die with the VM even if the pipe never reports EOF (Linux: parent-death signal).
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    from erlpy import erlang
    from erlpy._runtime import Runtime

    runtime = Runtime(in_fd, out_fd)
    # Worker code finds `erlang` as in erlang_python: in __main__, and as `import erlang`.
    runtime.main_module.__dict__["erlang"] = erlang
    sys.modules.setdefault("erlang", erlang)
    runtime.serve()


def _move_protocol() -> tuple[int, int]:
    """Move the protocol pipes from fds 3/4 to high close-on-exec fds, and put /dev/null
    on 3/4: user code that closes or writes fd 3/4 cannot touch the protocol, and exec'd
    children never inherit the pipes (they would keep Erlang from seeing EOF)."""
    import fcntl

    in_fd = fcntl.fcntl(3, fcntl.F_DUPFD_CLOEXEC, 10)
    out_fd = fcntl.fcntl(4, fcntl.F_DUPFD_CLOEXEC, 10)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 3)
    os.dup2(null, 4)
    if null not in (3, 4):
        os.close(null)
    return in_fd, out_fd


def _start_watchdog(in_fd: int) -> None:
    """Fork a watchdog that ends this process group (Python and anything it started that
    stayed in the group) once Python exits or Erlang closes the pipe, even while Python
    holds the GIL in C. Forked twice, so it is not Python's child (the user's os.wait()
    never sees it), and before any thread exists."""
    pid = os.getpid()
    if os.getpgid(0) != pid:
        try:
            os.setsid()  # erl_child_setup already did; a plain `python _boot.py` did not
        except OSError:
            pass
    try:
        child = os.fork()
    except OSError:
        return  # no watchdog, but a worker all the same
    if child:
        os.waitpid(child, 0)
        return
    try:
        if os.fork() == 0:
            _watch(pid, in_fd)
    finally:
        os._exit(0)


def _watch(pid: int, in_fd: int) -> None:
    import select
    import signal
    import time

    # Hold nothing but the read end: a held write end would hide Python's death from
    # Erlang, and the watchdog never reads (it would steal the protocol's bytes).
    os.dup2(in_fd, 0)
    os.closerange(1, os.sysconf("SC_OPEN_MAX"))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    poller = select.poll()
    poller.register(0, 0)  # POLLHUP once Erlang has closed its end
    alive = True
    pidfd = -1
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        alive = False  # already gone: act at once
    except (OSError, AttributeError):
        pass  # no pidfd (old kernel): check the pid every 200 ms instead
    else:
        poller.register(pidfd, select.POLLIN)  # readable once Python has exited
    while alive and not poller.poll(None if pidfd >= 0 else 200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
    try:
        os.killpg(pid, signal.SIGTERM)
        time.sleep(1)  # the group's grace to exit cleanly
        os.killpg(pid, signal.SIGKILL)  # the watchdog too: it is in the group
    except OSError:
        pass


if __name__ == "__main__":
    main()

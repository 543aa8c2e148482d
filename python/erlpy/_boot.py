"""Entry point of a worker process: ``python .../erlpy/_boot.py PKG_PARENT [PATH ...]``.

Runs before erlpy (or msgpack) is imported, so that a missing dependency is reported to
Erlang as a FATAL message naming the module and the interpreter, instead of a bare exit.
It must get as far as its version check on the Pythons it refuses too (3.7 and later:
annotations are not evaluated), so that they also get the one-line reason and no traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any


def _fatal(detail: dict[str, str]) -> None:
    # Hand-encoded msgpack [99, {str: str}]: msgpack itself may be what is missing.
    def s(text: str) -> bytes:
        data = text.encode("utf-8", "replace")
        return b"\xdb" + len(data).to_bytes(4, "big") + data

    body = b"\x92\x63" + bytes([0x80 | len(detail)])
    body += b"".join(s(k) + s(v) for k, v in detail.items())
    os.write(4, len(body).to_bytes(4, "big") + body)
    os._exit(3)


def _externally_managed() -> bool:
    """Whether pip refuses to install into this interpreter (PEP 668: a distribution's
    Python, such as Debian's /usr/bin/python3, outside a virtualenv)."""
    import sysconfig

    if sys.prefix != sys.base_prefix:
        return False
    return os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))


def main() -> None:
    # Running this file put its own directory first on sys.path; replace it with the
    # package's parent and the pool's `path` entries.
    sys.path[0:1] = sys.argv[1:]
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs on older Pythons too
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
        detail = {
            "reason": "missing_module",
            "missing_module": exc.name or "msgpack",
            "message": f"{exc} (python: {sys.executable})",
            "python": sys.executable,
        }
        if _externally_managed():
            detail["externally_managed"] = "true"
        _fatal(detail)
    in_fd, out_fd = _move_protocol()
    _split_off_supervisor(in_fd)

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


def _split_off_supervisor(in_fd: int) -> None:
    """Fork: the child goes on as the worker (it returns from here) and this process, the
    port's, stays behind as its supervisor, until the child exits or Erlang closes the
    pipe; then it ends everything the worker started and exits with the worker's status.

    The supervisor is a child subreaper (Linux), so whatever the worker starts stays in
    its tree even if it leaves the worker's process group (``setsid``,
    ``start_new_session=True``, a double-forked daemon): an orphan is re-parented to the
    supervisor, not to init. The worker leads a process group of its own, so that user
    code ending its group (``os.killpg(0, SIGKILL)``) does not take the supervisor with
    it. Forked before any thread exists; the worker's ``os.wait()`` never sees the
    supervisor (it is its parent, not its child)."""
    import signal

    pid = os.getpid()
    if os.getpgid(0) != pid:
        try:
            os.setsid()  # erl_child_setup already did; a plain `python _boot.py` did not
        except OSError:
            pass
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        child = os.fork()
    except OSError:
        _prctl(_PR_SET_CHILD_SUBREAPER, 0)  # no one would reap the orphans
        return  # no supervisor, but a worker all the same
    if child == 0:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # the supervisor did it first
        # Die with the supervisor, even while holding the GIL in C; it may have died
        # before we asked.
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != pid:
            os._exit(1)
        return
    try:
        os.setpgid(child, child)  # as the child does: whichever runs first
    except OSError:
        pass  # the child did it and may have exec'd, or it died
    try:
        _supervise(child, in_fd)
    finally:
        os._exit(1)


def _supervise(child: int, in_fd: int) -> None:
    """Wait for the worker to exit, Erlang to close the pipe, or SIGTERM (Erlang stops the
    worker); then end the tree and exit with the worker's status."""
    import select
    import signal

    # Hold nothing but the read end: a held write end would hide the worker's death from
    # Erlang, and the supervisor never reads (it would steal the protocol's bytes).
    os.dup2(in_fd, 0)
    os.closerange(1, os.sysconf("SC_OPEN_MAX"))
    status: list[int] = []  # the worker's wait status, once reaped

    def reap(*_: Any) -> None:
        """Reap every child that exited: orphans of the worker's tree end here."""
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == child:
                status.append(wait_status)

    # SIGTERM: Erlang stops this worker (erlpy_python:kill_group/1). The handlers only
    # take note; the wake-up fd ends the poll below.
    stopped: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    poller = select.poll()
    poller.register(0, 0)  # POLLHUP once Erlang has closed its end
    poller.register(wake_r, select.POLLIN)
    try:
        pidfd = os.pidfd_open(child)
    except (OSError, AttributeError):
        pidfd = -1  # no pidfd (old kernel, not Linux): look every 200 ms instead
    else:
        poller.register(pidfd, select.POLLIN)  # readable once the worker has exited
    grace = 0.0
    reap()
    while not status and not stopped:
        events = poller.poll(None if pidfd >= 0 else 200)
        if any(fd == 0 for fd, _ in events):
            grace = 1.0  # Erlang closed the pipe: SIGTERM first, as at a shutdown
            break
        if any(fd == wake_r for fd, _ in events):
            os.read(wake_r, 512)
        reap()
        if any(fd == pidfd for fd, _ in events):
            break
    _end_tree(child, grace, reap, stopped)
    while not status:
        try:
            status.append(os.waitpid(child, 0)[1])
        except ChildProcessError:
            break  # reaped meanwhile, by reap()
    code = os.waitstatus_to_exitcode(status[0]) if status else 1
    os._exit(code if code >= 0 else 128 - code)  # killed by a signal: as a shell says it


def _end_tree(child: int, grace: float, reap: Callable[[], None], stopped: list[int]) -> None:
    """End every process below this one (and any left in the worker's process group,
    ``child``'s, or in this one's): with a ``grace``,
    SIGTERM and up to that many seconds to exit (cut short once ``stopped``: Erlang
    stops the worker); then SIGKILL, again until none is left (a process that forks
    meanwhile leaves its child to this subreaper, and the next round). Without /proc,
    SIGTERM to the worker's group only, and erlpy kills the group itself when it stops a
    worker (erlpy_python:kill_group/1)."""
    import signal
    import time

    me = os.getpid()
    if _only_child(me, child):
        return  # nothing else below: no need to look through /proc (a worker's stop)
    if not os.path.isdir("/proc/self"):  # not Linux: the group, with what may be sent to it
        try:
            os.killpg(child, signal.SIGTERM)
        except OSError:
            pass
        return
    if grace and not stopped:
        _signal(_below(me, child), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _below(me, child) and time.monotonic() < deadline and not stopped:
            time.sleep(0.01)
            reap()
    for _ in range(1000):
        pids = _below(me, child)
        if not pids:
            return
        _signal(pids, signal.SIGKILL)
        time.sleep(0.001)
        reap()


def _only_child(me: int, child: int) -> bool:
    """Whether ``child`` (exited, or a zombie) is all there is below this process: as the
    subreaper of the worker's tree, it inherits whatever the worker left running."""
    # Dead first: an exited child's own children are ours by then, and listed below.
    if not _dead(child):
        return False
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as f:
            children = f.read().split()
    except OSError:
        return False  # not Linux, or no such file: look through /proc
    return all(int(pid) == child for pid in children)


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except OSError:
        return True


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _below(root: int, group: int) -> list[int]:
    """The live processes below ``root`` and those left in its group or in ``group``
    (from /proc)."""
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if fields[0] in (b"Z", b"X") or pid == root:
            continue
        children.setdefault(int(fields[1]), []).append(pid)
        if int(fields[2]) in (root, group):
            found.add(pid)
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return sorted(found)


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(option, value)
    except (OSError, AttributeError):
        pass  # not Linux


if __name__ == "__main__":
    main()

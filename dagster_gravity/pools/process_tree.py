"""Nothing a step starts outlives it: the processes a worker's step leaves behind are found
and killed. Linux only (elsewhere these are no-ops and the guarantee does not hold).

How, for a local worker (`pools/local.py`):

* the worker is a *child subreaper* (`PR_SET_CHILD_SUBREAPER`): a process its step starts
  that is orphaned (a daemon's double fork, `sh -c 'cmd &'`) is re-parented to the worker
  instead of to init, so it stays in the worker's tree of descendants;
* before each step the worker notes its descendants (`descendants`, each with its start
  time, so a reused pid is not mistaken), and after the step, however it ended (success,
  failure, interrupt), it stops the ones that were not there before
  (`stop_new_descendants`: SIGTERM, SIGKILL after `STOP_GRACE_S`, reaped, logged): what
  Dagster's log capture keeps running for the run was started before the step and is
  spared;
* the worker leads its own process group, and a *group reaper* (`start_group_reaper`), a
  small process forked from it, waits for the worker to exit however it exits (SIGKILL
  when the run process dies, a kill after `stop_grace_seconds`) and then SIGKILLs the
  group, so a step's processes do not survive a worker that never reached its cleanup.

What is not covered: a process that both left the worker's process group (`setsid`) and
outlived the worker; the reaper can only kill the group, and the tree is gone with the
worker. A Dask worker (`pools/dask.py`) uses `descendants` and `stop_new_descendants` around
each step too, but it is not a subreaper and has no group reaper: see its docstring.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import time

log = logging.getLogger(__name__)

LINUX = sys.platform.startswith("linux")
PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_S = 2.0  # SIGTERM, then this long before SIGKILL


def set_child_subreaper() -> None:
    """Orphaned descendants of this process are re-parented to it (Linux)."""
    if not LINUX:
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        pass


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def _identity(pid: int) -> int | None:
    """The start time (clock ticks after boot) of live process `pid`, so a pid reused by
    another process is not taken for it; None when it has exited (a zombie counts)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int | None = None) -> dict[int, int]:
    """pid -> start time of every live descendant of `pid` (default: this process)."""
    if not LINUX:
        return {}
    found: dict[int, int] = {}
    todo = [os.getpid() if pid is None else pid]
    while todo:
        for child in _children(todo.pop()):
            if child in found:
                continue
            ident = _identity(child)
            todo.append(child)  # a zombie's children are re-parented, but look anyway
            if ident is not None:
                found[child] = ident
    return found


def stop_new_descendants(before: dict[int, int], what: str, spare: frozenset[int] = frozenset()) -> list[int]:
    """Stop the descendants of this process that are not in `before` (a `descendants`
    snapshot) or `spare`: SIGTERM, then SIGKILL those left after STOP_GRACE_S; reap the
    ones that are this process's children. Logs what it stopped; returns their pids."""
    new = {pid: ident for pid, ident in descendants().items() if before.get(pid) != ident and pid not in spare}
    if not new:
        return []
    log.warning(
        "gravity: %s left %d process(es) running; stopping them: %s",
        what, len(new), "; ".join(f"pid {pid}: {_command(pid)}" for pid in new),
    )
    _signal_all(new, signal.SIGTERM)
    left = _wait_gone(new, STOP_GRACE_S)
    if left:
        log.warning("gravity: %s: SIGKILL to pid(s) %s, still running %g s after SIGTERM", what, sorted(left), STOP_GRACE_S)
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(left, 1.0)
        if left:
            log.warning("gravity: %s: pid(s) %s survived SIGKILL", what, sorted(left))
    return sorted(new)


def _signal_all(pids: dict[int, int], signum: int) -> None:
    for pid, ident in pids.items():
        if _identity(pid) != ident:
            continue  # gone, or the pid now names another process
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pids: dict[int, int], timeout: float) -> dict[int, int]:
    """Wait up to `timeout` for `pids` to exit, reaping those that are our children (so
    they do not stay zombies); the ones still running."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (its parent reaps it), or reaped
                pass
        alive = {pid: ident for pid, ident in pids.items() if _identity(pid) == ident}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200] or "?"
    except OSError:
        return "?"


def start_group_reaper() -> int | None:
    """Make this process the leader of a new process group and fork a reaper that SIGKILLs
    the group once this process has exited. Returns the reaper's pid (to spare it)."""
    if not LINUX:
        return None
    os.setpgid(0, 0)
    group = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # the reaper: hold nothing of the worker's, wait for it, kill what is left
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _close_inherited_fds()
        _wait_for_exit(group)
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        os._exit(0)


def _close_inherited_fds() -> None:
    """Close every descriptor but stdio: a copy of the worker's pipe or of multiprocessing's
    sentinel held here would hide the worker's death from the executor."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass


def _wait_for_exit(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        return
    while True:  # no pidfd: poll
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)

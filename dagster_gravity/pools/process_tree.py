"""Nothing a step starts outlives it: the processes a worker's step leaves behind are found
and killed. Linux only (elsewhere these are no-ops and the guarantee does not hold).

How, for a local worker (`pools/local.py`):

* the worker is a *child subreaper* (`PR_SET_CHILD_SUBREAPER`): a process its step starts
  that is orphaned (a daemon's double fork, `sh -c 'cmd &'`) is re-parented to the worker
  instead of to init, so it stays in the worker's tree of descendants;
* before each step the worker notes its descendants (`descendants`), and after the step,
  however it ended (success, failure, interrupt), it SIGKILLs and reaps the ones that were
  not there before (`kill_new_descendants`): what Dagster's log capture keeps running for
  the run was started before the step and is spared;
* the worker leads its own process group, and a *group reaper* (`start_group_reaper`), a
  small process forked from it, waits for the worker to exit however it exits (SIGKILL
  when the run process dies, a kill after `stop_grace_seconds`) and then SIGKILLs the
  group, so a step's processes do not survive a worker that never reached its cleanup.

What is not covered: a process that both left the worker's process group (`setsid`) and
outlived the worker; the reaper can only kill the group, and the tree is gone with the
worker.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time

LINUX = sys.platform.startswith("linux")
PR_SET_CHILD_SUBREAPER = 36


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


def descendants(pid: int | None = None) -> set[int]:
    """Every live descendant of `pid` (default: this process)."""
    if not LINUX:
        return set()
    found: set[int] = set()
    todo = [os.getpid() if pid is None else pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_new_descendants(before: set[int], spare: set[int] = frozenset()) -> list[int]:
    """SIGKILL the descendants of this process that are not in `before` or `spare`, and
    reap those that are (or became) its children. Returns the pids killed."""
    if not LINUX:
        return []
    killed: list[int] = []
    # A killed process's own children are re-parented to us (subreaper): look again until
    # no new descendant is left.
    for _ in range(10):
        new = descendants() - before - spare
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        _reap(new)
    return killed


def _reap(pids: set[int], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (yet): its parent reaps it
                waiting.discard(pid)
                continue
            if done:
                waiting.discard(pid)
        if waiting:
            time.sleep(0.005)


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

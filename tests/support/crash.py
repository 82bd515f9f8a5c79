"""Crash injection and the reference model for tests/test_crash_consistency.py.

Crashes happen at *step boundaries*: just before or just after each call that moves a write
forward (local storage: `os.replace`, `os.symlink`, `os.fsync`; S3: each PUT, upload,
multipart call, abort and DELETE). `FAULTS.arm(k)` makes the k-th boundary from now crash,
either by raising `Crash` or, armed with `kill=True`, by SIGKILLing the process (nothing
runs: what a killed run leaves). A raised crash is the process going down: cleanup handlers
run, but every later boundary crashes too until `disarm`, so cleanup that needs storage calls
(aborting an upload) fails as it would. `FaultyOS` replaces the `os` module inside
`dagster_gravity.storage.local`, `FaultyClient` wraps an S3 client.

The model is what Dagster's event log and the checkpoint store's own records should say:
`Record` is one recorded materialization (and its current replicas), `Checkpoints` one
model's versions and promotion history.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

LOCAL_STEPS = ("replace", "symlink", "fsync")
S3_STEPS = (
    "put_object",
    "upload_fileobj",
    "create_multipart_upload",
    "upload_part",
    "complete_multipart_upload",
    "abort_multipart_upload",
    "delete_object",
)


class Crash(BaseException):
    """An injected crash. A BaseException, like KeyboardInterrupt: code that handles
    `Exception` (and turns it into a StorageError) must not get to treat it as an error."""


class Faults:
    """Counts step boundaries and crashes at the armed one and every one after it (the
    machine arms it only around single operations, and disarms it before starting threads)."""

    def __init__(self):
        self.countdown: int | None = None
        self.kill = False
        self.crashed: str | None = None  # where the armed crash happened

    def arm(self, k: int | None, *, kill: bool = False) -> None:
        self.countdown, self.kill, self.crashed = k, kill, None

    def disarm(self) -> None:
        self.countdown = None

    def boundary(self, where: str) -> None:
        if self.countdown is None:
            return
        if self.countdown > 0:
            self.countdown -= 1
            return
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        self.crashed = self.crashed or where
        raise Crash(where)

    def call(self, where: str, fn: Callable, *args, **kwargs):
        self.boundary(f"before {where}")
        result = fn(*args, **kwargs)
        self.boundary(f"after {where}")
        return result


FAULTS = Faults()


class FaultyOS:
    """The `os` module, with a crash boundary around each call of LOCAL_STEPS."""

    def __init__(self, faults: Faults = FAULTS):
        self._faults = faults

    def __getattr__(self, name):
        attr = getattr(os, name)
        if name not in LOCAL_STEPS:
            return attr
        return lambda *args, **kwargs: self._faults.call(f"os.{name}", attr, *args, **kwargs)


class FaultyClient:
    """An S3 client, with a crash boundary around each call of S3_STEPS."""

    def __init__(self, client, faults: Faults = FAULTS):
        self._client = client
        self._faults = faults

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in S3_STEPS:
            return attr
        return lambda *args, **kwargs: self._faults.call(f"s3.{name}", attr, *args, **kwargs)


def run_killed(point: int | None, operation: Callable[[], object], timeout_s: float = 60.0) -> str:
    """Run `operation` in a forked child that SIGKILLs itself at boundary `point`, or right
    after the operation returns (killed between the storage commit and the record).
    Returns how the child ended; raises AssertionError unless it was killed."""
    pid = os.fork()
    if pid == 0:  # the child never returns into the test runner
        try:
            FAULTS.arm(point, kill=True)
            operation()
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(70)  # the operation raised: not a crash we injected
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the killed writer (pid {pid}) hung for {timeout_s} s")
        time.sleep(0.005)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    raise AssertionError(f"the writer child ended with exit status {os.waitstatus_to_exitcode(status)} "
                         "instead of being killed (its operation raised)")


# -- the reference model -----------------------------------------------------------------


@dataclass
class Record:
    """One recorded materialization: the version it names, and the sites that hold a
    current replica of it (recorded by later observations)."""

    site: str
    key: str
    uri: str
    sha256: str
    data: bytes
    recorded_at: float
    replicas: set[str] = field(default_factory=set)

    @property
    def holders(self) -> set[str]:
        return {self.site} | self.replicas


def promotion_stack(history: list[tuple[str, int]]) -> list[int]:
    """The promotion stack the history describes (checkpoints.py's documented rule): a
    promote pushes unless it re-promotes the top; a rollback pops back to the newest entry
    equal to its target, or pops the top and pushes a target that is not on the stack."""
    stack: list[int] = []
    for action, version in history:
        if action == "rollback" and version in stack:
            while stack[-1] != version:
                stack.pop()
            continue
        if action == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


@dataclass
class Checkpoints:
    """One model at one site: finished versions (number -> (sha256, weights)), the
    promotion history as (action, version) pairs, and the numbers retention deleted."""

    versions: dict[int, tuple[str, list[int]]] = field(default_factory=dict)
    history: list[tuple[str, int]] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)

    @property
    def current(self) -> int | None:
        return self.history[-1][1] if self.history else None

    @property
    def predecessor(self) -> int | None:
        stack = promotion_stack(self.history)
        return stack[-2] if len(stack) >= 2 else None

    def retention(self, keep: int) -> list[int]:
        """What apply_retention(keep) must delete."""
        numbers = sorted(self.versions)
        kept = set(numbers[-keep:]) | {self.current, *promotion_stack(self.history)}
        return [n for n in numbers if n not in kept]

"""One training run per workdir: an exclusive lock held for the run's lifetime.

Two runs on one workdir write the same checkpoint folders and interleave their metrics; the
second one must be refused before it reads or writes anything. The lock is ``fcntl.flock`` on
``<workdir>/.ssljax.lock``: the kernel releases it when the holder exits, however it exits, so a
crashed run leaves no stale lock to clean up. The file records the holder's host, pid and start
time, so the refusal can say who holds it. In a multi-process run only process 0 takes it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket

LOCK_NAME = ".ssljax.lock"


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir's lock."""


class WorkdirLock:
    """Context manager holding ``<workdir>/.ssljax.lock`` exclusively.

    Args:
      workdir: the run's folder (must exist).

    Raises:
      WorkdirInUseError: on entry, when another process holds the lock; the message names it.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises :class:`WorkdirInUseError`."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirInUseError(
                f"{os.path.dirname(self.path)} is in use by another training run ({holder}). "
                "Wait for it to finish or stop it, or choose another --workdir."
            ) from None
        # The previous holder's record (a run that exited or crashed) is replaced by ours.
        os.ftruncate(fd, 0)
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Releases the lock (the file stays: deleting it would race with a waiting run)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        record = {}
    if not record:
        return "holder unknown"
    return f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"

"""An advisory lock file beside a store, so two captures never write one store at once.

``STORE.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on local file systems) and holds
the writer's pid, host and start time. A second capture finds it and stops with one line.
A lock left by a process that no longer runs on this host (a killed capture) is taken over;
one from another host is reported with the hint to delete it if that capture is gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from attnprobe.errors import StoreError


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class StoreLock:
    """Hold ``STORE.lock`` from :meth:`acquire` to :meth:`release` (also a context manager)."""

    def __init__(self, store: str | Path) -> None:
        self.store = Path(store)
        self.path = lock_path(self.store)
        self.held = False

    def acquire(self) -> StoreLock:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # a new store's folder may not exist yet
        except OSError:
            pass  # reported below, when the lock file cannot be created
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_stale():
                    continue
                raise self._busy() from None
            except OSError as exc:
                raise StoreError(f"cannot create the lock file {self.path}", got=exc.strerror or type(exc).__name__,
                                 fix="check that the store's folder exists and is writable") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(info, handle)
            self.held = True
            return self
        raise self._busy()

    def _holder(self) -> dict:
        try:
            value = json.loads(self.path.read_text())
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError):
            return {}

    def _take_over_stale(self) -> bool:
        """Remove a lock whose process is gone from this host; True when removed."""
        holder = self._holder()
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or _alive(pid):
            return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        return True

    def _busy(self) -> StoreError:
        holder = self._holder()
        who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder
               else "an unreadable lock")
        return StoreError(
            f"another capture is writing to {self.store} ({who})",
            expected="one capture per store at a time", got=f"the lock file {self.path}",
            fix=f"wait for that capture to finish; if it is no longer running (crashed on another host), "
                f"delete {self.path} and rerun",
        )

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

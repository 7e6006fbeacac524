"""One writer per store: an operating-system lock on ``<store>.lock`` (``flock``), never a pid file read back."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["StoreLockedError", "WriterLock"]


class StoreLockedError(RuntimeError):
    """Another process holds the writer lock of a store."""


class WriterLock:
    """An exclusive, non-blocking writer lock held by the operating system.

    The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``<store>.lock`` (``msvcrt.locking`` on Windows). The
    kernel drops it when its process dies, however it dies, so there is no stale lock to detect and no
    takeover race: whoever gets the kernel lock is the one writer. The holder's pid and host are written
    into the file *after* locking, for the refusal message only; an empty or unreadable file (a full
    disk, an older mmlens) changes nothing but that message.

    On release the file is unlinked while still locked; a process that opened the old file before the
    unlink and then locks it notices (the locked file is no longer the one at the path) and retries on
    the new file, so two processes can never both hold "the" lock.

    Parameters
    ----------
    store
        The store the lock protects (the lock file is ``<store>.lock`` next to it).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "run.zarr"
    >>> with WriterLock(path):
    ...     try:
    ...         WriterLock(path).acquire()
    ...     except StoreLockedError as err:
    ...         print("refused:", "is being written by process" in str(err))
    refused: True
    """

    def __init__(self, store: str | os.PathLike) -> None:
        self.store = Path(store)
        self.path = self.store.with_name(self.store.name + ".lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> WriterLock:
        """Take the lock or raise :class:`StoreLockedError` naming the holder; return ``self``."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock(fd)
            except OSError:
                holder = _settled_holder(fd)
                os.close(fd)
                raise StoreLockedError(
                    f"{self.store} is being written by {holder} (lock {self.path}); wait for that writer to "
                    "finish or stop it. The lock is held by the operating system and vanishes with its "
                    "process, so there is no stale lock to delete."
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder unlinked this file between our open and our lock: retry
                os.close(fd)
                continue
            with contextlib.suppress(OSError):  # the content is for messages only (a full disk may refuse it)
                os.ftruncate(fd, 0)
                os.write(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode())
            self._fd = fd
            return self

    def release(self) -> None:
        """Unlink the lock file (still locked, see the class notes) and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)  # closing the descriptor releases the kernel lock
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _settled_holder(fd: int, *, patience: float = 0.5) -> str:
    """The holder as the lock file names it, once the file names the process that really holds the lock.

    The holder writes its pid and host right *after* taking the kernel lock, so for a moment the file may
    still hold nothing, or the pid of a dead writer (a kill -9 leaves its line behind). A pid on this host
    that is alive is the holder; otherwise the file is read again for up to ``patience`` seconds (the
    holder's write lands within microseconds) and the last reading is reported.
    """
    deadline = time.monotonic() + patience
    while True:
        text = _read_holder(fd)
        if _names_a_live_local_process(text) or time.monotonic() >= deadline:
            return text
        time.sleep(0.02)


def _names_a_live_local_process(holder: str) -> bool:
    parts = holder.split()
    if len(parts) < 5 or parts[0] != "process" or parts[4] != socket.gethostname():
        return False  # nothing recorded yet, or another host's process: cannot be checked from here
    try:
        os.kill(int(parts[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _read_holder(fd: int) -> str:
    """``process <pid> on host <host>`` from the lock file, or a phrase saying it was not recorded."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace") if hasattr(os, "pread") else ""
    except OSError:
        text = ""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if "pid" in fields:
        return f"process {fields['pid']} on host {fields.get('host', '?')}"
    return "another process (it has not recorded its pid yet, or could not: a full disk?)"

"""One run at a time in a run directory.

``xprop train --out DIR`` holds an exclusive ``flock`` on the directory itself
for as long as it runs. A second run on the same directory is refused at once
with :class:`RunDirectoryInUse`. The lock belongs to the open file
description, so the kernel drops it when the process ends however it ends
(SIGKILL, a crash, power loss): a killed run never leaves a directory locked,
and no lock file is left behind to clean up.

Where ``fcntl`` is missing (Windows) the lock is not taken; docs/errors.md
says so.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["RunDirectoryInUse", "RunLock"]


class RunDirectoryInUse(BlockingIOError):
    """Another process is running in this run directory."""

    def __str__(self) -> str:  # the sentence, without OSError's "[Errno 11]"
        return str(self.strerror)


class RunLock:
    """An exclusive lock on a directory, held from :meth:`acquire` to :meth:`release`.

    Also a context manager::

        with RunLock("runs/a"):
            ...   # no other RunLock on runs/a can be acquired meanwhile
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise :class:`RunDirectoryInUse` naming the directory at once.

        Raises
        ------
        RunDirectoryInUse
            Another process holds it.
        FileNotFoundError, NotADirectoryError
            ``directory`` does not exist or is not a directory.
        """
        if self._fd is not None or fcntl is None:
            return self
        fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryInUse(
                    errno.EWOULDBLOCK,
                    f"the run directory {str(self.directory)!r} is in use by another xprop run "
                    "(it holds the directory's lock); wait for that run to end, or choose another "
                    "--out") from None
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the descriptor drops it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

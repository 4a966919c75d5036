"""The two locks every worker of a study can take, wherever it runs: a ``flock`` on a file beside a journal or
sqlite storage (it dies with its process; the file is there only while it is held), and a PostgreSQL advisory lock
(it dies with its session).

Waiting, a lock blocks until it is free; not waiting, a held lock raises ``LockHeld`` with what its holder wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class LockHeld(Exception):
    """The lock is held by another process; the message says by whom, when the holder said."""


def lock_key(name: str) -> int:
    """The advisory-lock key of a lock name."""
    return zlib.crc32(name.encode())


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True, holder: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; ``holder`` is written in the file while it is held.

    The file exists only while the lock is held (nothing is left beside the storage): the holder removes it before
    it lets go, and a process that then gets the lock on the removed file tries again on the path's new one."""
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            handle.close()
            raise LockHeld(text or f"see {path}") from None
        except BaseException:  # e.g. Ctrl-C while waiting
            handle.close()
            raise
        if _is_current(handle, path):
            break
        handle.close()  # its holder removed it while this process waited: lock the path's new file
    with handle:
        if holder is not None:
            handle.truncate(0)
            handle.write(holder)
            handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # still held: a process waiting on this file sees it gone, tries again
                path.unlink()  # (a file this user may not remove stays, and is locked as it is)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_current(handle: Any, path: Path) -> bool:
    """Whether the open ``handle`` is the file ``path`` names now."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


@contextlib.contextmanager
def advisory_lock(engine: Any, key: int, *, wait: bool = True) -> Iterator[None]:
    """Hold PostgreSQL's session-level advisory lock ``key`` on a connection of ``engine`` (autocommit: no
    transaction stays open while it is held)."""
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if wait:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        elif not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
            raise LockHeld(f"PostgreSQL advisory lock {key} is held")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a lost session has released the lock already
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})

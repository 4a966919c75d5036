"""Storage URLs → Optuna storages, with passwords masked wherever a URL is shown.

The embedded default is an Optuna journal file (``searchlab.journal`` in the working directory): an append-only
log with a file lock, safe for several processes on one host, and far cheaper per trial than SQLite, which also
locks under several writers. ``postgresql://`` is the choice when several hosts share a study.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import fcntl
import functools
import json
import os
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from searchlab.errors import ConfigError, first_line

DEFAULT_JOURNAL = "searchlab.journal"
DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


def mask_password(url: str) -> str:
    """The URL with any password replaced by ``***``: in the user part (whatever characters it holds, up to the
    last ``@`` before the host) and in any ``password=``/``sslpassword=`` query field."""
    url = re.sub(r"^([a-zA-Z][\w+.-]*://[^:/@]*):.*@(?=[^@]*$)", r"\1:***@", url)
    return re.sub(r"(?i)([?&](?:ssl)?password=)[^&]*", r"\1***", url)


def is_database_url(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES and "://" in url


def describe(url: str | None) -> str:
    """The storage as shown to users: a masked URL or the journal file's path."""
    return mask_password(url) if url else DEFAULT_JOURNAL


def open_storage(url: str | None, *, heartbeat: int | None = None, on_stale: Any = None, writes: bool = True) -> Any:
    """An Optuna storage for ``url``: a database URL, or a journal file path (default ``searchlab.journal``).

    On a database, ``heartbeat`` (seconds) turns on Optuna's heartbeats: a RUNNING trial whose worker has not
    beaten for three intervals is stale, and ``on_stale(study, trial)`` runs after Optuna fails it. Without
    ``writes``, a local file is only read: it need not be writable.
    """
    import optuna

    url = url or DEFAULT_JOURNAL
    if is_database_url(url):
        check_sqlite_folder(url, writes=writes)
        kwargs: dict[str, Any] = {}
        if url.startswith(("postgresql", "postgres")):
            kwargs["connect_args"] = {"connect_timeout": 10}
        try:
            with warnings.catch_warnings():  # heartbeats are experimental in Optuna, and relied on here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    with_driver(url),
                    engine_kwargs=kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=None if heartbeat is None else 3 * heartbeat,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except Exception as error:
            raise ConfigError(
                f"cannot open storage {mask_password(url)}: {first_line(error)}; "
                "check the URL and that the database is running"
            ) from None
    if "://" in url:
        raise ConfigError(
            f"unknown storage {mask_password(url)!r}: use sqlite:///FILE, postgresql://USER@HOST/DB "
            "or a journal file path"
        )
    path = Path(url)
    check_journal_path(path, writes=writes)
    return journal_storage(str(path.resolve()))


READERS_SUFFIX = ".readers"  # beside a journal: every process that has it open holds a shared lock on this file
# path → (the file's device and inode, its JournalStorage, the open readers file that holds the shared lock)
JOURNALS: dict[str, tuple[tuple[int, int], Any, Any]] = {}
os.register_at_fork(after_in_child=JOURNALS.clear)  # a child's journal writes must carry worker ids of its own


def journal_storage(path: str) -> Any:
    """The process's JournalStorage of the journal file ``path``: opening one replays the whole log (seconds for a
    study continued night after night), and a run opens its study several times (the night, the run, an in-process
    worker); this one is read on from where it stopped. A file replaced since (compacted, or deleted and made again)
    is opened anew. While the process has it open, it holds a shared lock that compaction waits for (see
    ``compaction``)."""

    def identity() -> tuple[int, int] | None:
        with contextlib.suppress(FileNotFoundError):
            found = os.stat(path)
            return found.st_dev, found.st_ino
        return None

    cached = JOURNALS.get(path)
    if cached is not None and cached[0] == identity():
        return cached[1]
    forget_journal(path)
    readers = None
    with contextlib.suppress(OSError):  # a read-only folder: nobody compacts the journal there
        readers = open(path + READERS_SUFFIX, "a")  # noqa: SIM115 (held open, and locked, while the process lives)
        fcntl.flock(readers, fcntl.LOCK_SH)
    storage = journal_storage_class()(journal_file(path))
    file = identity()
    if file is not None:
        JOURNALS[path] = (file, storage, readers)
    elif readers is not None:
        readers.close()
    return storage


def forget_journal(path: str) -> None:
    """Drop this process's JournalStorage of ``path``, and its shared lock."""
    cached = JOURNALS.pop(path, None)
    if cached is not None and cached[2] is not None:
        cached[2].close()


def journal_file(path: str) -> Any:
    """Optuna's journal file backend (same file format), synced to disk when a study or a trial starts or ends
    rather than on every append, by a background thread, and locked with the kernel's ``flock`` on the file itself.

    Optuna syncs every append (many per trial) in the caller; a sync here waits on the disk in the
    ``searchlab-journal-sync`` thread (slow while a tracking server writes to the same disk), never in the
    trial loop, and syncs asked for meanwhile are made as one. A process waits for the last one before it exits
    (at exit; a forked worker, which skips that, in ``worker_process``).
    After a power cut the trial a worker was running is lost either way (it is recovered as failed); a crashed
    process loses nothing: its writes were made. Optuna's default lock is a symlink made and removed around every
    append: three directory updates (several times the cost of a ``flock``), and a lock that a killed
    process leaves behind stops every writer until its grace period ends; a ``flock`` dies with its process.
    Appends are ``O_APPEND`` writes: lines do not interleave with those of a plain Optuna process on the file."""
    return journal_file_class()(path)


class Syncer:
    """Syncs files to disk in one background thread; files asked for while a sync runs are synced together next."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child has no sync thread, whatever its parent had

    def _reset(self) -> None:
        self._pending: set[str] = set()
        self._busy = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def request(self, path: str) -> None:
        """Sync ``path`` soon, without waiting for it."""
        with self._changed:
            self._pending.add(path)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="searchlab-journal-sync", daemon=True)
                self._thread.start()
                atexit.register(self.wait)
            self._changed.notify_all()

    def wait(self) -> None:
        """Return once every sync asked for so far is made."""
        with self._changed:
            self._changed.wait_for(lambda: not self._pending and not self._busy)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending))
                paths, self._pending, self._busy = self._pending, set(), True
            for path in paths:
                with contextlib.suppress(OSError):  # a file removed meanwhile has nothing left to sync
                    descriptor = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(descriptor)
                    finally:
                        os.close(descriptor)
            with self._changed:
                self._busy = False
                self._changed.notify_all()


SYNCER = Syncer()


@functools.cache
def journal_file_class() -> type:
    """searchlab's journal file backend (its class is made on first use: Optuna loads then, not at import). It is
    ``searchlab.storage.JournalFile`` for pickle, so that a study on it can be handed to another process."""
    from optuna.storages.journal import JournalFileBackend

    durable = {0, 1, 2, 3, 4, 6, 10}  # JournalOperation: study create/delete/attrs, trial create, state, discard

    class JournalFile(JournalFileBackend):
        def __init__(self, file_path: str) -> None:
            super().__init__(file_path)  # its symlink lock is never taken: append_logs locks the file
            self.path = os.path.abspath(file_path)  # a sync made after a chdir still finds it

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
            with open(self.path, "ab") as file:
                fcntl.flock(file, fcntl.LOCK_EX)
                try:
                    file.write(text)
                    file.flush()
                finally:
                    fcntl.flock(file, fcntl.LOCK_UN)
            if any(log.get("op_code") in durable for log in logs):
                SYNCER.request(self.path)

    JournalFile.__qualname__, JournalFile.__module__ = "JournalFile", __name__
    return JournalFile


@functools.cache
def journal_storage_class() -> type:
    """Optuna's JournalStorage, but its lists of open trials (WAITING or RUNNING: what every ``ask`` and the reaper
    look for) read the trials from the oldest one still open, not the study's whole history at every call. That is
    exact: trials are numbered as they come, and a finished trial never reopens. It is
    ``searchlab.storage.JournalStorage`` for pickle."""
    import optuna
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

    class JournalStorage(optuna.storages.JournalStorage):
        def __init__(self, log_storage: Any) -> None:
            self._open_from: dict[int, int] = {}  # study id → the number of its oldest trial that may be open
            super().__init__(log_storage)

        def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list[Any]:
            if states is None or any(state in states for state in finished):
                return super().get_all_trials(study_id, deepcopy, states)
            with self._thread_lock:
                self._sync_with_backend()
                replayed = self._replay_result
                if study_id not in replayed._studies:
                    return super().get_all_trials(study_id, deepcopy, states)  # Optuna's KeyError
                ids = replayed._study_id_to_trial_ids[study_id]  # in number order
                trials = [replayed._trials[trial_id] for trial_id in ids[self._open_from.get(study_id, 0) :]]
                still_open = [trial for trial in trials if not trial.state.is_finished()]
                self._open_from[study_id] = still_open[0].number if still_open else len(ids)
                found = [trial for trial in still_open if trial.state in states]
            return copy.deepcopy(found) if deepcopy else found

    JournalStorage.__qualname__, JournalStorage.__module__ = "JournalStorage", __name__
    return JournalStorage


def __getattr__(name: str) -> Any:
    """``JournalFile`` and ``JournalStorage``, made on first use (PEP 562): what pickle finds for a journal storage
    and its backend."""
    if name == "JournalFile":
        return journal_file_class()
    if name == "JournalStorage":
        return journal_storage_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def database_of(storage: Any) -> Any:
    """The RDBStorage a study's storage is, or is wrapped around (Optuna's cache of a database's trials); else None."""
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def uncached(study: Any) -> Any:
    """The Optuna study, talking to its database directly. Optuna wraps a database storage in a cache of the study's
    trials that reads every trial the first time any is asked for (``ask`` does): tens of seconds for a year of
    nights on PostgreSQL, in every process. searchlab reads the trials it needs itself (``window``)."""
    study._storage = database_of(study._storage) or study._storage
    return study


def close_storage(storage: Any) -> None:
    """Close a database storage's pooled connections now, when a run is done with it: a process that runs study after
    study (a notebook, a test suite, ``Study.run`` in a loop) would otherwise keep each run's until garbage collection,
    and PostgreSQL refuses clients past its limit. The storage still works: it reconnects if used again."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


@contextlib.contextmanager
def opened_storage(url: str | None, **options: Any) -> Iterator[Any]:
    """``open_storage``, closed at the end of the block."""
    storage = open_storage(url, **options)
    try:
        yield storage
    finally:
        close_storage(storage)


def has_heartbeats(storage: Any) -> bool:
    """Whether the storage was opened with heartbeats (database storages only)."""
    return getattr(storage, "get_heartbeat_interval", lambda: None)() is not None


class Heartbeat:
    """Beats for one RUNNING trial from a background thread while it trains (database storages only)."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="searchlab-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried at the next interval
                self.storage.record_heartbeat(self.trial_id)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        if has_heartbeats(self.storage):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def with_driver(url: str) -> str:
    """``postgresql://`` and ``postgres://`` use psycopg 3 (installed with searchlab) whatever SQLAlchemy's default."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def local_file(url: str | None) -> Path | None:
    """The file behind a storage: a journal path (default ``searchlab.journal``) or a ``sqlite:///`` file;
    None for a server database or sqlite in memory."""
    url = url or DEFAULT_JOURNAL
    if url.startswith("sqlite:///"):
        return None if url == "sqlite:///:memory:" else Path(url[len("sqlite:///") :])
    return None if "://" in url else Path(url)


def check_sqlite_folder(url: str, *, writes: bool = True) -> None:
    """A sqlite URL whose folder is missing, or (with ``writes``) that cannot be written, gets a clear message before
    anything opens it: MLflow retries a store it cannot write for minutes, and sqlite writes its journal beside the
    file, so the folder must be writable too."""
    path = local_file(url) if url.startswith("sqlite:///") else None
    if path is None:
        return
    if not path.parent.is_dir():
        raise ConfigError(f"folder {str(path.parent)!r} of {url} does not exist: create it or fix the URL")
    if path.is_dir():
        raise ConfigError(f"{url} names a folder: name a file in it, e.g. sqlite:///{path / 'mlflow.db'}")
    if writes and not writable(path):
        raise ConfigError(f"{url} cannot be written here (a read-only file or folder): choose another path")


def check_journal_path(path: Path, *, writes: bool = True) -> None:
    """A journal path that is a folder, a Python file (a study file passed as ``--storage`` by mistake: Optuna fails
    to read it as its log, or makes a log of that name) or (with ``writes``) cannot be written is refused before
    Optuna opens it."""
    if path.is_dir():
        raise ConfigError(
            f"storage {str(path)!r} is a folder: name a journal file in it, e.g. {str(path / DEFAULT_JOURNAL)!r}"
        )
    if path.suffix == ".py":
        raise ConfigError(
            f"storage {str(path)!r} is a Python file: the study file is the command's argument; "
            f"--storage names a journal file (e.g. {DEFAULT_JOURNAL}) or a database URL"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"storage folder {str(path.parent)!r} does not exist: create it or choose another path")
    if writes and not writable(path):
        raise ConfigError(
            f"storage {str(path)!r} cannot be written here (a read-only file or folder): choose another path"
        )


def writable(path: Path) -> bool:
    """Whether ``path`` can be written: the file if it exists, and the folder it is in (to create it, or for
    sqlite's journal). A read-only mount says no to root too."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def load_existing_study(url: str | None, study_name: str | None) -> Any:
    """An Optuna study that already exists (nothing is created); with no name, the storage's only study."""
    import optuna

    if not url and not Path(DEFAULT_JOURNAL).is_file():
        raise ConfigError(f"no {DEFAULT_JOURNAL} here: run 'searchlab run FILE' first, or pass --storage")
    path = local_file(url)
    if url and path is not None and not path.is_file():
        raise ConfigError(f"storage {str(path)!r} does not exist: check --storage")  # opening would create it
    storage = open_storage(url, writes=False)
    names = optuna.get_all_study_names(storage)  # not the summaries: they copy every trial of every study
    if study_name is None:
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            raise ConfigError(f"{describe(url)} holds {len(names)} studies ({found}): pass --study-name or FILE")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"no study named {study_name!r} in {describe(url)} (found: {', '.join(names) or 'none'})")
    return uncached(optuna.load_study(study_name=study_name, storage=storage))

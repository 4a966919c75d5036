"""searchlab.storage: masked URLs, journal/sqlite/PostgreSQL storages on real files and a real server, errors."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL, one_line_config_error

from searchlab.errors import ConfigError
from searchlab.storage import describe, is_database_url, load_existing_study, mask_password, open_storage, with_driver

optuna.logging.set_verbosity(optuna.logging.WARNING)


def add_trial(storage, study_name: str, value: float) -> None:
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, value)


# --- URLs ---


def test_mask_password_hides_a_postgres_password():
    assert mask_password("postgresql://user:pw@host:5432/db") == "postgresql://user:***@host:5432/db"


def test_mask_password_keeps_query_and_driver():
    assert (
        mask_password("postgresql+psycopg://u:secret@db.example/x?sslmode=require")
        == "postgresql+psycopg://u:***@db.example/x?sslmode=require"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user@host:5432/db",
        "postgresql://host/db",
        "sqlite:////tmp/x.db",
        "searchlab.journal",
        "runs/shared.journal",
        "http://127.0.0.1:5000",
        "https://mlflow.example.com/api",
    ],
)
def test_mask_password_leaves_urls_without_password_unchanged(url: str):
    assert mask_password(url) == url


def test_mask_password_hides_an_http_password():
    assert mask_password("https://alice:tok3n@mlflow.example.com/x") == "https://alice:***@mlflow.example.com/x"


def test_mask_password_keeps_ipv6_brackets():
    assert mask_password("postgresql://u:pw@[::1]:5432/db") == "postgresql://u:***@[::1]:5432/db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", True),
        ("postgresql://u@h/db", True),
        ("postgres://u@h/db", True),
        ("postgresql+psycopg://u@h/db", True),
        ("mysql://u@h/db", True),
        ("searchlab.journal", False),
        ("sqlite.journal", False),
        ("redis://h:6379", False),
        ("http://h:5000", False),
        ("postgresql", False),
    ],
)
def test_is_database_url(url: str, expected: bool):
    assert is_database_url(url) is expected


def test_describe_default_is_the_journal_file():
    assert describe(None) == "searchlab.journal"
    assert describe("") == "searchlab.journal"


def test_describe_masks_the_password():
    assert describe("postgresql://bob:s3cret@h/db") == "postgresql://bob:***@h/db"
    assert describe("runs/x.journal") == "runs/x.journal"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("mysql://u@h/db", "mysql://u@h/db"),
    ],
)
def test_with_driver(url: str, expected: str):
    assert with_driver(url) == expected


# --- open_storage ---


def test_default_storage_is_a_journal_in_the_working_directory(workdir: Path):
    storage = open_storage(None)
    assert isinstance(storage, optuna.storages.JournalStorage)
    add_trial(storage, "s", 1.0)
    assert (workdir / "searchlab.journal").is_file()
    assert (workdir / "searchlab.journal").stat().st_size > 0


def test_two_journal_storages_on_one_path_share_trials(workdir: Path):
    writer, reader = open_storage("shared.journal"), open_storage("shared.journal")
    add_trial(writer, "s", 0.5)
    study = optuna.load_study(study_name="s", storage=reader)
    assert [trial.value for trial in study.trials] == [0.5]
    add_trial(reader, "s", 0.25)
    assert [trial.value for trial in optuna.load_study(study_name="s", storage=writer).trials] == [0.5, 0.25]


def test_the_journal_is_synced_when_a_trial_starts_and_ends_not_per_epoch(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    import os

    from searchlab.storage import SYNCER

    study = optuna.create_study(study_name="s", storage=open_storage("sync.journal"))
    SYNCER.wait()
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size))
    trial = study.ask()  # created: synced
    SYNCER.wait()
    assert len(synced) == 1
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr("seed", 3)
    for epoch in range(10):
        trial.report(1.0 / (epoch + 1), epoch)
    SYNCER.wait()
    assert len(synced) == 1
    study.tell(trial, 0.1)  # finished: synced (with everything before it)
    SYNCER.wait()
    assert synced[1:] == [(workdir / "sync.journal").stat().st_size]


def test_journal_syncs_wait_on_the_disk_in_the_background_and_before_the_process_exits(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    """A slow disk never holds up the trial loop: a sync blocked on it leaves appends going, the syncs asked for
    meanwhile are made together once it returns, and the process waits for them before it exits."""
    import os
    import subprocess
    import sys
    import threading

    from searchlab.storage import SYNCER

    study = optuna.create_study(study_name="s", storage=open_storage("slow.journal"))
    SYNCER.wait()
    disk = threading.Event()
    synced: list[int] = []

    def slow_fsync(fd: int) -> None:
        disk.wait(10)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)  # 6 syncs asked for, none made
    assert synced == [] and len(study.trials) == 3
    disk.set()
    SYNCER.wait()
    assert 1 <= len(synced) <= 2 and synced[-1] == (workdir / "slow.journal").stat().st_size

    script = (
        "import os, time, optuna\n"
        "real = os.fsync\n"
        "def slow(fd):\n    time.sleep(1); real(fd); print('synced', flush=True)\n"
        "os.fsync = slow\n"
        "from searchlab.storage import open_storage\n"
        "optuna.create_study(study_name='s', storage=open_storage('exit.journal'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "synced" in done.stdout


def test_a_forked_child_syncs_on_its_own_thread(workdir: Path):
    """The sync thread does not survive a fork (workers are forked from a fork server): a child that writes a
    journal gets its own, and waiting for its syncs returns."""
    import os
    import threading

    from searchlab.storage import SYNCER

    optuna.create_study(study_name="s", storage=open_storage("parent.journal"))  # this process's thread runs
    SYNCER.wait()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            optuna.create_study(study_name="c", storage=open_storage("child.journal"))
            waiting = threading.Thread(target=SYNCER.wait, daemon=True)
            waiting.start()
            waiting.join(10)
            code = 3 if waiting.is_alive() else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's syncs were never made"


def test_the_journal_file_is_optunas_format(workdir: Path):
    """Optuna's own JournalFileBackend reads what searchlab wrote, and searchlab reads what it writes."""
    from optuna.storages.journal import JournalFileBackend

    study = optuna.create_study(study_name="s", storage=open_storage("shared.journal"))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    plain = optuna.storages.JournalStorage(JournalFileBackend("shared.journal"))
    optuna.load_study(study_name="s", storage=plain).optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="s", storage=open_storage("shared.journal"))
    assert [trial.state.name for trial in again.trials] == ["COMPLETE"] * 5
    assert again.trials[4].params == optuna.load_study(study_name="s", storage=plain).trials[4].params


def test_the_journal_lists_open_trials_as_optuna_does_without_reading_the_history(workdir: Path):
    """WAITING and RUNNING trials (every ``ask``, the reaper) come from the oldest open trial on, also as another
    process's writes arrive and after a pickle; every list equals plain Optuna's of the same file."""
    from optuna.trial import TrialState

    storage = open_storage("searchlab.journal")
    study = optuna.create_study(study_name="open", storage=storage)
    other = optuna.load_study(study_name="open", storage=plain_journal("searchlab.journal"))  # another process
    asked = []
    for step in range(40):
        writer = study if step % 3 else other
        trial = writer.ask()  # the oldest WAITING trial, if any
        trial.suggest_float("x", 0, 1)
        asked.append(trial)
        if step % 4 != 1:  # some stay RUNNING a while, so the oldest open trial lags behind
            writer.tell(trial, step)
        if step % 7 == 6:
            for old in asked:
                if writer.trials[old.number].state == TrialState.RUNNING and old.study is writer:
                    writer.tell(old, state=TrialState.FAIL)
        if step % 5 == 0:
            writer.enqueue_trial({"x": step / 40})  # WAITING until an ask takes it
        reference = plain_journal("searchlab.journal")
        for states in [(TrialState.WAITING,), (TrialState.RUNNING,), (TrialState.WAITING, TrialState.RUNNING)]:
            expected = [t.number for t in reference.get_all_trials(study._study_id, states=states)]
            assert [t.number for t in storage.get_all_trials(study._study_id, states=states)] == expected, step
    open_from = storage._open_from[study._study_id]
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert running and open_from == min(running) > 0  # it reads from the oldest open trial, not from trial 0
    copied = pickle.loads(pickle.dumps(storage))
    assert [t.number for t in copied.get_all_trials(study._study_id, states=(TrialState.RUNNING,))] == running
    assert len(storage.get_all_trials(study._study_id)) == len(reference.get_all_trials(study._study_id)) == 40


def plain_journal(path: str) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))


def test_journal_appends_wait_for_the_file_lock_and_leave_no_lock_file(workdir: Path):
    """Appends take the kernel's flock on the journal itself: one held elsewhere (another process, or here another
    open file) makes them wait; none leaves a lock file behind (a killed process's flock goes with it). Beside the
    journal stays only the file its readers hold a shared flock on (see compaction)."""
    import fcntl
    import threading

    storage = open_storage("locked.journal")
    study = optuna.create_study(study_name="s", storage=storage)
    with open(workdir / "locked.journal", "ab") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: study.enqueue_trial({"x": 0.5}))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "an append went ahead while another holder had the lock"
        fcntl.flock(other, fcntl.LOCK_UN)
    writer.join(10)
    assert not writer.is_alive()
    assert [
        trial.state.name for trial in optuna.load_study(study_name="s", storage=open_storage("locked.journal")).trials
    ] == ["WAITING"]
    assert sorted(path.name for path in workdir.iterdir()) == ["locked.journal", "locked.journal.readers"]


def test_journal_in_a_missing_folder_raises_config_error(workdir: Path):
    message = one_line_config_error(open_storage, "missing/x.journal")
    assert "'missing'" in message and "does not exist" in message
    assert not (workdir / "missing").exists()


def test_unknown_scheme_raises_config_error(workdir: Path):
    message = one_line_config_error(open_storage, "redis://bob:s3cret@localhost:6379/0")
    assert "unknown storage" in message and "s3cret" not in message
    assert "redis://bob:***@localhost:6379/0" in message


def test_sqlite_in_a_missing_folder_names_the_folder(workdir: Path):
    message = one_line_config_error(open_storage, "sqlite:///missing/x.db")
    assert "'missing'" in message and "does not exist" in message
    assert not (workdir / "missing").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (".", "storage '.' is a folder: name a journal file in it"),
        ("study.py", "storage 'study.py' is a Python file"),
        ("new_file.py", "storage 'new_file.py' is a Python file"),
        ("sqlite:///.", "names a folder"),
    ],
)
def test_a_storage_path_that_cannot_be_a_journal_is_refused_before_it_is_opened(workdir: Path, url: str, message: str):
    (workdir / "study.py").write_text("x = 1\n")
    assert message in one_line_config_error(open_storage, url)
    assert sorted(path.name for path in workdir.iterdir()) == ["study.py"]
    assert (workdir / "study.py").read_text() == "x = 1\n"


@pytest.mark.parametrize("name", ["x.journal", "x.db"])
def test_a_storage_in_a_read_only_folder_is_refused_before_it_is_opened(read_only_folder: Path, name: str):
    url = str(read_only_folder / name) if name.endswith(".journal") else f"sqlite:///{read_only_folder / name}"
    assert "cannot be written here (a read-only file or folder)" in one_line_config_error(open_storage, url)
    assert not list(read_only_folder.iterdir())


def test_sqlite_storage_works(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/x.db"
    storage = open_storage(url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    add_trial(storage, "s", 2.0)
    assert (tmp_path / "x.db").is_file()
    assert optuna.load_study(study_name="s", storage=open_storage(url)).best_value == 2.0


def test_postgresql_storage_works_through_psycopg():
    name = f"searchlab-test-{uuid.uuid4().hex}"
    storage = open_storage(POSTGRES_URL)
    try:
        assert storage.engine.url.drivername == "postgresql+psycopg"
        add_trial(storage, name, 3.0)
        study = load_existing_study(POSTGRES_URL, name)
        assert study.study_name == name and [trial.value for trial in study.trials] == [3.0]
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)


def test_unreachable_postgresql_raises_config_error_with_the_password_masked():
    message = one_line_config_error(open_storage, "postgresql://bob:s3cret@127.0.0.1:1/test")
    assert "s3cret" not in message
    assert "postgresql://bob:***@127.0.0.1:1/test" in message and "cannot open storage" in message


# --- load_existing_study ---


def test_load_existing_study_without_a_journal_says_run_first(workdir: Path):
    message = one_line_config_error(load_existing_study, None, None)
    assert "no searchlab.journal here" in message and "searchlab run" in message
    assert not (workdir / "searchlab.journal").exists()


def test_load_existing_study_returns_the_only_study(workdir: Path):
    add_trial(open_storage(None), "only", 1.5)
    study = load_existing_study(None, None)
    assert study.study_name == "only" and study.best_value == 1.5


def test_load_existing_study_by_name(workdir: Path):
    add_trial(open_storage(None), "a", 1.0)
    add_trial(open_storage(None), "b", 2.0)
    assert load_existing_study(None, "b").best_value == 2.0


def test_load_existing_study_with_two_and_no_name_lists_them(workdir: Path):
    add_trial(open_storage(None), "alpha", 1.0)
    add_trial(open_storage(None), "beta", 2.0)
    message = one_line_config_error(load_existing_study, None, None)
    assert "2 studies" in message and "alpha" in message and "beta" in message and "--study-name" in message


def test_load_existing_study_unknown_name_raises_and_creates_nothing(workdir: Path):
    add_trial(open_storage(None), "alpha", 1.0)
    message = one_line_config_error(load_existing_study, None, "gamma")
    assert "'gamma'" in message and "alpha" in message
    names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(None), include_best_trial=False)]
    assert names == ["alpha"]


def test_load_existing_study_on_an_explicit_journal_path(workdir: Path):
    add_trial(open_storage("other.journal"), "x", 4.0)
    assert load_existing_study("other.journal", None).best_value == 4.0


def test_load_existing_study_on_an_empty_storage_says_none(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/empty.db"
    open_storage(url)  # an existing database without studies
    message = one_line_config_error(load_existing_study, url, None)
    assert "0 studies (none)" in message
    assert optuna.get_all_study_summaries(open_storage(url), include_best_trial=False) == []


def test_mask_password_in_the_query_string() -> None:
    masked = mask_password("postgresql://bob@db.example/test?sslmode=require&password=s3cret")
    assert masked == "postgresql://bob@db.example/test?sslmode=require&password=***"


def test_reading_a_missing_storage_creates_nothing(workdir: Path) -> None:
    for url in (f"sqlite:///{workdir / 'none.db'}", str(workdir / "none.journal")):
        with pytest.raises(ConfigError, match="does not exist"):
            load_existing_study(url, None)
    assert list(workdir.iterdir()) == []


def count_trials(storage: object, name: str) -> int:
    return len(optuna.load_study(study_name=name, storage=storage).trials)  # type: ignore[arg-type]


def test_a_journal_storage_can_be_handed_to_another_process(workdir: Path):
    storage = open_storage(None)
    study = optuna.create_study(study_name="handed", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    restored = pickle.loads(pickle.dumps(storage))
    assert type(restored._backend) is type(storage._backend)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(count_trials, storage, "handed").result() == 3


# Run inside Optuna's own test run: its "journal" storage mode made on searchlab's backend, and checked to be.
PLUGIN = """
import optuna.testing.storages
from searchlab.storage import journal_file_class

optuna.testing.storages.JournalFileBackend = journal_file_class()
supplied = optuna.testing.storages.StorageSupplier.__enter__


def enter(self):
    storage = supplied(self)
    if self.storage_specifier == "journal":
        assert type(storage._backend) is journal_file_class(), type(storage._backend)
    return storage


optuna.testing.storages.StorageSupplier.__enter__ = enter
"""


@pytest.fixture(scope="session")
def optuna_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Optuna's own test suite, from the sdist on PyPI of the version installed here."""
    folder = tmp_path_factory.mktemp("optuna-sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         f"optuna=={optuna.__version__}", "--dest", str(folder)],
        check=True, capture_output=True,
    )  # fmt: skip
    with tarfile.open(next(folder.glob("optuna-*.tar.gz"))) as archive:
        archive.extractall(folder, filter="data")
    return folder / f"optuna-{optuna.__version__}"


def test_optunas_own_storage_tests_pass_on_searchlabs_journal(optuna_tests: Path, tmp_path: Path):
    (tmp_path / "searchlab_journal_plugin.py").write_text(PLUGIN)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "--color=no", "-p", "searchlab_journal_plugin", "-p", "no:cacheprovider",
         "tests/storages_tests/test_storages.py", "-k", "journal and not redis and not grpc"],
        cwd=optuna_tests, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 50, result.stdout[-2000:]
    assert "test_pickle_storage[journal] PASSED" in result.stdout, "a study on the journal is handed to processes"

"""A study continued night after night (benchmarks/history.py's fixture at a size CI affords; benchmarks/scale.py runs
a year of it): the next night runs on it, every command answers from all of it, and the journal is compacted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL, clean_env
from optuna.storages.journal import JournalFileBackend

from searchlab.nights import recorded_nights
from searchlab.storage import open_storage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from history import STUDY_FILE, write_history

NIGHTS, TRIALS = 6, 40


def searchlab(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "searchlab", *args], cwd=folder, env=clean_env(), capture_output=True, text=True
    )


def administer(statement: str) -> None:
    engine = open_storage(POSTGRES_URL).engine
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(statement)
    engine.dispose()


@pytest.fixture(params=["journal", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the history goes: the journal in tmp_path, or a database of its own."""
    if request.param == "journal":
        yield "searchlab.journal"
        return
    administer("DROP DATABASE IF EXISTS searchlab_history_test WITH (FORCE)")
    administer("CREATE DATABASE searchlab_history_test")
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/searchlab_history_test"
    finally:
        administer("DROP DATABASE searchlab_history_test WITH (FORCE)")


def load(folder: Path, storage: str) -> optuna.Study:
    """The study, read as plain Optuna reads it (the test holds no journal open: the night compacts it)."""
    if "://" in storage:
        return optuna.load_study(study_name="regression", storage=open_storage(storage))
    journal = optuna.storages.JournalStorage(JournalFileBackend(str(folder / storage)))
    return optuna.load_study(study_name="regression", storage=journal)


def test_the_next_night_of_a_long_study_and_what_every_command_shows(tmp_path: Path, storage: str) -> None:
    write_history(tmp_path, nights=NIGHTS, trials=TRIALS, storage=storage, say=lambda line: None)
    study = load(tmp_path, storage)
    history = study.get_trials(deepcopy=False)
    assert len(history) == 3 + (NIGHTS - 1) * TRIALS

    night = searchlab(tmp_path, "nightly", STUDY_FILE, "--trials", "4", "--max-epochs", "2", "--storage", storage)
    assert night.returncode in (0, 3), night.stdout + night.stderr
    assert f"night      {NIGHTS + 1}:" in night.stdout
    compacted = [line for line in night.stdout.splitlines() if line.startswith("journal    ")]
    is_journal = "://" not in storage
    assert len(compacted) == is_journal and (not compacted or " compacted: " in compacted[0])

    study = load(tmp_path, storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(history) + 4
    assert [(t.number, t.params, t.value) for t in trials[: len(history)]] == [
        (t.number, t.params, t.value) for t in history
    ]  # compaction changed nothing that is read
    assert [n["night"] for n in recorded_nights(study.user_attrs)] == list(range(1, NIGHTS + 2))

    listed = searchlab(tmp_path, "trials", "--storage", storage, "--last", "5").stdout.splitlines()
    assert [row.split()[0] for row in listed[1:6]] == [str(t.number) for t in trials[-5:]]
    assert listed[-1] == f"({len(trials) - 5} earlier trials not listed: --last N or --all)"
    best = searchlab(tmp_path, "best", "--storage", storage).stdout
    assert f"trial      {study.best_trial.number}\n" in best

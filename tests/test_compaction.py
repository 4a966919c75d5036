"""Compacting a journal: the same studies and trials for plain Optuna, fewer records, never under another process;
and a PostgreSQL database's statistics refreshed after a night."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import POSTGRES_URL
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from searchlab.cli import main
from searchlab.compaction import JournalInUse, compact_journal, refresh_statistics
from searchlab.nightly import compact_after_night
from searchlab.storage import open_storage

SPACE = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "batch_size": CategoricalDistribution([32, 64])}


def write_studies(path: Path) -> None:
    """Two studies written as workers write them (a deleted one between), trials of every state."""
    storage = open_storage(str(path))
    optuna.create_study(study_name="gone", storage=storage).ask()
    for name in ("first", "second"):
        study = optuna.create_study(study_name=name, storage=storage)
        study.set_user_attr("nights", [1, 2])
        for number in range(30):
            trial = study.ask(SPACE)
            trial.set_user_attr("mlflow_run_id", f"run-{name}-{number}")
            for epoch in range(1, 6):
                trial.report(trial.params["lr"] * 10 / epoch + number, epoch)
            if number % 10 == 9:
                study.tell(trial, state=TrialState.PRUNED)
            elif number % 10 == 8:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, (trial.params["lr"] - 0.01) ** 2 + number / 100)
        study.ask(SPACE)  # still running (its worker died)
        study.enqueue_trial({"lr": 0.01, "batch_size": 32})
    optuna.delete_study(study_name="gone", storage=storage)


def plain(path: Path) -> dict[str, tuple]:
    """Every study as plain Optuna reads the file: its attributes and its trials' every field."""
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    found = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        found[summary.study_name] = (
            study.user_attrs,
            [(t.number, t.state, t.values, t.params, t.distributions, t.user_attrs, t.system_attrs) for t in trials],
            [(t.datetime_start, t.datetime_complete) for t in trials],
            {t.number: t.intermediate_values for t in trials},
        )
    return found


def test_compaction_keeps_every_study_and_trial_and_the_latest_and_best_curves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("searchlab.compaction.ELITE", 3)
    path = tmp_path / "searchlab.journal"
    write_studies(path)
    before = plain(path)
    lines_before = len(path.read_text().splitlines())

    size_before, size_after = compact_journal(path, curves_kept=5)

    after = plain(path)
    assert set(after) == {"first", "second"}
    lines = len(path.read_text().splitlines())
    assert lines == 2 * (1 + 1 + 32) and lines < lines_before / 5  # a study, its attribute, a record per trial
    assert size_after < size_before / 2
    for name in after:
        assert after[name][:3] == before[name][:3]  # attributes, trials, dates: the same
        finished = [number for number, state, *_ in after[name][1] if state.is_finished()]
        completed = sorted(
            (values[0], number) for number, state, values, *_ in after[name][1] if state == TrialState.COMPLETE
        )
        kept = {number for number, curve in after[name][3].items() if curve}
        assert kept == set(finished[-5:]) | {number for _, number in completed[:3]}
        assert all(after[name][3][number] == before[name][3][number] for number in kept)

    study = optuna.load_study(study_name="second", storage=open_storage(str(path)))  # searchlab goes on writing
    enqueued = study.ask()  # the waiting trial first, as before
    assert enqueued.number == 31 and enqueued.suggest_float("lr", 1e-4, 1e-1, log=True) == 0.01
    study.tell(enqueued, 1.0)
    assert study.ask().number == 32


HOLDER = """
import sys
from searchlab.storage import open_storage
open_storage(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
"""


def test_a_journal_another_process_has_open_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "searchlab.journal"
    write_studies(path)
    text = path.read_text()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(JournalInUse, match="is open in another process"):
            compact_journal(path)
        assert path.read_text() == text
        result = CliRunner().invoke(main, ["compact", "--storage", str(path)])
        assert result.exit_code == 1 and "close it and try again" in result.output
    finally:
        holder.communicate("")
    result = CliRunner().invoke(main, ["compact", "--storage", str(path)])
    assert result.exit_code == 0 and result.output.startswith("journal    searchlab.journal compacted: ")


def test_this_process_reads_the_compacted_journal_afresh(tmp_path: Path) -> None:
    path = tmp_path / "searchlab.journal"
    write_studies(path)
    before = open_storage(str(path))
    assert open_storage(str(path)) is before  # one replay per process
    compact_journal(path)
    after = open_storage(str(path))
    assert after is not before
    assert len(optuna.load_study(study_name="first", storage=after).trials) == 32


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (POSTGRES_URL, "is a database: only a journal file is compacted"),
        ("missing.journal", "no journal 'missing.journal' here: check --storage"),
    ],
)
def test_compact_refuses_what_is_not_a_journal(workdir: Path, storage: str, message: str) -> None:
    result = CliRunner().invoke(main, ["compact", "--storage", storage])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and message in result.output


def last_analyzed(table: str) -> float:
    """When PostgreSQL last analyzed the table by hand (epoch seconds; 0: never)."""
    import psycopg

    with psycopg.connect(POSTGRES_URL) as connection:
        row = connection.execute(
            "SELECT extract(epoch FROM last_analyze) FROM pg_stat_user_tables WHERE relname = %s", (table,)
        ).fetchone()
    return float(row[0] or 0) if row else 0.0


def test_a_night_on_postgresql_refreshes_the_planners_statistics() -> None:
    optuna.create_study(storage=open_storage(POSTGRES_URL)).ask()  # Optuna's tables exist
    started = time.time()
    assert compact_after_night(POSTGRES_URL) == (
        "database   statistics refreshed (ANALYZE of Optuna's tables, for the planner)"
    )
    deadline = time.time() + 10  # the statistics collector reports within a moment
    while last_analyzed("trials") < started - 1 and time.time() < deadline:
        time.sleep(0.2)
    assert last_analyzed("trials") >= started - 1 and last_analyzed("trial_intermediate_values") >= started - 1
    unreachable = refresh_statistics("postgresql://postgres@127.0.0.1:1/test")
    assert unreachable.startswith("database   statistics not refreshed tonight: ") and "\n" not in unreachable

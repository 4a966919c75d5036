"""The search loop: claims within the budget, tells every trial, stops at the deadline, never leaves RUNNING."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import SEARCHLAB, clean_env, write_study
from optuna.trial import TrialState

from searchlab.cli import main
from searchlab.errors import ConfigError
from searchlab.outcome import run_trial
from searchlab.settings import BUDGET_ATTR, PARENT_RUN_ATTR
from searchlab.signals import interrupt_once
from searchlab.storage import open_storage
from searchlab.worker import loaded_objects_frozen, search


def study_with_budget(budget: int) -> optuna.Study:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr(BUDGET_ATTR, budget)
    return study


def run_search(study: optuna.Study, objective, *, deadline: float | None = None) -> list[int]:
    ended: list[int] = []
    search(
        study,
        objective,
        lock=contextlib.nullcontext,
        deadline=deadline,
        heartbeat=10,
        reap=lambda: None,
        on_trial_end=lambda trial: ended.append(trial.number),
    )
    return ended


def test_search_runs_exactly_the_budget_and_records_failures() -> None:
    study = study_with_budget(5)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        if trial.number % 2:
            raise ValueError("odd trial")
        return x * x

    assert run_search(study, objective) == [0, 1, 2, 3, 4]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL] * 2 + [TrialState.COMPLETE]
    assert study.trials[1].user_attrs["fail_reason"] == "ValueError: odd trial"
    assert all(trial.user_attrs["worker"].endswith(f":{__import__('os').getpid()}") for trial in study.trials)


def test_search_continues_to_a_raised_budget() -> None:
    study = study_with_budget(2)
    run_search(study, lambda trial: 1.0)
    study.set_user_attr(BUDGET_ATTR, 5)
    run_search(study, lambda trial: 1.0)
    assert len(study.trials) == 5


def test_search_stops_claiming_after_the_deadline() -> None:
    study = study_with_budget(100)

    def objective(trial: optuna.Trial) -> float:
        time.sleep(0.3)
        return 0.0

    run_search(study, objective, deadline=time.time() + 0.5)
    assert 1 <= len(study.trials) <= 3
    assert study.get_trials(states=(TrialState.RUNNING,)) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ConfigError("bad head")])
def test_interrupts_and_bad_input_fail_the_open_trial_and_propagate(error: BaseException) -> None:
    study = study_with_budget(3)

    def objective(trial: optuna.Trial) -> float:
        raise error

    with pytest.raises(type(error)):
        run_search(study, objective)
    # an interrupted trial waits for the next run, which resumes it; bad input is not retried
    retry = [TrialState.WAITING] if isinstance(error, KeyboardInterrupt) else []
    assert [t.state for t in study.trials] == [TrialState.FAIL, *retry]


def test_pruned_trials_are_told_pruned() -> None:
    study = study_with_budget(1)

    def objective(trial: optuna.Trial) -> float:
        raise optuna.TrialPruned

    frozen = run_trial(study, study.ask(), objective)
    assert frozen.state == TrialState.PRUNED


def test_interrupt_once_raises_once_then_ignores_and_restores() -> None:
    import os
    import signal

    before = signal.getsignal(signal.SIGINT)
    with interrupt_once():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGINT)  # ignored while cleaning up
        time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_worker_with_nothing_to_claim_looks_again_soon_then_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a study's end the last trials of other workers usually end within a second: the waiting worker must
    notice at once (the run ends with it), yet not poll the storage faster than once a second for long."""
    import searchlab.worker as worker

    answers = iter(["wait"] * 6 + ["done"])
    slept: list[float] = []
    monkeypatch.setattr(worker, "claim", lambda study, lock, worker: next(answers))
    monkeypatch.setattr(worker.time, "sleep", slept.append)
    reaped: list[int] = []
    search(
        optuna.create_study(),
        lambda trial: 0.0,
        lock=contextlib.nullcontext,
        deadline=None,
        heartbeat=60,
        reap=lambda: reaped.append(1),
        on_trial_end=lambda trial: None,
    )
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert len(reaped) == 7  # dead workers' trials are looked for on every wait


@pytest.mark.parametrize(("tracking_uri", "loaded"), [("sqlite:///mlflow.db", True), ("http://127.0.0.1:9", False)])
def test_a_worker_gets_mlflows_sql_store_ready_before_its_run_starts_when_it_tracks_to_one(
    tmp_path: Path, tracking_uri: str, loaded: bool
) -> None:
    # Its import took ~0.7 s here and 2-3 s on a GPU host, after the go; the default store is sqlite.
    study = write_study(tmp_path)
    code = (
        "import sys\nfrom searchlab.config import resolve_config\nfrom searchlab.study import load_study_file\n"
        "from searchlab.pool import prepare_worker\n"
        f"config = resolve_config(load_study_file({str(study)!r}), {{'tracking_uri': {tracking_uri!r}}})\n"
        f"prepare_worker({str(study)!r}, config)\n"
        "print('mlflow.store.tracking.sqlalchemy_store' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(loaded)]


def test_trials_run_with_the_loaded_objects_left_out_of_garbage_collections(workdir: Path) -> None:
    """A full collection would walk everything torch, MLflow and Optuna loaded, several times a search; the trials
    run with those objects frozen, and they are given back after the run."""
    import gc

    from searchlab.config import resolve_config
    from searchlab.lifecycle import run_study
    from searchlab.study import load_study_file

    body = """    import gc
    globals().setdefault("FROZEN", []).append(gc.get_freeze_count())
    return nn.Linear(4, 1)"""
    study = load_study_file(str(write_study(workdir, body=body)))
    gc.unfreeze()
    run_study(
        study,
        resolve_config(study, {"n_trials": 2, "workers": "1", "devices": "cpu"}, env={}),
        check=False,
        progress=False,
    )
    frozen = study.model.__globals__["FROZEN"][-2:]  # the trials' models (the first one built is the preflight's)
    assert min(frozen) > 50_000  # torch alone tracks more
    assert gc.get_freeze_count() == 0


def test_objects_the_process_froze_itself_stay_frozen() -> None:
    import gc

    gc.unfreeze()
    with loaded_objects_frozen():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # e.g. a program that freezes its objects before it forks
    try:
        frozen = gc.get_freeze_count()
        with loaded_objects_frozen():
            pass
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def read_until(process: subprocess.Popen, text: str, lines: list[str], timeout: float = 240) -> None:
    """Collect the process's output lines until one holds ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line or process.poll() is None, "".join(lines)
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} in: {''.join(lines)}")


def test_a_waiting_worker_joins_each_run_of_its_study_and_stops_cleanly(workdir: Path) -> None:
    path = write_study(workdir, max_epochs=30, patience=30)
    process = subprocess.Popen(
        [SEARCHLAB, "worker", str(path), "--wait", "--poll", "0.2"],
        cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        read_until(process, "waiting for study 'tiny' in searchlab.journal: no 'searchlab run'", lines)
        runs = []
        for _ in range(2):  # two runs, as two nights: the worker joins each
            assert CliRunner().invoke(main, ["run", str(path), "--trials", "4", "--no-report"]).exit_code == 0
            study = optuna.load_study(study_name="tiny", storage=open_storage(None))
            runs.append(study.user_attrs[PARENT_RUN_ATTR])
            read_until(process, f"run {runs[-1]}: ", lines)
            assert "waiting for the next run of study 'tiny'" in lines[-1]
        assert [line.strip() for line in lines if line.startswith("joining")] == [
            f"joining run {run} of study 'tiny'" for run in runs
        ]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130, "".join(lines)
    finally:
        process.kill()
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert len(study.trials) == 8 and all(trial.state.is_finished() for trial in study.trials)

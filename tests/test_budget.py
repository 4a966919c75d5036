"""The exact trial budget: counting, retries, claiming, and the cross-process lock on journal and PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from searchlab.budget import Counts, budget_lock, claim, count, has_room, retry_trial, run_counts, set_budget
from searchlab.locks import file_lock
from searchlab.settings import BUDGET_ATTR, BUDGET_FROM_ATTR
from searchlab.storage import open_storage, uncached

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = {"lr": 0.01, "width": 8}
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1.0, log=True), "width": IntDistribution(4, 16)}


def new_study(budget: int | None = None) -> optuna.Study:
    study = optuna.create_study()
    if budget is not None:
        study.set_user_attr(BUDGET_ATTR, budget)
    return study


def add(study: optuna.Study, state: TrialState, **kwargs: object) -> optuna.trial.FrozenTrial:
    values = {"value": 1.0} if state == TrialState.COMPLETE else {}
    study.add_trial(create_trial(state=state, params=PARAMS, distributions=DISTRIBUTIONS, **values, **kwargs))
    return study.get_trials(deepcopy=False)[-1]


def test_finished_trials_are_final_running_ones_claimed_and_waiting_ones_count_once_claimed() -> None:
    study = new_study()
    study.ask()  # RUNNING (asked first: ask would pop the WAITING trial)
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING):
        add(study, state)
    counts = count(study.get_trials())
    assert counts == Counts(final=3, running=1, waiting=1)
    assert counts.claimed == 4


def test_a_retried_failure_counts_once_through_its_retry() -> None:
    study = new_study()
    failed = add(study, TrialState.FAIL)
    assert retry_trial(study, failed, max_retries=1)
    assert count(study.get_trials()) == Counts(final=0, running=0, waiting=1)
    retry = study.ask()
    study.tell(retry, state=TrialState.FAIL)  # the retry fails too, with no retry left: now it is final
    assert not retry_trial(study, study.trials[retry.number], max_retries=1)
    assert count(study.get_trials()) == Counts(final=1, running=0, waiting=0)


def test_runs_count_only_their_own_trials_and_agree_with_a_count_of_all() -> None:
    """Each run counts the trials below its first once (from where the previous run stopped), then only its own: the
    same counts as reading the whole study, a retry crossing the runs' boundary included; on PostgreSQL, a claim
    never reads the whole study."""
    storage = open_storage(POSTGRES_URL)
    study = optuna.create_study(storage=storage, study_name=f"runs-{uuid.uuid4().hex}")
    try:
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            add(study, state)
        set_budget(study, 3, n_trials=2)
        assert study.user_attrs[BUDGET_FROM_ATTR] == [3, 3] and study.user_attrs[BUDGET_ATTR] == 5
        running = study.ask()  # the first run's worker dies with its trial RUNNING
        add(study, TrialState.COMPLETE)

        # The next run: its recovery fails the dead trial and enqueues its retry, one of the new run's trials.
        first = len(study.trials)
        study.tell(running, state=TrialState.FAIL)
        assert retry_trial(study, study.trials[running.number], max_retries=1)
        set_budget(study, first, n_trials=3)
        assert study.user_attrs[BUDGET_FROM_ATTR] == [first, 4]  # the failed trial counts through its retry only
        whole_reads: list[object] = []  # queries of every trial, finished ones included
        storage = open_storage(POSTGRES_URL)  # a worker's process, which has read nothing yet
        study = uncached(optuna.load_study(study_name=study.study_name, storage=storage))
        query = storage._get_trials  # what Optuna's cached storage and get_all_trials read with

        def spy(study_id: int, states: object, included_trial_ids: set, trial_id_greater_than: int) -> object:
            everything = trial_id_greater_than == -1 and not included_trial_ids
            if everything and (states is None or TrialState.COMPLETE in states):  # type: ignore[operator]
                whole_reads.append(states)
            return query(study_id, states, included_trial_ids, trial_id_greater_than)

        storage._get_trials = spy  # type: ignore[method-assign]
        assert run_counts(study) == Counts(final=4, running=0, waiting=1)
        taken = [claim(study, contextlib.nullcontext, worker="w") for _ in range(3)]
        assert not has_room(study)
        assert whole_reads == []
        storage._get_trials = query  # type: ignore[method-assign]
        assert taken[0].number == first  # the retry first
        assert run_counts(study) == count(study.get_trials()) == Counts(final=4, running=3, waiting=0)
    finally:
        optuna.delete_study(study_name=study.study_name, storage=storage)
        storage.engine.dispose()


def test_no_retries_means_no_retry() -> None:
    study = new_study()
    assert not retry_trial(study, add(study, TrialState.FAIL), max_retries=0)
    assert len(study.trials) == 1


def test_a_retry_of_a_retry_is_refused_at_one_retry() -> None:
    study = new_study()
    assert retry_trial(study, add(study, TrialState.FAIL), max_retries=1)
    retry = study.ask()
    study.tell(retry, state=TrialState.FAIL)
    assert not retry_trial(study, study.trials[retry.number], max_retries=1)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


def test_two_retries_allow_a_retry_of_the_retry_with_its_history() -> None:
    study = new_study()
    assert retry_trial(study, add(study, TrialState.FAIL), max_retries=2)
    retry = study.ask()
    study.tell(retry, state=TrialState.FAIL)
    assert retry_trial(study, study.trials[retry.number], max_retries=2)
    second = study.trials[-1]
    assert second.system_attrs["failed_trial"] == 0 and second.system_attrs["retry_history"] == [0, 1]


def test_a_retry_copies_params_but_not_user_attrs_and_names_the_trial_it_resumes() -> None:
    study = new_study()
    failed = add(study, TrialState.FAIL, user_attrs={"mlflow_run_id": "abc", "fail_reason": "boom"})
    assert retry_trial(study, failed, max_retries=1)
    retry = study.trials[-1]
    assert retry.state == TrialState.WAITING
    assert retry.params == PARAMS and retry.distributions == DISTRIBUTIONS
    assert retry.user_attrs == {"resumes": failed.number}
    assert retry.system_attrs["failed_trial"] == failed.number
    assert retry.system_attrs["retry_history"] == [failed.number]


def test_a_claimed_retry_runs_with_the_failed_params() -> None:
    study = new_study(budget=1)
    assert retry_trial(study, add(study, TrialState.FAIL), max_retries=1)
    trial = claim(study, contextlib.nullcontext, worker="w")
    assert isinstance(trial, optuna.Trial)
    assert trial.suggest_float("lr", 1e-4, 1.0, log=True) == PARAMS["lr"]
    assert trial.suggest_int("width", 4, 16) == PARAMS["width"]


def test_claim_stops_at_the_budget_then_waits_for_running_trials() -> None:
    study = new_study(budget=3)
    trials = [claim(study, contextlib.nullcontext, worker="host:1") for _ in range(3)]
    assert all(isinstance(trial, optuna.Trial) for trial in trials)
    assert [t.user_attrs["worker"] for t in study.trials] == ["host:1"] * 3
    assert count(study.get_trials()).claimed == 3
    assert claim(study, contextlib.nullcontext, worker="host:1") == "wait"
    for trial in trials[:2]:
        study.tell(trial, 1.0)
    assert claim(study, contextlib.nullcontext, worker="host:1") == "wait"
    study.tell(trials[2], 1.0)
    assert claim(study, contextlib.nullcontext, worker="host:1") == "done"
    assert len(study.trials) == 3


def test_a_study_without_a_budget_is_done() -> None:
    assert claim(new_study(), contextlib.nullcontext, worker="w") == "done"


def test_enqueued_trials_are_claimed_first_and_within_the_budget_as_in_optunas_n_trials() -> None:
    study = new_study(budget=2)
    add(study, TrialState.COMPLETE)
    study.enqueue_trial(PARAMS)
    study.enqueue_trial(PARAMS)
    trial = claim(study, contextlib.nullcontext, worker="w")
    assert isinstance(trial, optuna.Trial) and trial.number == 1, "the oldest enqueued trial goes first"
    assert study.trials[1].state == TrialState.RUNNING and study.trials[1].user_attrs["worker"] == "w"
    study.tell(trial, 1.0)
    assert claim(study, contextlib.nullcontext, worker="w") == "done", "the budget is met: one trial stays enqueued"
    assert study.trials[2].state == TrialState.WAITING


def test_budget_lock_files_sit_next_to_the_storage_while_held_and_are_gone_after(workdir: Path) -> None:
    held = set()
    for url in (str(workdir / "s.journal"), f"sqlite:///{workdir / 's.db'}", None):
        with budget_lock(url, None, "s")():
            held |= {p.name for p in workdir.iterdir()}
    assert held == {"s.journal.budget-lock", "s.db.budget-lock", "searchlab.journal.budget-lock"}
    assert list(workdir.iterdir()) == [], "a lock file left in the user's working folder"
    assert budget_lock("mysql://u@h/db", None, "s") is contextlib.nullcontext


def test_a_lock_file_left_by_a_killed_holder_is_ignored_by_git() -> None:
    """kill -9 while a lock is held leaves its file: the repository's .gitignore ignores it."""
    root = Path(__file__).resolve().parent.parent
    names = ["searchlab.journal.budget-lock", "mlflow.db.budget-lock", "searchlab.journal.regression.nightly-lock"]
    ignored = subprocess.run(["git", "check-ignore", *names], cwd=root, capture_output=True, text=True)
    assert ignored.stdout.split() == names


def test_a_waiter_on_a_removed_lock_file_takes_the_new_one(tmp_path: Path) -> None:
    """The holder removes the file as it lets go: a process that was waiting on it must not hold that removed file
    while another locks the path's new one (threads arriving at random times, each taking the lock many times)."""
    path = tmp_path / "s.journal.budget-lock"
    inside, taken, overlaps = threading.Lock(), [], []

    def take(name: int) -> None:
        chance = random.Random(name)
        for _ in range(40):
            time.sleep(chance.uniform(0, 0.003))
            with file_lock(path):
                if not inside.acquire(blocking=False):
                    overlaps.append(name)
                    continue
                taken.append(name)
                time.sleep(chance.uniform(0, 0.002))
                inside.release()

    threads = [threading.Thread(target=take, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [] and len(taken) == 240 and not path.exists()


HOLDER = """
import sys
from searchlab.budget import budget_lock
from searchlab.storage import is_database_url, open_storage
url, name = sys.argv[1:]
with budget_lock(url, open_storage(url) if is_database_url(url) else None, name)():
    print("held", flush=True)
    sys.stdin.read()
"""


def test_the_file_lock_excludes_other_processes(tmp_path: Path) -> None:
    journal = str(tmp_path / "s.journal")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, journal, "s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with open(journal + ".budget-lock", "a") as handle:
            with pytest.raises(BlockingIOError):
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            holder.stdin.close()
            assert holder.wait(timeout=10) == 0
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the holder is gone
    finally:
        holder.kill()
        holder.wait()


CLAIMER = """
import os, sys, time
import optuna
from searchlab.budget import budget_lock, claim
from searchlab.storage import open_storage, uncached
url, name, go = sys.argv[1:]
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(url)
study = optuna.load_study(study_name=name, storage=storage)
lock = budget_lock(url, storage, name)
while not os.path.exists(go):
    time.sleep(0.005)
while True:
    trial = claim(study, lock, worker=str(os.getpid()))
    if trial == "done":
        break
    if trial == "wait":
        time.sleep(0.005)
        continue
    study.tell(trial, 1.0)
"""


RACE_BUDGET = 40  # without the lock, four racing workers overshoot this by a few trials nearly every time


def race_claimers(url: str, name: str, folder: Path, processes: int = 4) -> list[int]:
    """``processes`` workers claim from the study as fast as they can, all starting at once; their pids."""
    go = folder / f"go-{name}"
    workers = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, name, str(go)]) for _ in range(processes)]
    try:
        go.touch()
        assert [worker.wait(timeout=60) for worker in workers] == [0] * processes
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    return [worker.pid for worker in workers]


def assert_exact(study: optuna.Study, budget: int, pids: list[int]) -> None:
    trials = study.get_trials()
    assert len(trials) == budget
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert {t.user_attrs["worker"] for t in trials} <= {str(pid) for pid in pids}


def test_parallel_claims_meet_the_budget_exactly_on_a_journal(tmp_path: Path) -> None:
    url = str(tmp_path / "searchlab.journal")
    study = optuna.create_study(study_name="race", storage=open_storage(url))
    study.set_user_attr(BUDGET_ATTR, RACE_BUDGET)
    pids = race_claimers(url, "race", tmp_path)
    assert_exact(optuna.load_study(study_name="race", storage=open_storage(url)), RACE_BUDGET, pids)


def test_parallel_claims_meet_the_budget_exactly_on_postgresql(tmp_path: Path) -> None:
    name = f"race-{uuid.uuid4().hex}"
    storage = open_storage(POSTGRES_URL)
    study = optuna.create_study(study_name=name, storage=storage)
    try:
        study.set_user_attr(BUDGET_ATTR, RACE_BUDGET)
        pids = race_claimers(POSTGRES_URL, name, tmp_path)
        assert_exact(optuna.load_study(study_name=name, storage=storage), RACE_BUDGET, pids)
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_the_postgresql_lock_excludes_other_sessions_of_the_same_study() -> None:
    name = f"lock-{uuid.uuid4().hex}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, POSTGRES_URL, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        storage = open_storage(POSTGRES_URL)
        with budget_lock(POSTGRES_URL, storage, f"other-{name}")():
            pass  # another study's lock is free
        acquired = threading.Event()

        def take() -> None:
            with budget_lock(POSTGRES_URL, storage, name)():
                acquired.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not acquired.wait(0.5)
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
        assert acquired.wait(10)
        waiter.join(10)
    finally:
        holder.kill()
        holder.wait()

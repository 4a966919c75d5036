"""The study's trial budget, exact across workers: claim a trial only while the budget has room.

A trial counts once a worker claims it (RUNNING) or once it is final (COMPLETE, PRUNED, or FAIL with no retry left).
A failed trial that was retried counts once, through its retry. An enqueued (WAITING) trial counts when it is claimed,
so that enqueued trials are among a run's ``--trials``, as in Optuna's ``study.optimize(n_trials=...)``. The trials
numbered below the run's first are counted once, when the run starts (``BUDGET_FROM_ATTR``): a claim reads the run's
trials only, however long the study's history. Counting and asking happen under one lock shared by every worker of
the study (a file lock next to a journal or sqlite file, a PostgreSQL advisory lock), so that two workers never both
take the last trial.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.locks import advisory_lock, file_lock, lock_key
from searchlab.settings import BUDGET_ATTR, BUDGET_FROM_ATTR, PACK_ATTR, RESUMES_ATTR, WORKER
from searchlab.storage import DEFAULT_JOURNAL, local_file
from searchlab.window import count_trials, study_attr, trials_since

# what claim() says when it gives no trial
WAIT: Final = "wait"
DONE: Final = "done"


@dataclass(frozen=True)
class Counts:
    final: int
    running: int
    waiting: int

    @property
    def claimed(self) -> int:
        """What counts against the budget: final and running trials (a waiting one counts once claimed)."""
        return self.final + self.running


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that have a retry (see ``retry_trial``)."""
    return {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}


def count(trials: list[FrozenTrial], retried: set[int] | None = None) -> Counts:
    """``retried``: the failed trials that have a retry, when it may be among trials not in ``trials``."""
    retried = retried_numbers(trials) if retried is None else retried
    final = sum(
        1
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.number not in retried)
    )
    return Counts(
        final, sum(t.state == TrialState.RUNNING for t in trials), sum(t.state == TrialState.WAITING for t in trials)
    )


def can_retry(failed: FrozenTrial, max_retries: float) -> bool:
    """Whether the failed trial has a retry left (see ``retry_trial``)."""
    return len(failed.system_attrs.get("retry_history", [])) < max_retries


def retry_trial(study: optuna.Study, failed: FrozenTrial, max_retries: float) -> bool:
    """Enqueue the failed trial's parameters again, unless it has used its retries; True when enqueued.

    Like Optuna's RetryFailedTrialCallback (same ``failed_trial``/``retry_history`` system attributes), but the
    retry does not inherit the dead trial's user attributes (its MLflow run id, seed and failure reason): it names
    the trial it resumes (RESUMES_ATTR), whose seed, run and checkpoint it takes up.
    """
    if not can_retry(failed, max_retries):
        return False
    history = [*failed.system_attrs.get("retry_history", []), failed.number]
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=failed.params,
            distributions=failed.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history},
            user_attrs={RESUMES_ATTR: failed.number},
        )
    )
    return True


def budget_lock(url: str | None, storage: Any, study_name: str) -> Callable[[], AbstractContextManager[None]]:
    """A factory of the lock every worker of this study takes around count-and-ask."""
    url = url or DEFAULT_JOURNAL
    if url.startswith(("postgresql", "postgres")):
        key = lock_key(f"searchlab:{study_name}")
        return lambda: advisory_lock(storage.engine, key)
    path = local_file(url)
    if path is not None:
        return lambda: file_lock(path.with_name(path.name + ".budget-lock"))
    return contextlib.nullcontext  # other databases: no cross-worker lock; the budget may overshoot by a few


def first_open(study: optuna.Study) -> int:
    """Where a run's trials start: the oldest trial still waiting or running (the run may claim it, or fail and retry
    it), else the next trial's number."""
    open_trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    return min([count_trials(study), *(trial.number for trial in open_trials)])


def set_budget(study: optuna.Study, first: int, n_trials: int) -> None:
    """Give the run that starts with trial ``first`` room for ``n_trials`` counted trials. The trials below ``first``
    are counted here, from where the previous run's count stopped: they changed only up to this run's start (its
    recovery fails and retries what earlier runs left RUNNING)."""
    earlier_first, earlier_counted = study_attr(study, BUDGET_FROM_ATTR, (0, 0))
    read = trials_since(study, min(earlier_first, first))  # one read: the trials to count and the run's own
    retried = retried_numbers([t for t in read if t.number >= earlier_first])
    counted = earlier_counted + count([t for t in read if earlier_first <= t.number < first], retried).claimed
    run = count([t for t in read if t.number >= first], retried)
    study.set_user_attr(BUDGET_FROM_ATTR, [first, counted])
    study.set_user_attr(BUDGET_ATTR, counted + run.claimed + n_trials)


def run_counts(study: optuna.Study) -> Counts:
    """The counts of the run's trials, those below its first trial counted as final (see ``set_budget``)."""
    first, counted = study_attr(study, BUDGET_FROM_ATTR, (0, 0))
    run = count(trials_since(study, first))
    return Counts(counted + run.final, run.running, run.waiting)


def has_room(study: optuna.Study) -> bool:
    """Whether a worker may claim a trial now (an enqueued one first: ``ask`` takes the oldest waiting trial)."""
    return run_counts(study).claimed < study_attr(study, BUDGET_ATTR, 0)


def _ask(study: optuna.Study, worker: str) -> optuna.Trial:
    """A new (or the oldest waiting) trial, marked as ``worker``'s."""
    with warnings.catch_warnings():  # the search loop sends the heartbeats Study.optimize would
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    trial.set_user_attr(WORKER, worker)
    return trial


def claim(
    study: optuna.Study, lock: Callable[[], AbstractContextManager[None]], *, worker: str
) -> optuna.Trial | Literal["wait", "done"]:
    """A new or enqueued trial to run, marked as ``worker``'s; or WAIT (others still run trials that may fail and be
    retried), or DONE (the budget is met)."""
    with lock():
        if has_room(study):
            return _ask(study, worker)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return WAIT if running else DONE


def claim_members(
    study: optuna.Study,
    lock: Callable[[], AbstractContextManager[None]],
    *,
    worker: str,
    shared: dict[str, Any],
    n: int,
    first: int,
) -> list[optuna.Trial]:
    """Up to ``n`` more trials for the pack that trial ``first`` starts, within the budget: each is enqueued with the
    pack's ``shared`` params (the sampler chooses the rest) and asked at once, under the budget lock, so that no
    other worker takes it. None while other trials wait (retries go first, each in a pack of its own). A claim that
    fails half-way fails the trials it took: none is left RUNNING."""
    members: list[optuna.Trial] = []
    with lock():
        counts = run_counts(study)
        room = 0 if counts.waiting else study_attr(study, BUDGET_ATTR, 0) - counts.claimed
        try:
            for _ in range(max(0, min(n, room))):
                study.enqueue_trial(shared, user_attrs={PACK_ATTR: {"first": first}})
                members.append(_ask(study, worker))
        except BaseException:
            for trial in members:
                with contextlib.suppress(Exception):
                    study.tell(trial, state=TrialState.FAIL)
            raise
    return members

"""Trials whose worker died: found (dead local process, or no heartbeat), failed, retried, their runs closed.

On every storage, a RUNNING trial records its worker as ``host:pid``; a trial of this host whose process is gone
is dead. On database storages, workers also send heartbeats, and a trial whose heartbeat is older than the grace
period is stale wherever its worker ran. Either way the trial is failed with the reason, its parameters are
enqueued again (``--retries``), and its MLflow run is closed as KILLED with the curves it had sent.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.budget import can_retry, retry_trial
from searchlab.settings import FAIL_REASON_ATTR, RUN_ID_ATTR, WORKER
from searchlab.unsent import process_alive
from searchlab.window import trial_numbered


def worker_name(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def is_dead_local_worker(name: str) -> bool:
    """True for ``host:pid`` of this host whose process is gone (unknown or other hosts: False)."""
    host, _, pid = name.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def dead_local_trials(study: optuna.Study, pids: set[int] | None = None) -> list[FrozenTrial]:
    """RUNNING trials of this host whose worker process is gone (or, given ``pids``, is one of those)."""
    named = None if pids is None else {worker_name(pid) for pid in pids}

    def dead(name: str) -> bool:
        return is_dead_local_worker(name) if named is None else name in named

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [trial for trial in running if dead(str(trial.user_attrs.get(WORKER, "")))]


def ended_trial(study: optuna.Study, number: int) -> FrozenTrial | None:
    """Trial ``number`` when it completed or was pruned (a dead worker's run of it closes as it ended), else None."""
    try:
        trial = trial_numbered(study, number)
    except KeyError:
        return None
    return trial if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None


def recover(study: optuna.Study, trial: FrozenTrial, reason: str, *, retries: int, tracker: Any) -> None:
    """Fail a dead worker's trial (if still RUNNING), close its MLflow run as KILLED, and retry it.

    The run is closed before the retry is enqueued (the retry reopens it), and the retry is enqueued before the trial
    is failed, so that no worker ever counts the budget as met in between.
    """
    if trial.state == TrialState.RUNNING:
        try:
            optuna.Trial(study, trial._trial_id).set_user_attr(FAIL_REASON_ATTR, reason)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return  # another process got there first
    retried = can_retry(trial, retries)
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if run_id is not None and tracker is not None:
        with contextlib.suppress(ConnectionError):  # unreachable: the next run closes it (close_dead_runs)
            tracker.close_dead_run(run_id, reason=reason, retried=retried, params=trial.params)
    if retried:
        retry_trial(study, trial, retries)
    if trial.state == TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)


def reap_dead_local_trials(
    study: optuna.Study,
    *,
    retries: int,
    tracker: Any,
    lock: Callable[[], Any],
    pids: set[int] | None = None,
    reason: str = "its worker process died",
) -> list[int]:
    """Recover every dead local trial, under the study's budget lock (so that two reapers never retry the same
    trial, and no claim counts in between); returns their numbers."""
    with lock():
        dead = dead_local_trials(study, pids)
        for trial in dead:
            recover(study, trial, reason, retries=retries, tracker=tracker)
    return [trial.number for trial in dead]


def stale_trial_callback(retries: int, tracker: Any, grace: int) -> Any:
    """For ``RDBStorage(heartbeat_stale_trial_callback=...)``: Optuna has failed the trial; retry and close it."""

    def on_stale(study: optuna.Study, trial: FrozenTrial) -> None:
        recover(
            study, trial, f"its worker stopped sending heartbeats for over {grace}s", retries=retries, tracker=tracker
        )

    return on_stale

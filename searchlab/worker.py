"""One worker: open the stores, then the one search loop (claim → objective → tell) until the budget is met.

The same worker runs inside ``searchlab run`` (one worker), in each process the worker pool starts (several), and
in ``searchlab worker`` on any host that reaches the study's storage (``join_study``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import optuna
import torch
from optuna.trial import FrozenTrial

from searchlab.budget import DONE, WAIT, budget_lock, claim, claim_members
from searchlab.catalog import make_pruner, make_sampler
from searchlab.config import RunConfig, RunStarted, TrialSettings
from searchlab.devices import Slot
from searchlab.endpoints import check_tracking_uri
from searchlab.errors import ConfigError
from searchlab.objective import Objective
from searchlab.outcome import run_trial
from searchlab.packing import PackRun
from searchlab.preparation import Prepared, plan_slots, prepare
from searchlab.recovery import reap_dead_local_trials, stale_trial_callback, worker_name
from searchlab.sender import BackgroundTracker
from searchlab.settings import BUDGET_ATTR, EXPERIMENT_ATTR, PARENT_RUN_ATTR, RUN_SETTINGS_ATTR
from searchlab.signals import interrupt_once
from searchlab.storage import (
    Heartbeat,
    close_storage,
    describe,
    has_heartbeats,
    load_existing_study,
    local_file,
    open_storage,
    opened_storage,
    uncached,
)
from searchlab.study import Study
from searchlab.tracking import MlflowTracker
from searchlab.unsent import resend_unsent
from searchlab.window import TrialSeededSampler, windowed_pruner

TRIAL_FLUSH_SECONDS = 2.0  # how often a training trial's curves are sent: a killed trial loses at most this much


WAIT_FIRST_SECONDS, WAIT_MAX_SECONDS = 0.05, 1.0  # how often a worker with nothing to claim looks again


def search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    lock: Any,
    deadline: float | None,
    heartbeat: int,
    reap: Callable[[], None],
    on_trial_end: Callable[[FrozenTrial], None],
    pack: int = 1,
) -> None:
    """The one search loop: claim a trial while the budget has room, run it, tell it; stop at the deadline.
    With ``pack`` > 1 (and an Objective), claim up to that many trials at once and train them as a pack.

    While other workers still run the last trials, wait (and recover dead ones): a retry may come back.
    """
    me = worker_name()
    pause = WAIT_FIRST_SECONDS
    while deadline is None or time.time() < deadline:
        reap()  # Optuna fails stale trials only when a worker starts one: do it on every claim and every wait
        trial = claim(study, lock, worker=me)
        if trial == DONE:
            return
        if trial == WAIT:  # soon again (the last trials usually end within a second), then once a second
            time.sleep(pause)
            pause = min(2 * pause, WAIT_MAX_SECONDS)
            continue
        pause = WAIT_FIRST_SECONDS
        if pack > 1 and isinstance(objective, Objective):

            def claim_more(shared: dict[str, Any], n: int, first: int) -> list[optuna.Trial]:
                return claim_members(study, lock, worker=me, shared=shared, n=n, first=first)

            PackRun(study, objective, heartbeat=heartbeat, on_trial_end=on_trial_end).run(trial, pack, claim_more)
            release_device_memory()
            continue
        with Heartbeat(study._storage, trial._trial_id, heartbeat):
            frozen = run_trial(study, trial, objective)
        release_device_memory()
        on_trial_end(frozen)


def release_device_memory() -> None:
    """Give cached GPU memory back between trials, so a worker's footprint does not grow."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_worker(
    study: Study,
    config: RunConfig,
    slot: Slot,
    run: RunStarted,
    *,
    prepared: Prepared | None = None,
    on_trial_end: Callable[[FrozenTrial], None] = lambda trial: None,
) -> None:
    """Join the study in ``config.storage`` and run trials on ``slot`` until its budget is met or ``run``'s deadline
    passes. ``prepared`` (the split and starting weights) is loaded here when not given."""
    torch.set_num_threads(slot.threads)
    importlib.import_module("torch._dynamo")  # the first optimizer step imports it: at start-up, not in a trial
    prepared = prepared or prepare(study, config, preflight=False)
    tracker = MlflowTracker(config.tracking_uri, retry_seconds=config.tracking_wait)
    on_stale = stale_trial_callback(config.retries, tracker, 3 * config.heartbeat)
    storage = open_storage(config.storage, heartbeat=config.heartbeat, on_stale=on_stale)
    optuna_study = uncached(optuna.load_study(study_name=config.study_name, storage=storage))
    optuna_study.sampler = TrialSeededSampler(lambda number: make_sampler(config.sampler, config.seed, number))
    optuna_study.pruner = windowed_pruner(make_pruner(config.pruner, config.max_epochs))
    lock = budget_lock(config.storage, storage, config.study_name)

    def reap() -> None:
        if has_heartbeats(storage):  # database storages: fail trials whose worker stopped beating, anywhere
            with lock(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(optuna_study)
        reap_dead_local_trials(optuna_study, retries=config.retries, tracker=tracker, lock=lock)

    # The trials' runs are tracked by a sender thread of their own; leaving, it sends what is queued and closes
    # every run (also on Ctrl-C and on errors), before the caller publishes or closes the parent run.
    trial_runs = MlflowTracker(config.tracking_uri, flush_seconds=TRIAL_FLUSH_SECONDS)
    try:
        with BackgroundTracker(trial_runs, wait=config.tracking_wait) as trial_tracker, loaded_objects_frozen():
            objective = Objective(
                study, prepared.train, prepared.val, trial_tracker, TrialSettings.of(config, run), slot, prepared.start
            )
            search(
                optuna_study,
                objective,
                lock=lock,
                deadline=run.deadline,
                heartbeat=config.heartbeat,
                reap=reap,
                on_trial_end=on_trial_end,
                pack=config.pack,
            )
    finally:
        close_storage(storage)


def started(attrs: dict[str, Any]) -> bool:
    """Whether a study's user attributes hold what a run records for the workers joining it."""
    return all(key in attrs for key in (BUDGET_ATTR, EXPERIMENT_ATTR, PARENT_RUN_ATTR, RUN_SETTINGS_ATTR))


def join_study(study: Study, config: RunConfig) -> int:
    """Run one worker on a study that ``searchlab run`` started; returns how many trials it finished."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_tracking_uri(config.tracking_uri)
    resend_unsent(config.tracking_uri, wait=config.tracking_wait)  # what this host's earlier workers left
    attrs = load_existing_study(config.storage, config.study_name).user_attrs
    if not started(attrs):
        raise ConfigError(f"study {config.study_name!r} was not started by 'searchlab run': start it there first")
    config = dataclasses.replace(config, **attrs[RUN_SETTINGS_ATTR])  # the same seed, budget and pruner as the run
    prepared = prepare(study, config)
    (slot,) = plan_slots(dataclasses.replace(config, workers="1"))
    run = RunStarted(
        attrs[EXPERIMENT_ATTR], attrs[PARENT_RUN_ATTR], None if config.timeout is None else time.time() + config.timeout
    )
    finished: list[FrozenTrial] = []
    with interrupt_once():
        run_worker(study, config, slot, run, prepared=prepared, on_trial_end=finished.append)
    return len(finished)


def started_run(config: RunConfig) -> str | None:
    """The parent run of the study's latest ``searchlab run`` (or night); None while none has started it."""
    path = local_file(config.storage)
    if path is not None and not path.is_file():
        return None
    with opened_storage(config.storage, writes=False) as storage:
        if config.study_name not in optuna.get_all_study_names(storage):
            return None
        attrs = optuna.load_study(study_name=config.study_name, storage=storage).user_attrs
    return str(attrs[PARENT_RUN_ATTR]) if started(attrs) else None


def join_every_run(study: Study, config: RunConfig, *, poll: float, say: Callable[[str], None]) -> NoReturn:
    """Wait for each run of the study (``searchlab run``, or each night) and join it, until stopped (Ctrl-C or
    SIGTERM raise KeyboardInterrupt): a worker that can start before its study, as ``wandb agent`` does."""
    name, where = config.study_name, describe(config.storage)
    joined: str | None = None
    told = False
    with interrupt_once():
        while True:
            run = started_run(config)
            if run is not None and run != joined:
                say(f"joining run {run} of study {name!r}")
                finished = join_study(study, config)
                say(f"run {run}: {finished} trial(s) finished here; waiting for the next run of study {name!r}")
                joined = run
            elif run is None and not told:
                say(f"waiting for study {name!r} in {where}: no 'searchlab run' or 'searchlab nightly' has started it "
                    f"yet (looking every {poll:g} s)")  # fmt: skip
                told = True
            time.sleep(poll)


@contextlib.contextmanager
def loaded_objects_frozen() -> Iterator[None]:
    """Leave the objects loaded so far (torch, MLflow, Optuna, the data: hundreds of thousands) out of Python's cyclic
    garbage collections while the trials run, and give them back after (unless the process had frozen objects of
    its own): a full collection walks every object it tracks, a cost every few trials. Objects made later, the
    trials' own, are collected as usual (the overhead benchmark's notes have the figures)."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()

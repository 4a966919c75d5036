"""One worker: open the stores, then the one search loop (claim → objective → tell) until the budget is met.

The same worker runs inside ``searchlab run`` (one worker), in each process it spawns (several), and in
``searchlab worker`` on any host that reaches the study's storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.budget import budget_lock, claim
from searchlab.config import RunConfig
from searchlab.devices import Slot
from searchlab.errors import ConfigError, RunFailed, TrialStopped, describe_error
from searchlab.recovery import reap_dead_local_trials, stale_trial_callback, worker_name
from searchlab.storage import SYNCER, Heartbeat, has_heartbeats, is_database_url, open_storage
from searchlab.study import Study, load_study_file

EXPERIMENT_ATTR, PARENT_RUN_ATTR = "mlflow_experiment_id", "mlflow_parent_run_id"
# The run's settings that joining workers adopt (no URLs: those are each host's own).
RUN_SETTINGS_ATTR = "searchlab_run_settings"
RUN_SETTINGS = ("seed", "sampler", "pruner", "max_epochs", "patience", "retries", "heartbeat")
TRIAL_FLUSH_SECONDS = 2.0  # how often a training trial's curves are sent: a killed trial loses at most this much
INTERRUPTED = "interrupted (Ctrl-C)"
COORDINATOR_GONE = "stopped: its searchlab run died"


def make_sampler(name: str, seed: int, n_existing: int, worker: int = 0) -> optuna.samplers.BaseSampler:
    """A seeded sampler. Its seed also depends on the trials already in the study (a continued study does not
    replay the first invocation's samples) and on the worker (parallel workers do not sample alike)."""
    sampler_seed = int(np.random.SeedSequence([seed, n_existing, worker]).generate_state(1)[0])
    if name == "random":
        return optuna.samplers.RandomSampler(seed=sampler_seed)
    return optuna.samplers.TPESampler(seed=sampler_seed)


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``--pruner``, on the per-epoch validation loss (one epoch = one resource unit)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Run the objective on a claimed trial and tell the study how it ended; never leaves it RUNNING.

    A trial that raises is recorded FAIL with its reason; bad input and Ctrl-C also fail it, then propagate.
    """
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except (Exception, KeyboardInterrupt) as error:
        if isinstance(error, KeyboardInterrupt):
            reason = str(error) or INTERRUPTED
        else:
            reason = str(error) if isinstance(error, TrialStopped) else describe_error(error)
        trial.set_user_attr("fail_reason", reason)
        frozen = study.tell(trial, state=TrialState.FAIL)
        if isinstance(error, ConfigError | KeyboardInterrupt):
            raise
        return frozen
    return study.tell(trial, value)


WAIT_FIRST_SECONDS, WAIT_MAX_SECONDS = 0.05, 1.0  # how often a worker with nothing to claim looks again


def search(study: optuna.Study, objective: Callable[[optuna.Trial], float], *, lock: Any, deadline: float | None,
           heartbeat: int, reap: Callable[[], None], on_trial_end: Callable[[FrozenTrial], None]) -> None:
    """The one search loop: claim a trial while the budget has room, run it, tell it; stop at the deadline.

    While other workers still run the last trials, wait (and recover dead ones): a retry may come back.
    """
    me = worker_name()
    pause = WAIT_FIRST_SECONDS
    while deadline is None or time.time() < deadline:
        reap()  # Optuna fails stale trials only when a worker starts one: do it on every claim and every wait
        trial = claim(study, lock, worker=me)
        if trial == "done":
            return
        if trial == "wait":  # soon again (the last trials usually end within a second), then once a second
            time.sleep(pause)
            pause = min(2 * pause, WAIT_MAX_SECONDS)
            continue
        pause = WAIT_FIRST_SECONDS
        with Heartbeat(study._storage, trial._trial_id, heartbeat):
            frozen = run_trial(study, trial, objective)
        release_device_memory()
        on_trial_end(frozen)


def release_device_memory() -> None:
    """Give cached GPU memory back between trials, so a worker's footprint does not grow."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_worker(study: Study, config: RunConfig, slot: Slot, *, experiment_id: str, parent_run_id: str,
               deadline: float | None, worker_seed: int = 0, data: Any = None, start: Any = None,
               on_trial_end: Callable[[FrozenTrial], None] = lambda trial: None) -> None:
    """Join the study in ``config.storage`` and run trials on ``slot`` until its budget is met.

    ``data`` and ``start`` (the prepared split and starting weights) are loaded here when not given."""
    import torch

    from searchlab.execute import load_split, load_start_for
    from searchlab.objective import Objective
    from searchlab.sender import BackgroundTracker
    from searchlab.tracking import MlflowTracker

    torch.set_num_threads(slot.threads)
    import torch._dynamo  # the first optimizer step imports it (~1 s): start-up, not the first trial
    train_data, val_data = data or load_split(study, config.seed)
    start = start or load_start_for(study, config)
    tracker = MlflowTracker(config.tracking_uri, retry_seconds=config.tracking_wait)
    on_stale = stale_trial_callback(config.retries, tracker, 3 * config.heartbeat)
    storage = open_storage(config.storage, heartbeat=config.heartbeat, on_stale=on_stale)
    optuna_study = optuna.load_study(study_name=config.study_name, storage=storage)
    optuna_study.sampler = make_sampler(config.sampler, config.seed, len(optuna_study.trials), worker_seed)
    optuna_study.pruner = make_pruner(config.pruner, config.max_epochs)
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
    with BackgroundTracker(trial_runs, wait=config.tracking_wait) as trial_tracker, loaded_objects_frozen():
        objective = Objective(study, train_data, val_data, trial_tracker, experiment_id, parent_run_id, config.seed,
                              config.max_epochs, config.patience, slot,
                              {"study_name": config.study_name, "sampler": config.sampler, "pruner": config.pruner},
                              start)
        search(optuna_study, objective, lock=lock,
               deadline=deadline, heartbeat=config.heartbeat, reap=reap, on_trial_end=on_trial_end)


@contextlib.contextmanager
def loaded_objects_frozen() -> Iterator[None]:
    """Leave the objects loaded so far (torch, MLflow, Optuna, the data: ~500,000) out of Python's cyclic garbage
    collections while the trials run, and give them back after (unless the process had frozen objects of its own).
    A full collection walks every object it tracks, ~0.27 s each here: freezing saved ~0.3 s in the overhead
    benchmark's 19-second searches. Objects made later, the trials' own, are collected as usual."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


_stop_reason: list[str] = []  # why this process is being stopped, when it is not a Ctrl-C


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt (its message: why, when it is not a Ctrl-C); later ones
    are ignored, so that cleanup (failing the trial, closing its MLflow run) is not itself interrupted. Restores the
    previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}

    def handler(number: int, frame: Any) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        raise KeyboardInterrupt(*_stop_reason[:1])

    for number in signals:
        signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def prepare_worker(study_file: str, config: RunConfig) -> tuple[Study, Any, Any]:
    """What a worker process loads before its run starts: the study file, the study's data and starting weights,
    and the modules its first trial would import (seconds, overlapping the coordinator's own set-up)."""
    from searchlab.execute import load_split, load_start_for

    study = load_study_file(study_file)
    import mlflow  # the trial tracker's
    import torch._dynamo  # noqa: F401  (the first optimizer step's)

    if is_database_url(config.tracking_uri):  # MLflow's SQL store (the default sqlite one): seconds on some hosts
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    return study, load_split(study, config.seed), load_start_for(study, config)


def wait_for_go(orders: Any) -> dict[str, Any] | None:
    """The run's ids and deadline from the coordinator; None if the run stopped before it started (or the
    coordinator is gone)."""
    try:
        return orders.recv()
    except (EOFError, OSError):
        return None


def stop_with_the_coordinator(orders: Any) -> None:
    """Stop this worker (as SIGTERM does: its trial fails, its runs close) when the coordinator's end of ``orders``
    closes: the coordinator died, even by kill -9, and no one would supervise it. Nothing else comes on ``orders``
    after the go."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                orders.recv()
        _stop_reason.append(COORDINATOR_GONE)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="searchlab-coordinator-watch", daemon=True).start()


def worker_process(study_file: str, config: RunConfig, slot: Slot, orders: Any, worker_seed: int,
                   environment: dict[str, str]) -> None:
    """Entry point of a worker process: take the coordinator's environment (a forked worker has its fork server's)
    and pin the device before torch starts any, get ready, then wait for the coordinator's go (``orders``, a pipe)
    and run the worker. Getting ready fails quietly when the run never starts: the coordinator meets the same bad
    input first and says so."""
    os.environ.clear()
    os.environ.update(environment)
    os.environ.update(slot.environment)  # read after: it maps the GPU through the coordinator's CUDA_VISIBLE_DEVICES
    import torch  # a fork server's was loaded before OMP_NUM_THREADS was set: size its thread pool here

    torch.set_num_threads(slot.threads)
    slot = dataclasses.replace(slot, isolated=True)
    with interrupt_once():
        try:
            try:
                prepared: tuple[Study, Any, Any] | Exception = prepare_worker(study_file, config)
            except Exception as error:
                prepared = error
            go = wait_for_go(orders)
            if go is None:
                return
            if isinstance(prepared, Exception):
                raise prepared
            study, data, start = prepared
            stop_with_the_coordinator(orders)
            run_worker(study, config, slot, data=data, start=start, worker_seed=worker_seed, **go)
        except KeyboardInterrupt:
            sys.exit(130)
        except ConfigError as error:
            print(f"Error: {error}", file=sys.stderr)
            sys.exit(2)
        except RunFailed as error:  # e.g. MLflow unreachable when the worker sent its last runs
            print(f"Error: {error}", file=sys.stderr)
            sys.exit(1)
        finally:
            SYNCER.wait()  # a forked worker ends without running atexit: its last journal sync is made here
            gc.freeze()  # the process ends here: see cli.entry_point

"""A run's lifecycle: check the input, open the stores, run the search (in this process, or in a worker pool),
then publish the report and the best model and close the parent run, whatever happened."""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from searchlab.budget import budget_lock, first_open, set_budget
from searchlab.config import RunConfig, RunStarted, resolve_config
from searchlab.devices import Slot
from searchlab.errors import EXIT_INTERRUPTED, INTERRUPTED_LINE, ConfigError, RunFailed, exit_with
from searchlab.mlflow_ui import CHART_VIEW_TAG, chart_view
from searchlab.pool import Workers, coordinate
from searchlab.preparation import Prepared, check_learns, plan_slots, prepare
from searchlab.publish import publish
from searchlab.recovery import ended_trial, is_dead_local_worker, reap_dead_local_trials, worker_name
from searchlab.results import value_of
from searchlab.settings import (
    EXPERIMENT_ATTR,
    OBJECTIVE_NAME,
    PARENT_RUN_ATTR,
    RUN_ID_ATTR,
    RUN_SETTINGS_ATTR,
    STATE_TAG,
    WORKER,
)
from searchlab.signals import interrupt_once
from searchlab.storage import close_storage, describe, open_storage, uncached
from searchlab.study import Study
from searchlab.summary import (
    RunSummary,
    StudyInterrupted,
    how_to_compare,
    progress_bar,
    show_trials,
    unsent_note,
)
from searchlab.tracking import MlflowTracker
from searchlab.unsent import resend_unsent, unsent_runs
from searchlab.window import best_of, trials_since
from searchlab.worker import run_worker

Enqueued = tuple[dict[str, Any], dict[str, Any]]  # a trial to run first: its params and user attributes


def run_study(
    study: Study,
    config: RunConfig,
    *,
    study_file: str | None = None,
    check: bool = True,
    progress: bool = True,
    enqueue: Sequence[Enqueued] = (),
) -> RunSummary:
    """Run ``config.n_trials`` more trials of ``study`` and track them; bad input, or (with ``check``) a model
    that cannot overfit one tiny batch, fails before anything is written. ``study_file`` (the file declaring
    ``study``) is needed to start worker processes. ``enqueue``: trials to run first, among ``n_trials``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and summary say it all
    slots = plan_slots(config)
    if len(slots) == 1:
        return _run_study(study, config, slots, None, study_file, check, progress, enqueue)
    if study_file is None:
        raise ConfigError("several workers need the study's file: run it with 'searchlab run FILE --workers N'")
    workers = Workers(study_file, config, slots)  # now: they get ready while this process sets the run up
    try:
        return _run_study(study, config, slots, workers, study_file, check, progress, enqueue)
    finally:
        workers.cancel()  # the run stopped before it started them: they exit, having written nothing


@dataclass
class OpenRun:
    """A run whose stores are open and whose parent run has started."""

    storage: Any
    study: optuna.Study
    tracker: MlflowTracker
    lock: Callable[[], Any]
    first: int  # where the run's trials start: trials numbered below are final (see budget.first_open)
    experiment_id: str
    parent_run_id: str
    summary: RunSummary


def _run_study(
    study: Study,
    config: RunConfig,
    slots: list[Slot],
    workers: Workers | None,
    study_file: str | None,
    check: bool,
    progress: bool,
    enqueue: Sequence[Enqueued],
) -> RunSummary:
    prepared = prepare(study, config, check_tracking=True)
    if check:
        # On one slot's threads, as a trial trains: all of the cores would contend with the workers getting ready
        # (their fork server's imports), and a thread pool that waits for a busy core runs many times slower.
        check_learns(study, prepared, config, threads=min(slot.threads for slot in slots))
    run = _open_run(config)
    status = "FAILED"
    with interrupt_once():  # one Ctrl-C stops the run; the cleanup below is not interrupted by a second one
        try:
            _search(run, study, config, slots, workers, prepared, progress, enqueue)
            if unsent_runs(config.tracking_uri):  # the workers waited for the store already: publish does not
                run.tracker.give_up.set()
            run.summary.published = publish(
                run.study,
                run.tracker,
                run.summary.experiment_id,
                run.parent_run_id,
                study,
                study_file,
                prepared.val,
                config.study_name,
                report=config.report,
                register_best=config.register,
            )
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            run.tracker.give_up.set()  # a Ctrl-C never waits for an unreachable store
            raise StudyInterrupted(run.summary) from None
        finally:
            try:
                _close_parent_run(run, config, status)
            finally:
                close_storage(run.storage)
    return run.summary


def _open_run(config: RunConfig) -> OpenRun:
    """Open (or create) the Optuna study and its MLflow experiment, recover what earlier runs left (unsent records,
    trials and runs of dead workers), and start the parent run; the storage is closed again if that fails."""
    storage = open_storage(config.storage)
    try:
        return _start_parent_run(config, storage)
    except BaseException:
        close_storage(storage)
        raise


def _start_parent_run(config: RunConfig, storage: Any) -> OpenRun:
    study = uncached(
        optuna.create_study(storage=storage, study_name=config.study_name, direction="minimize", load_if_exists=True)
    )
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ConfigError(
            f"study {config.study_name!r} in {describe(config.storage)} maximizes; "
            "searchlab minimizes validation loss: choose another --study-name"
        )
    if study.metric_names is None:  # the dashboard and Optuna's plots name the value, not "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAME])
    tracker = MlflowTracker(config.tracking_uri, retry_seconds=config.tracking_wait)
    lock = budget_lock(config.storage, storage, config.study_name)
    resent = resend_unsent(config.tracking_uri, wait=config.tracking_wait)  # before the dead runs: it may close some
    first = first_open(study)  # retries enqueued next are among the run's trials
    reap_dead_local_trials(
        study, retries=config.retries, tracker=tracker, lock=lock, reason="its worker died before this run started"
    )
    experiment_id = tracker.experiment_id(config.study_name)  # once, before any worker starts
    tracker.close_dead_runs(experiment_id, is_dead_local_worker, lambda number: ended_trial(study, number))
    parent_run_id = tracker.start_run(
        experiment_id,
        f"{config.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            "study_name": config.study_name,
            "role": "study",
            WORKER: worker_name(),
            "mlflow.note.content": how_to_compare(experiment_id),
        },
    )
    summary = RunSummary(config.study_name, describe(config.storage), config.tracking_uri, experiment_id, parent_run_id)
    if resent:
        summary.notes.append(f"resent     {resent} trial run(s) an earlier run could not send to MLflow")
    return OpenRun(storage, study, tracker, lock, first, experiment_id, parent_run_id, summary)


def _search(
    run: OpenRun,
    study: Study,
    config: RunConfig,
    slots: list[Slot],
    workers: Workers | None,
    prepared: Prepared,
    progress: bool,
    enqueue: Sequence[Enqueued],
) -> None:
    """Record the run's settings and budget, then run its trials: here, or in the worker pool."""
    _record_settings(run, study, config, slots, enqueue, searched=prepared.searched or tuple(study.searched))
    optuna_study = run.study
    started = RunStarted(
        run.experiment_id, run.parent_run_id, None if config.timeout is None else time.time() + config.timeout
    )
    bar = progress_bar(config, enabled=progress, total=config.n_trials)
    try:
        if workers is None:
            run_worker(
                study,
                config,
                slots[0],
                started,
                prepared=prepared,
                on_trial_end=lambda trial: show_trials(bar, [trial]),
            )
        else:
            workers.go(started)
            coordinate(
                workers,
                config,
                slots,
                optuna_study,
                run.tracker,
                bar,
                run.lock,
                run.first,
                experiment_id=run.experiment_id,
            )
    finally:
        bar.close()
        run.summary.record(trials_since(optuna_study, run.first), best_of(optuna_study))


def _record_settings(
    run: OpenRun,
    study: Study,
    config: RunConfig,
    slots: list[Slot],
    enqueue: Sequence[Enqueued],
    *,
    searched: Sequence[str],
) -> None:
    """The run's settings on its parent run; in the study, what workers joining it need, the enqueued trials and
    the budget."""
    run.tracker.log_params(
        run.parent_run_id,
        {
            "task": study.task,
            "sampler": config.sampler,
            "pruner": config.pruner,
            "seed": config.seed,
            "n_trials": config.n_trials,
            "timeout": config.timeout,
            "max_epochs": config.max_epochs,
            "patience": config.patience,
            "storage": describe(config.storage),
            "searched": ",".join(searched),
            "workers": len(slots),
            "devices": ",".join(sorted({slot.device for slot in slots})),
            "retries": config.retries,
            "pack": config.pack,
        },
    )
    run.tracker.set_experiment_tag(run.experiment_id, CHART_VIEW_TAG, chart_view(searched))
    optuna_study = run.study
    optuna_study.set_user_attr(EXPERIMENT_ATTR, run.experiment_id)
    optuna_study.set_user_attr(PARENT_RUN_ATTR, run.parent_run_id)
    optuna_study.set_user_attr(RUN_SETTINGS_ATTR, config.shared_settings())
    for params, user_attrs in enqueue:
        optuna_study.enqueue_trial(params, user_attrs=user_attrs, skip_if_exists=False)
    # enqueued trials (retries, re-evaluations) are among the run's n_trials, as in Optuna's optimize(n_trials)
    set_budget(optuna_study, run.first, config.n_trials)


def _close_parent_run(run: OpenRun, config: RunConfig, status: str) -> None:
    """The run's outcome in one call, then its status; what could not be sent is noted in the summary."""
    summary = run.summary
    best = (
        {}
        if summary.best is None
        else {"best_trial": summary.best.number, "best_run_id": summary.best.user_attrs.get(RUN_ID_ATTR)}
    )
    packs = (
        {"packs": len(summary.packs), "members_per_pack": ",".join(map(str, summary.packs))} if summary.packs else {}
    )
    try:
        run.tracker.end_run(
            run.parent_run_id,
            status,
            tags={STATE_TAG: status, **best, **packs},
            metrics={"best_value": value_of(summary.best)} if summary.best else None,
        )
    except ConnectionError:
        summary.notes.append(
            f"parent     run {run.parent_run_id} left RUNNING: MLflow is unreachable (the next run closes it)"
        )
    summary.notes += unsent_note(config.tracking_uri)


def run_declared(study: Study, overrides: dict[str, Any]) -> RunSummary:
    """``Study.run``: run the study as ``searchlab run`` would, and print where the results are. Run as a script
    (``python FILE``), bad input ends the process with one line and exit code 2, and Ctrl-C with exit code 130."""
    as_script = any(value is study for value in vars(sys.modules["__main__"]).values())
    try:
        summary = run_study(study, resolve_config(study, overrides), study_file=inspect.getsourcefile(study.model))
    except (ConfigError, RunFailed) as error:
        if not as_script:
            raise
        exit_with(error)
    except StudyInterrupted as interrupted:
        if not as_script:
            raise
        print(INTERRUPTED_LINE, file=sys.stderr)
        print("\n".join(interrupted.summary.lines()))
        raise SystemExit(EXIT_INTERRUPTED) from None
    print("\n".join(summary.lines()))
    failure = summary.failure()
    if failure and as_script:
        exit_with(RunFailed(failure))
    return summary

"""Running a study: check the input, open the stores, start the workers and watch them, then summarise.

With one worker the search runs in this process. With several, each is a process on its own device slot,
forked from a fork server that imported torch, mlflow and optuna once (spawned where there is none) and started
first so that it loads while this process sets the run up; this process (the coordinator) shows
progress, recovers the trials of workers that die (failed, retried, their MLflow runs closed) and starts
replacements, and on Ctrl-C stops every worker before it closes the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing.connection
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.budget import BUDGET_ATTR, budget_lock, count, has_room
from searchlab.config import RunConfig, default_tracking_uri
from searchlab.devices import Slot, assign_slots, cuda_device_count, parse_devices, parse_workers
from searchlab.errors import ConfigError, RunFailed, describe_error
from searchlab.forkserver import worker_context
from searchlab.recovery import is_dead_local_worker, reap_dead_local_trials, worker_name
from searchlab.sender import resend_unsent, unsent_folder, unsent_runs
from searchlab.storage import DEFAULT_JOURNAL, describe, mask_password, open_storage
from searchlab.study import Study
from searchlab.tracking import RUN_ID_ATTR
from searchlab.viewers import experiment_page
from searchlab.worker import (
    EXPERIMENT_ATTR,
    PARENT_RUN_ATTR,
    RUN_SETTINGS,
    RUN_SETTINGS_ATTR,
    interrupt_once,
    run_worker,
    worker_process,
)

STOP_GRACE_SECONDS = 60  # how long stopped workers get to close their trials before they are killed
CANCEL_GRACE_SECONDS = 10  # how long workers of a run that never started get to exit


@dataclass
class RunSummary:
    """Where one invocation's results are, and how it went."""

    study_name: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    n_trials: int = 0
    states: dict[str, int] = field(default_factory=dict)
    best: FrozenTrial | None = None
    published: list[str] = field(default_factory=list)  # where the report and the registered model are
    notes: list[str] = field(default_factory=list)  # what the tracking store did not get yet

    def lines(self) -> list[str]:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.states.items())) or "none"
        lines = [
            f"study      {self.study_name}: {self.n_trials} trials this run ({counts})",
            f"storage    {self.storage}",
            f"tracking   {mask_password(self.tracking_uri)} (experiment {self.experiment_id}, "
            f"parent run {self.parent_run_id})",
        ]
        if self.best is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in self.best.params.items())
            lines.append(f"best       trial {self.best.number}: val_loss={self.best.value:.6g} "
                         f"(run {self.best.user_attrs.get(RUN_ID_ATTR, 'not sent yet')}) {params}")
        lines += self.published + self.notes
        if self.tracking_uri.startswith(("http://", "https://")):
            base = mask_password(self.tracking_uri).rstrip("/")
            lines.append(f"open       {experiment_page(base, self.experiment_id)}")
        else:
            tracking = "" if self.tracking_uri == default_tracking_uri() else \
                _flag("--tracking-uri", mask_password(self.tracking_uri), "SEARCHLAB_TRACKING_URI")
            storage = "" if self.storage == DEFAULT_JOURNAL else _flag("--storage", self.storage, "SEARCHLAB_STORAGE")
            name = shlex.quote(self.study_name)  # pasted into a shell: a name like "a;$(id)" must stay one word
            lines.append(f"compare    searchlab ui --study-name {name}{tracking} (MLflow UI); searchlab "
                         f"dashboard --study-name {name}{storage} (Optuna dashboard)")
        return lines

    def record(self, trials: list[FrozenTrial], before: set[int]) -> None:
        """Count the trials this run added (numbers not in ``before``) and take the study's best."""
        new = [trial for trial in trials if trial.number not in before]
        self.n_trials = count(new).final
        self.states = {}
        for trial in new:
            self.states[trial.state.name] = self.states.get(trial.state.name, 0) + 1
        complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
        self.best = min(complete, key=lambda trial: trial.value) if complete else None


class StudyInterrupted(Exception):
    """Ctrl-C stopped the run after every open trial and run was closed; carries the summary."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__("interrupted")
        self.summary = summary


def _flag(name: str, masked_url: str, variable: str) -> str:
    """A flag to copy into a shell, quoted: a URL whose password is masked would not work, so point at its variable
    instead."""
    return f' {name} "${variable}"' if "***" in masked_url else f" {name} {shlex.quote(masked_url)}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load_split(study: Study, seed: int) -> Any:
    """The study's training and validation data, checked and prepared for its task; a data() that raises is a
    study-file error."""
    from searchlab.data import prepare_split
    from searchlab.tasks import get_task

    try:
        split = study.data(seed)
    except Exception as error:
        raise ConfigError(f"the study's data({seed}) failed: {describe_error(error)}") from None
    return prepare_split(split, get_task(study.task))


def preflight_model(study: Study, task: Any, val_data: Any, start: Any = None) -> None:
    """Build the model from a throwaway in-memory trial and run a few validation examples through it, so that
    a failing builder, a wrong head or a wrong output shape fails before anything is written."""
    import torch

    from searchlab.data import first_examples
    from searchlab.objective import build_model, sample_params
    from searchlab.tasks import ModelError
    from searchlab.trial import Trial

    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    try:
        model = build_model(study, Trial(probe, sample_params(study.space, probe, start), seed=0), task, start)
        inputs, targets = first_examples(val_data, 8)
        model.eval()
        with torch.no_grad():
            outputs = model(inputs)
        task.align(outputs, targets)
        task.check_outputs(outputs)
    except ModelError:
        raise
    except Exception as error:
        raise ConfigError(f"the study's model failed on a validation batch: {describe_error(error)}") from None


def load_start_for(study: Study, config: RunConfig) -> Any:
    """The weights the study starts from (None when it starts from scratch)."""
    if study.start_from is None:
        return None
    from searchlab.transfer import resolve_start

    return resolve_start(study.start_from, storage=config.storage, tracking_uri=config.tracking_uri)


def plan_slots(config: RunConfig) -> list[Slot]:
    """The device slots this run's workers take (checked before anything is written)."""
    return assign_slots(parse_devices(config.devices, cuda_device_count()), parse_workers(config.workers),
                        trials_per_device=config.trials_per_device, threads=config.threads)


def run_study(study: Study, config: RunConfig, *, study_file: str | None = None, check: bool = True,
              progress: bool = True, enqueue: Sequence[dict[str, Any]] = ()) -> RunSummary:
    """Run ``config.n_trials`` more trials of ``study`` and track them; bad input, or (with ``check``) a model
    that cannot overfit one tiny batch, fails before anything is written. ``study_file`` (the file declaring
    ``study``) is needed to start worker processes. ``enqueue``: params to run first, on top of ``n_trials``."""
    from searchlab.tasks import get_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and summary say it all
    task = get_task(study.task)
    slots = plan_slots(config)
    if len(slots) == 1:
        return _run_study(study, config, task, slots, None, study_file, check, progress, enqueue)
    if study_file is None:
        raise ConfigError("several workers need the study's file: run it with 'searchlab run FILE --workers N'")
    workers = Workers(study_file, config, slots)  # now: they get ready while this process sets the run up
    try:
        return _run_study(study, config, task, slots, workers, study_file, check, progress, enqueue)
    finally:
        workers.cancel()  # the run stopped before it started them: they exit, having written nothing


def _run_study(study: Study, config: RunConfig, task: Any, slots: list[Slot], workers: Workers | None,
               study_file: str | None, check: bool, progress: bool, enqueue: Sequence[dict[str, Any]]) -> RunSummary:
    from searchlab.tracking import MlflowTracker, check_tracking_uri

    data = load_split(study, config.seed)
    check_tracking_uri(config.tracking_uri)
    start = load_start_for(study, config)
    preflight_model(study, task, data[1], start)
    if check:
        from searchlab.check import CheckFailed, check_study

        # On one slot's threads, as a trial trains: all of the cores would contend with the workers getting ready
        # (their fork server's imports), and a thread pool that waits for a busy core runs many times slower.
        result = check_study(study, data[0], seed=config.seed, start=start, threads=min(s.threads for s in slots))
        if not result.passed:
            raise CheckFailed(f"the model cannot learn one tiny batch, so the sweep would be wasted: "
                              f"{result.summary.removeprefix('check failed: ')} (see 'searchlab check'; "
                              "skip with --no-check)")
    storage = open_storage(config.storage)
    optuna_study = optuna.create_study(storage=storage, study_name=config.study_name, direction="minimize",
                                       load_if_exists=True)
    if optuna_study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ConfigError(f"study {config.study_name!r} in {describe(config.storage)} maximizes; "
                          "searchlab minimizes validation loss: choose another --study-name")
    tracker = MlflowTracker(config.tracking_uri, retry_seconds=config.tracking_wait)
    lock = budget_lock(config.storage, storage, config.study_name)
    resent = resend_unsent(config.tracking_uri, wait=config.tracking_wait)  # before the dead runs: it may close some
    before = {trial.number for trial in optuna_study.get_trials(deepcopy=False)}  # retries enqueued next run here
    reap_dead_local_trials(optuna_study, retries=config.retries, tracker=tracker, lock=lock,
                           reason="its worker died before this run started")
    experiment_id = tracker.experiment_id(config.study_name)  # once, before any worker starts
    tracker.close_dead_runs(experiment_id, is_dead_local_worker)
    parent_run_id = tracker.start_run(experiment_id, f"{config.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                      tags={"study_name": config.study_name, "role": "study",
                                            "worker": worker_name(), "mlflow.note.content": HOW_TO_COMPARE})
    summary = RunSummary(config.study_name, describe(config.storage), config.tracking_uri, experiment_id,
                         parent_run_id)
    if resent:
        summary.notes.append(f"resent     {resent} trial run(s) an earlier run could not send to MLflow")
    status = "FAILED"
    with interrupt_once():  # one Ctrl-C stops the run; the cleanup below is not interrupted by a second one
        try:
            tracker.log_params(parent_run_id, {
                "task": study.task, "sampler": config.sampler, "pruner": config.pruner, "seed": config.seed,
                "n_trials": config.n_trials, "timeout": config.timeout, "max_epochs": config.max_epochs,
                "patience": config.patience, "storage": describe(config.storage), "searched": ",".join(study.searched),
                "workers": len(slots), "devices": ",".join(sorted({slot.device for slot in slots})),
                "retries": config.retries,
            })
            optuna_study.set_user_attr(EXPERIMENT_ATTR, experiment_id)
            optuna_study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)
            optuna_study.set_user_attr(RUN_SETTINGS_ATTR, {name: getattr(config, name) for name in RUN_SETTINGS})
            for params in enqueue:
                optuna_study.enqueue_trial(params, skip_if_exists=False)
            optuna_study.set_user_attr(BUDGET_ATTR, count(optuna_study.get_trials(deepcopy=False)).claimed
                                       + config.n_trials)
            deadline = None if config.timeout is None else time.time() + config.timeout
            bar = _progress_bar(config, enabled=progress, total=config.n_trials
                                + len(optuna_study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
            try:
                if workers is None:
                    run_worker(study, config, slots[0], experiment_id=experiment_id, parent_run_id=parent_run_id,
                               deadline=deadline, data=data, start=start,
                               on_trial_end=lambda trial: _show(bar, [trial]))
                else:
                    workers.go(experiment_id=experiment_id, parent_run_id=parent_run_id, deadline=deadline)
                    coordinate(workers, config, slots, optuna_study, tracker, bar, lock, before,
                               experiment_id=experiment_id)
            finally:
                bar.close()
                summary.record(optuna_study.get_trials(deepcopy=False), before)
            if unsent_runs(config.tracking_uri):  # the workers waited for the store already: publish does not
                tracker.give_up.set()
            summary.published = publish(optuna_study, tracker, parent_run_id, study, study_file, data[1],
                                        config.study_name, report=config.report, register_best=config.register)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            tracker.give_up.set()  # a Ctrl-C never waits for an unreachable store
            raise StudyInterrupted(summary) from None
        finally:  # the run's outcome in one call, then its status
            best = {} if summary.best is None else {"best_trial": summary.best.number,
                                                    "best_run_id": summary.best.user_attrs.get(RUN_ID_ATTR)}
            try:
                tracker.end_run(parent_run_id, status, tags={"state": status, **best},
                                metrics={"best_value": summary.best.value} if summary.best else None)
            except ConnectionError:
                summary.notes.append(f"parent     run {parent_run_id} left RUNNING: MLflow is unreachable (the next "
                                     "run closes it)")
            summary.notes += unsent_note(config.tracking_uri)
    return summary


def unsent_note(tracking_uri: str) -> list[str]:
    """The summary line saying what waits on disk for the tracking store, and who sends it (none if nothing)."""
    waiting = unsent_runs(tracking_uri)
    return [f"unsent     {waiting} trial run(s) could not reach MLflow: saved in {unsent_folder(tracking_uri)}; the "
            "next run on this tracking URI sends them"] if waiting else []


HOW_TO_COMPARE = """One searchlab run of this study; each child run is one trial.

* **Compare trials**: in the experiment's run list, expand this run, select its trial runs and press
  *Compare*: parallel coordinates, scatter and contour plots of the params against `best_val_loss`, and the
  per-epoch `train_loss` / `val_loss` curves. Every trial logs the same param and metric names.
* **Run names** say the trial number and its headline: `trial-12 val_loss=0.0345`, `trial-3 pruned@4`.
* **Report**: the artifacts of this run, under `report/`: `summary.md` (the best trials, pruned and failed
  counts and reasons) and `report.html` (Optuna's plots, interactive); `searchlab report FILE` adds PNGs.
* **Best model**: registered under the study's name with the alias `best` (Models tab); load it with
  `searchlab best FILE --load` or `searchlab.load_model("models:/NAME@best", FILE)`.
"""


def publish(study: optuna.Study, tracker: Any, parent_run_id: str, declared: Study, study_file: str | None,
            val_data: Any, name: str, *, report: bool = True, register_best: bool = True) -> list[str]:
    """Write the study report to the parent run (unless not ``report``) and register the best model (alias
    ``best``; unless not ``register_best``); returns summary lines. Either failing is reported in its line and
    does not fail the run."""
    from searchlab.registry import BEST_ALIAS, register
    from searchlab.report import REPORT_FOLDER, log_report

    lines = []
    if not report:
        lines.append("report     not written (--no-report): 'searchlab report' writes it")
    else:
        try:
            # no PNGs: drawing them takes seconds at the end of every run; 'searchlab report' draws them
            log_report(study, lambda folder, path: tracker.log_artifacts(parent_run_id, folder, path), images=False)
            lines.append(f"report     runs:/{parent_run_id}/{REPORT_FOLDER} (summary.md, report.html; PNGs: "
                         "searchlab report)")
        except Exception as error:
            if isinstance(error, ConnectionError):
                tracker.give_up.set()  # the store is unreachable: what follows fails at once, not after a wait
            lines.append(f"report     not written: {describe_error(error)} (try 'searchlab report')")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete and not register_best:
        lines.append("model      not registered (--no-register): the best weights are in its trial's run "
                     "(searchlab best --export)")
    elif complete:
        best = min(complete, key=lambda trial: trial.value)
        try:
            version = register(tracker.client, name, best, declared, study_file, val_data)
            lines.append(f"model      models:/{name}@{BEST_ALIAS} (version {version.version}, trial {best.number}; "
                         "searchlab best --load)")
        except Exception as error:
            lines.append(f"model      not registered: {describe_error(error)}")
    return lines


def join_study(study: Study, config: RunConfig) -> int:
    """Run one worker on a study that ``searchlab run`` started; returns how many trials it finished."""
    from searchlab.storage import load_existing_study
    from searchlab.tasks import get_task
    from searchlab.tracking import check_tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_tracking_uri(config.tracking_uri)
    resend_unsent(config.tracking_uri, wait=config.tracking_wait)  # what this host's earlier workers left
    attrs = load_existing_study(config.storage, config.study_name).user_attrs
    if BUDGET_ATTR not in attrs or EXPERIMENT_ATTR not in attrs or RUN_SETTINGS_ATTR not in attrs:
        raise ConfigError(f"study {config.study_name!r} was not started by 'searchlab run': start it there first")
    config = dataclasses.replace(config, **attrs[RUN_SETTINGS_ATTR])  # the same seed, budget and pruner as the run
    task = get_task(study.task)
    data = load_split(study, config.seed)
    start = load_start_for(study, config)
    preflight_model(study, task, data[1], start)
    (slot,) = plan_slots(dataclasses.replace(config, workers="1"))
    finished: list[FrozenTrial] = []
    with interrupt_once():
        run_worker(study, config, slot, experiment_id=attrs[EXPERIMENT_ATTR], parent_run_id=attrs[PARENT_RUN_ATTR],
                   deadline=None if config.timeout is None else time.time() + config.timeout, data=data,
                   start=start, worker_seed=os.getpid(), on_trial_end=finished.append)
    return len(finished)


class Workers:
    """One worker process per slot, started before the run is set up so that their imports and data loading
    overlap it; each waits for ``go`` (the run's ids), or exits on ``cancel`` if the run never starts. They are
    started from a thread: a fork server forks the first one once its preload is done (seconds), and the
    coordinator's set-up goes on meanwhile."""

    def __init__(self, study_file: str, config: RunConfig, slots: list[Slot]) -> None:
        self.context = worker_context()
        self.study_file, self.config = study_file, config
        self.run: dict[str, Any] | None = None  # what go() sent
        self.launched = 0
        self.processes: dict[int, Any] = {}
        self._start_error: BaseException | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._starter = threading.Thread(target=self._start_all, args=(slots,), name="searchlab-start-workers",
                                         daemon=True)
        self._starter.start()

    def _start_all(self, slots: list[Slot]) -> None:
        try:
            for slot in slots:
                process = self.start(slot)
                with self._lock:
                    self.processes[slot.index] = process
                    if self._cancelled:  # the run stopped meanwhile: it exits when it finds no go coming
                        process.orders.close()
                        return
        except BaseException as error:  # raised by go()
            self._start_error = error

    def start(self, slot: Slot) -> Any:
        """A new worker on ``slot`` (a replacement starts at once if the run has started)."""
        self.launched += 1
        orders, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=worker_process, name=f"searchlab-worker-{slot.index}", args=(
            self.study_file, self.config, slot, orders, self.launched, dict(os.environ)))
        process.start()
        orders.close()
        process.orders = send
        if self.run is not None:
            self._send(process, self.run)
        return process

    def go(self, **run: Any) -> None:
        """Start the run in every worker: ``experiment_id``, ``parent_run_id``, ``deadline``."""
        self._starter.join()
        if self._start_error is not None:
            raise RunFailed(f"cannot start the worker processes: {describe_error(self._start_error)}")
        self.run = run
        for process in self.processes.values():
            self._send(process, run)

    def cancel(self) -> None:
        """If the run never started: stop every worker (none has written anything; SIGTERM makes it exit quietly)
        and wait for it, so that nothing outlives the command. One the fork server has yet to fork exits on its own:
        its go never comes."""
        if self.run is not None:
            return
        with self._lock:  # one still being started is stopped by the starter (a Ctrl-C need not wait for it)
            self._cancelled = True
            started = list(self.processes.values())
        for process in started:
            process.terminate()
        for process in started:
            process.join(CANCEL_GRACE_SECONDS)
            if process.exitcode is None:
                process.kill()
                process.join()

    @staticmethod
    def _send(process: Any, message: Any) -> None:
        with contextlib.suppress(OSError):  # it died already: the coordinator sees its exit code
            process.orders.send(message)


def coordinate(workers: Workers, config: RunConfig, slots: list[Slot], study: optuna.Study, tracker: Any, bar: Any,
               lock: Any, before: set[int], *, experiment_id: str) -> None:
    """Watch the started workers until the budget is met; replace the ones that die. ``before``: the trials the
    study held before this run."""
    seen = {trial.number for trial in study.get_trials(deepcopy=False) if trial.state.is_finished()}
    processes = workers.processes
    deaths_in_a_row = 0
    try:
        while processes:
            # wake when a worker exits (at once: the run's end), else twice a second for the progress bar
            multiprocessing.connection.wait([process.sentinel for process in processes.values()], timeout=0.5)
            for slot in slots:
                process = processes.get(slot.index)
                if process is None or process.exitcode is None:
                    continue
                del processes[slot.index]
                if process.exitcode == 2:
                    raise ConfigError(f"worker {slot.index} stopped on bad input (its message is above)")
                if process.exitcode != 0:
                    reason = f"its worker process (pid {process.pid}) died: {_exit_reason(process.exitcode)}"
                    numbers = reap_dead_local_trials(study, retries=config.retries, tracker=tracker, lock=lock,
                                                     pids={process.pid}, reason=reason)
                    with contextlib.suppress(ConnectionError):  # unreachable: the next run closes it
                        tracker.close_dead_runs(experiment_id, is_dead_local_worker)  # one it could not name
                    bar.write(f"worker {slot.index} died ({_exit_reason(process.exitcode)}); "
                              f"trial(s) {numbers or 'none'} failed and retried where retries remain", file=sys.stderr)
                    deaths_in_a_row += 1
                    if deaths_in_a_row > 3 * len(slots):
                        raise RunFailed("workers keep dying without finishing a trial; see the messages above")
                    deadline = workers.run["deadline"]
                    if has_room(study) and (deadline is None or time.time() < deadline):
                        processes[slot.index] = workers.start(slot)
            trials = study.get_trials(deepcopy=False)
            finished = [t for t in trials if t.state.is_finished() and t.number not in seen]
            if finished:
                deaths_in_a_row = 0
                seen.update(trial.number for trial in finished)
                _show(bar, finished, final=count([t for t in trials if t.number not in before]).final)
    except BaseException as error:
        reason = "stopped with the run (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else \
            f"stopped with the run ({describe_error(error)})"
        if isinstance(error, KeyboardInterrupt):
            tracker.give_up.set()  # closing the dead workers' runs never waits for an unreachable store
        stop_workers(processes, study, tracker, lock, reason=reason)
        raise


def stop_workers(processes: dict[int, Any], study: optuna.Study, tracker: Any, lock: Any, *, reason: str) -> None:
    """Ask every worker to stop (SIGINT: it fails its trial and closes its run), then kill what is left."""
    for process in processes.values():
        if process.exitcode is None:
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
            process.join()
    reap_dead_local_trials(study, retries=0, tracker=tracker, lock=lock, pids={p.pid for p in processes.values()},
                           reason=reason)


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _show(bar: Any, trials: list[FrozenTrial], *, final: int | None = None) -> None:
    """Report newly finished trials and the best value so far; the bar counts final outcomes (``final``, or
    one per trial; a failed trial that is retried counts through its retry)."""
    for trial in trials:
        if trial.state == TrialState.FAIL:
            bar.write(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason', 'its worker died')}",
                      file=sys.stderr)
        if trial.state == TrialState.COMPLETE and (bar.best is None or trial.value < bar.best.value):
            bar.best = trial
    bar.update(len(trials) if final is None else final - bar.n)
    if bar.best is not None:
        bar.set_postfix_str(f"best={bar.best.value:.4g} (trial {bar.best.number})")


def _progress_bar(config: RunConfig, *, enabled: bool, total: int) -> Any:
    """One bar for all workers: final outcomes of this run (retries of earlier runs' dead trials included)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=config.study_name, unit="trial", file=sys.stderr,
               disable=not enabled, dynamic_ncols=True)
    bar.best = None
    return bar

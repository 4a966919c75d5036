"""The worker pool of a run with several workers: one process per device slot, started early, told to go, watched.

Workers are forked from a fork server that imported torch, mlflow and optuna once (spawned where there is none),
and started first so that they load while the coordinator sets the run up. The coordinator shows progress,
recovers the trials of workers that die (failed, retried, their MLflow runs closed) and starts replacements, and
on Ctrl-C stops every worker before it closes the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from typing import Any

import optuna
import torch

from searchlab.budget import count, has_room
from searchlab.config import RunConfig, RunStarted
from searchlab.devices import Slot
from searchlab.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ConfigError, RunFailed, describe_error, exit_with
from searchlab.forkserver import worker_context
from searchlab.preparation import Prepared, prepare
from searchlab.recovery import ended_trial, is_dead_local_worker, reap_dead_local_trials
from searchlab.signals import interrupt_once, stop_with_the_coordinator
from searchlab.storage import SYNCER, is_database_url
from searchlab.study import Study, load_study_file
from searchlab.summary import show_trials
from searchlab.window import trials_since
from searchlab.worker import run_worker

STOP_GRACE_SECONDS = 60  # how long stopped workers get to close their trials before they are killed
CANCEL_GRACE_SECONDS = 10  # how long workers of a run that never started get to exit


class Workers:
    """One worker process per slot, started before the run is set up so that their imports and data loading
    overlap it; each waits for ``go`` (the run's ids), or exits on ``cancel`` if the run never starts. They are
    started from a thread: a fork server forks the first one once its preload is done (seconds), and the
    coordinator's set-up goes on meanwhile."""

    def __init__(self, study_file: str, config: RunConfig, slots: list[Slot]) -> None:
        self.context = worker_context()
        self.study_file, self.config = study_file, config
        self.run: RunStarted | None = None  # what go() sent
        self.processes: dict[int, Any] = {}
        self._start_error: BaseException | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._starter = threading.Thread(
            target=self._start_all, args=(slots,), name="searchlab-start-workers", daemon=True
        )
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
        orders, send = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=worker_process,
            name=f"searchlab-worker-{slot.index}",
            args=(self.study_file, self.config, slot, orders, dict(os.environ)),
        )
        process.start()
        orders.close()
        process.orders = send
        if self.run is not None:
            self._send(process, self.run)
        return process

    def go(self, run: RunStarted) -> None:
        """Start the run in every worker."""
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


def coordinate(
    workers: Workers,
    config: RunConfig,
    slots: list[Slot],
    study: optuna.Study,
    tracker: Any,
    bar: Any,
    lock: Any,
    first: int,
    *,
    experiment_id: str,
) -> None:
    """Watch the started workers until the budget is met; replace the ones that die. ``first``: the number of the
    run's first trial (its trials are read, not the study's history)."""
    seen = {trial.number for trial in trials_since(study, first) if trial.state.is_finished()}
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
                if process.exitcode == EXIT_BAD_INPUT:
                    raise ConfigError(f"worker {slot.index} stopped on bad input (its message is above)")
                if process.exitcode != 0:
                    _recover_dead_worker(process, slot, config, study, tracker, bar, lock, experiment_id)
                    deaths_in_a_row += 1
                    if deaths_in_a_row > 3 * len(slots):
                        raise RunFailed("workers keep dying without finishing a trial; see the messages above")
                    deadline = workers.run.deadline if workers.run else None
                    if has_room(study) and (deadline is None or time.time() < deadline):
                        processes[slot.index] = workers.start(slot)
            trials = trials_since(study, first)
            finished = [t for t in trials if t.state.is_finished() and t.number not in seen]
            if finished:
                deaths_in_a_row = 0
                seen.update(trial.number for trial in finished)
                show_trials(bar, finished, final=count(trials).final)
    except BaseException as error:
        reason = (
            "stopped with the run (Ctrl-C)"
            if isinstance(error, KeyboardInterrupt)
            else f"stopped with the run ({describe_error(error)})"
        )
        if isinstance(error, KeyboardInterrupt):
            tracker.give_up.set()  # closing the dead workers' runs never waits for an unreachable store
        stop_workers(processes, study, tracker, lock, reason=reason)
        raise


def _recover_dead_worker(
    process: Any,
    slot: Slot,
    config: RunConfig,
    study: optuna.Study,
    tracker: Any,
    bar: Any,
    lock: Any,
    experiment_id: str,
) -> None:
    """Fail (and retry) the trial of a worker that died, close its MLflow runs, and say so."""
    reason = f"its worker process (pid {process.pid}) died: {_exit_reason(process.exitcode)}"
    numbers = reap_dead_local_trials(
        study, retries=config.retries, tracker=tracker, lock=lock, pids={process.pid}, reason=reason
    )
    with contextlib.suppress(ConnectionError):  # unreachable: the next run closes it
        tracker.close_dead_runs(  # one it could not name, or one of a trial it had ended
            experiment_id, is_dead_local_worker, lambda number: ended_trial(study, number)
        )
    bar.write(
        f"worker {slot.index} died ({_exit_reason(process.exitcode)}); "
        f"trial(s) {numbers or 'none'} failed and retried where retries remain",
        file=sys.stderr,
    )


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
    reap_dead_local_trials(
        study, retries=0, tracker=tracker, lock=lock, pids={p.pid for p in processes.values()}, reason=reason
    )


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def prepare_worker(study_file: str, config: RunConfig) -> tuple[Study, Prepared]:
    """What a worker process loads before its run starts: the study file, the study's data and starting weights,
    and the modules its first trial would import (seconds, overlapping the coordinator's own set-up)."""
    study = load_study_file(study_file)
    import mlflow  # the trial tracker's
    import torch._dynamo  # noqa: F401  (the first optimizer step's)

    if is_database_url(config.tracking_uri):  # MLflow's SQL store (the default sqlite one): seconds on some hosts
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    return study, prepare(study, config, preflight=False)


def wait_for_go(orders: Any) -> RunStarted | None:
    """The run's ids and deadline from the coordinator; None if the run stopped before it started (or the
    coordinator is gone)."""
    try:
        return orders.recv()
    except (EOFError, OSError):
        return None


def worker_process(study_file: str, config: RunConfig, slot: Slot, orders: Any, environment: dict[str, str]) -> None:
    """Entry point of a worker process: take the coordinator's environment (a forked worker has its fork server's)
    and pin the device before torch starts any, get ready, then wait for the coordinator's go (``orders``, a pipe)
    and run the worker. Getting ready fails quietly when the run never starts: the coordinator meets the same bad
    input first and says so."""
    os.environ.clear()
    os.environ.update(environment)
    os.environ.update(slot.environment)  # read after: it maps the GPU through the coordinator's CUDA_VISIBLE_DEVICES
    torch.set_num_threads(slot.threads)  # torch was loaded before OMP_NUM_THREADS was set: size its thread pool here
    slot = dataclasses.replace(slot, isolated=True)
    with interrupt_once():
        try:
            try:
                prepared: tuple[Study, Prepared] | Exception = prepare_worker(study_file, config)
            except Exception as error:
                prepared = error
            go = wait_for_go(orders)
            if go is None:
                return
            if isinstance(prepared, Exception):
                raise prepared
            study, ready = prepared
            stop_with_the_coordinator(orders)
            run_worker(study, config, slot, go, prepared=ready)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)
        except (ConfigError, RunFailed) as error:  # e.g. MLflow unreachable when the worker sent its last runs
            exit_with(error)
        finally:
            SYNCER.wait()  # a forked worker ends without running atexit: its last journal sync is made here
            gc.freeze()  # the process ends here: see cli.entry_point

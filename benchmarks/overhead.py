"""One variant of the overhead benchmark, in this (fresh) process: the same trials, three ways.

Run by benchmarks/suite.py; by hand:
    python benchmarks/overhead.py searchlab --tracking-uri http://127.0.0.1:5000 --out searchlab.json
    python benchmarks/overhead.py bare --params searchlab.json --out bare.json
    python benchmarks/overhead.py naive --tracking-uri http://127.0.0.1:5000 --out naive.json

- ``searchlab``: ``lifecycle.run_study(study, config, check=False, progress=False)``: one worker, the default journal
  storage (in the working directory), full tracking to ``--tracking-uri`` (parent and child runs, params,
  per-epoch curves, state_dict); the study report only with ``--report`` and the best model's registration only
  with ``--register`` (work the other variants do not do, at the end of a run: as run by default, both);
  ``--checkpoint-every SECONDS`` sets its trials' checkpoint interval (benchmarks/resume.py compares 60, 0 and 1e9). The
  overfit check is not counted (it is start-up, measured by the start-up benchmark); the preflight is.
- ``bare``: the same trials (params, seeds, epochs from ``--params``: a searchlab variant's output) trained with
  ``objective.train_trial`` and nothing else: no Optuna, no tracking.
- ``bare+traffic``: ``bare`` while another process makes the MLflow calls of one tracked trial (searchlab's
  ``MlflowTracker``: a child run, its params, 10 epochs of curves, its state_dict, its close) every ``--period``
  seconds against the same server: what the tracking server's and a client's work cost the training on this
  machine's cores, whatever framework makes the calls.
- ``naive``: what users write today: ``optuna.create_study()`` (in memory) with the same seeded sampler, and an
  objective that trains with the same loop inside ``mlflow.start_run(nested=True)`` under a parent run, logs
  params with ``mlflow.log_params``, every metric every epoch with ``mlflow.log_metric`` (synchronous), and the
  best weights with ``torch.save`` + ``mlflow.log_artifact``.

Each variant also reports its process's CPU time (all threads) and its main thread's. Every variant imports the
same heavy modules (torch and torch._dynamo, optuna, mlflow, torchmetrics, the study
file) before its clock starts: import costs are the start-up benchmark's. The clock covers loading the data and
everything after. Epochs are fixed: ``patience = max_epochs``. ``latency`` measures single MLflow calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_STUDY, write_json


def preload(study_file: str) -> Any:
    """Import what every variant needs before the clock starts, and load the study file."""
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import torch
    import torch._dynamo  # the first torch.optim optimizer imports it (seconds, once per process)
    import torchmetrics  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401

    import searchlab.lifecycle  # noqa: F401
    from searchlab.study import load_study_file

    torch.set_num_threads(threads())
    return load_study_file(study_file)


def threads() -> int:
    """The torch threads one searchlab worker gets on this machine (its slot's share of the cores)."""
    from searchlab.devices import assign_slots

    return assign_slots(["cpu"], 1)[0].threads


def params_digest(trials: list[dict[str, Any]]) -> str:
    text = json.dumps(
        [[t["number"], t["params"], t["seed"]] for t in sorted(trials, key=lambda t: t["number"])],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def variant_searchlab(study: Any, args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from searchlab.config import resolve_config
    from searchlab.lifecycle import run_study
    from searchlab.storage import open_storage

    probe = None
    if args.breakdown:
        from _probe import Probe

        probe = Probe()
        probe.install()
    name = f"bench-searchlab-{os.getpid()}"
    config = resolve_config(
        study,
        {
            "n_trials": args.trials,
            "max_epochs": args.epochs,
            "patience": args.epochs,
            "tracking_uri": args.tracking_uri,
            "study_name": name,
            "workers": "1",
            "devices": "cpu",
            "report": args.report,
            "register": args.register,
            # only when given: a searchlab from before checkpoints (commit 655ee04 and older) has no such setting
            **({} if args.checkpoint_every is None else {"checkpoint_every": args.checkpoint_every}),
        },
    )
    started = time.perf_counter()
    run_study(study, config, check=False, progress=False)
    wall = time.perf_counter() - started
    finished = optuna.load_study(study_name=name, storage=open_storage(None)).get_trials(deepcopy=False)
    trials = [
        {
            "number": t.number,
            "params": t.params,
            "seed": t.user_attrs.get("seed"),
            "state": t.state.name,
            "epochs": len(t.intermediate_values),
        }
        for t in finished
    ]
    result = {
        "wall_s": wall,
        "trials": trials,
        "epochs": sum(t["epochs"] for t in trials),
        "params_digest": params_digest(trials),
    }
    if probe is not None:
        result["breakdown"] = probe.summary(wall, len(trials))
    return result


def variant_bare(study: Any, args: argparse.Namespace) -> dict[str, Any]:
    import optuna
    import torch

    from searchlab.data import load_split
    from searchlab.model import sample_params
    from searchlab.train import train_trial
    from searchlab.trial import Trial

    given = json.loads(Path(args.params).read_text())["trials"]
    started = time.perf_counter()
    train_data, val_data = load_split(study, study.seed)
    epochs = 0
    for recorded in given:
        fixed = optuna.trial.FixedTrial(recorded["params"], number=recorded["number"])
        params = sample_params(study.space, fixed)
        _, result = train_trial(
            study,
            Trial(fixed, params, recorded["seed"]),
            train_data,
            val_data,
            torch.device("cpu"),
            max_epochs=args.epochs,
            patience=args.epochs,
        )
        epochs += len(result.history)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "epochs": epochs, "params_digest": params_digest(given)}


def variant_bare_with_traffic(study: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``bare`` while a ``replay`` process makes a tracked trial's MLflow calls every ``--period`` seconds."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as folder:
        count = Path(folder) / "replayed.json"
        replay = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "replay",
                "--study",
                args.study,
                "--tracking-uri",
                args.tracking_uri,
                "--period",
                str(args.period),
                "--out",
                str(count),
            ]
        )
        try:
            while not count.exists():  # its first trial's calls are made: it is under way
                if replay.poll() is not None:
                    raise RuntimeError(f"the replay process exited ({replay.returncode})")
                time.sleep(0.1)
            result = variant_bare(study, args)
        finally:
            replay.terminate()
            replay.wait(60)
        return {**result, "replayed_trials": json.loads(count.read_text())["trials"]}


def replay(args: argparse.Namespace) -> None:
    """Make one tracked trial's MLflow calls every ``--period`` seconds until SIGTERM, as searchlab's objective
    makes them (through ``MlflowTracker``; weights of the study's model); ``--out`` counts the trials so far."""
    import signal

    import optuna

    from searchlab.model import sample_params
    from searchlab.tracking import MlflowTracker
    from searchlab.trial import Trial

    study = preload(args.study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    sampled = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    model = study.model(Trial(sampled, sample_params(study.space, sampled), 0))
    tracker = MlflowTracker(args.tracking_uri)
    experiment = tracker.experiment_id(f"bench-replay-{os.getpid()}")
    parent = tracker.start_run(experiment, "replay", tags={"role": "study"})
    trials = 0
    while not stop:
        started = time.perf_counter()
        run = tracker.start_run(
            experiment,
            f"trial-{trials}",
            parent_run_id=parent,
            tags={"trial_number": trials, "study_name": "replay", "worker": os.getpid()},
        )
        tracker.log_params(
            run,
            {
                **sampled.params,
                "seed": 0,
                "n_params": 1,
                "device": "cpu",
                "threads": 1,
                "max_epochs": 10,
                "patience": 10,
                "optimizer": "sgd",
                "init": "default",
            },
        )
        for epoch in range(10):
            tracker.log_metrics(
                run, {"train_loss": 0.5, "val_loss": 0.5, "val_mae": 0.5, "val_mse": 0.5, "val_r2": 0.5}, step=epoch
            )
        tracker.log_state_dict(run, model.state_dict())
        tracker.log_metrics(run, {"best_val_loss": 0.5}, step=9)
        tracker.end_run(
            run,
            "FINISHED",
            tags={
                "state": "COMPLETE",
                "epochs": 10,
                "best_epoch": 9,
                "val_loss": 0.5,
                "mlflow.runName": f"trial-{trials} val_loss=0.5",
            },
        )
        trials += 1
        write_json(args.out, {"trials": trials})
        time.sleep(max(0.0, args.period - (time.perf_counter() - started)))
    tracker.end_run(parent, "FINISHED")


def variant_naive(study: Any, args: argparse.Namespace) -> dict[str, Any]:
    import mlflow
    import optuna
    import torch

    from searchlab.catalog import make_sampler
    from searchlab.data import load_split
    from searchlab.model import sample_params, trial_seed
    from searchlab.train import train_trial
    from searchlab.trial import Trial

    probe = None
    if args.breakdown:
        from _probe import Probe

        probe = Probe()
        probe.install(framework=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlflow.set_tracking_uri(args.tracking_uri)
    name = f"bench-naive-{os.getpid()}"
    trials: list[dict[str, Any]] = []
    started = time.perf_counter()
    train_data, val_data = load_split(study, study.seed)
    mlflow.set_experiment(name)
    # The searchlab worker's sampler, seeded alike, so that both sample the same params.
    optuna_study = optuna.create_study(direction="minimize", sampler=make_sampler(study.sampler, study.seed, 0))

    def objective(trial: optuna.Trial) -> float:
        seed = trial_seed(study.seed, trial.number)
        params = sample_params(study.space, trial)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            sampled = Trial(trial, params, seed)

            def on_built(model: torch.nn.Module) -> None:
                mlflow.log_params({**sampled.params, "seed": seed, "max_epochs": args.epochs})

            def on_epoch(epoch: int, values: dict[str, float]) -> None:
                for key, value in values.items():
                    mlflow.log_metric(key, value, step=epoch)
                trial.report(values["val_loss"], epoch)

            model, result = train_trial(
                study,
                sampled,
                train_data,
                val_data,
                torch.device("cpu"),
                max_epochs=args.epochs,
                patience=args.epochs,
                on_built=on_built,
                on_epoch=on_epoch,
            )
            trials.append({"number": trial.number, "params": trial.params, "seed": seed, "epochs": len(result.history)})
            if result.best_epoch is None:
                mlflow.set_tags({"trial_number": trial.number, "state": "FAIL"})
                raise RuntimeError(result.stop_reason)  # failed, as searchlab fails it: the sampler skips it
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model_state_dict.pt"
                torch.save(model.state_dict(), path)
                mlflow.log_artifact(str(path))
            mlflow.log_metric("best_val_loss", result.best_val_loss, step=result.best_epoch)
            mlflow.set_tags({"trial_number": trial.number, "state": "COMPLETE"})
            return result.best_val_loss

    with mlflow.start_run(run_name=name):
        mlflow.log_params({"n_trials": args.trials, "max_epochs": args.epochs, "seed": study.seed})
        optuna_study.optimize(objective, n_trials=args.trials, catch=(RuntimeError,))
        mlflow.log_metric("best_value", optuna_study.best_value)
    wall = time.perf_counter() - started
    result = {
        "wall_s": wall,
        "trials": trials,
        "epochs": sum(t["epochs"] for t in trials),
        "params_digest": params_digest(trials),
    }
    if probe is not None:
        result["breakdown"] = probe.summary(wall, len(trials))
    return result


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Median time of one small MLflow call on a kept-alive connection (what MlflowClient does) and on a new
    connection per call, and of the /health page both ways: the difference is the server's TCP behaviour."""
    import statistics

    import requests

    url = args.tracking_uri.rstrip("/")
    session = requests.Session()
    run_id = session.post(f"{url}/api/2.0/mlflow/runs/create", json={"experiment_id": "0"}).json()["run"]["info"][
        "run_id"
    ]

    def timed(call: Any, n: int = 20) -> float:
        times = []
        for step in range(n):
            started = time.perf_counter()
            call(step).raise_for_status()
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    def log_batch(http: Any, headers: dict[str, str]) -> Any:
        return lambda step: http.post(
            f"{url}/api/2.0/mlflow/runs/log-batch",
            headers=headers,
            json={"run_id": run_id, "metrics": [{"key": "m", "value": 1.0, "timestamp": 0, "step": step}]},
        )

    close = {"Connection": "close"}
    return {
        "log_batch_keepalive_ms": timed(log_batch(session, {})),
        "log_batch_new_connection_ms": timed(log_batch(session, close)),
        "health_keepalive_ms": timed(lambda step: session.get(f"{url}/health")),
        "health_new_connection_ms": timed(lambda step: session.get(f"{url}/health", headers=close)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["searchlab", "bare", "bare+traffic", "naive", "latency", "replay"])
    parser.add_argument("--study", default=DEFAULT_STUDY)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--params", help="bare: the JSON a searchlab variant wrote (its trials are retrained)")
    parser.add_argument("--breakdown", action="store_true", help="time the parts (searchlab, naive)")
    parser.add_argument("--report", action="store_true", help="searchlab: write the study report too")
    parser.add_argument("--register", action="store_true", help="searchlab: register the best model too")
    parser.add_argument(
        "--checkpoint-every", type=float, help="searchlab: seconds between a trial's checkpoints [default: searchlab's]"
    )
    parser.add_argument("--period", type=float, default=0.8, help="bare+traffic: seconds per replayed trial")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.variant == "latency":
        write_json(args.out, latency(args))
        return
    if args.variant == "replay":
        replay(args)
        return
    study = preload(args.study)
    run = {
        "searchlab": variant_searchlab,
        "bare": variant_bare,
        "bare+traffic": variant_bare_with_traffic,
        "naive": variant_naive,
    }[args.variant]
    # CPU time: the whole process's (every thread) and the training thread's own.
    cpu, main_thread_cpu = time.process_time(), time.thread_time()
    result = run(study, args)
    write_json(
        args.out,
        {
            "variant": args.variant,
            "threads": threads(),
            **result,
            "cpu_s": time.process_time() - cpu,
            "main_thread_cpu_s": time.thread_time() - main_thread_cpu,
        },
    )


if __name__ == "__main__":
    main()

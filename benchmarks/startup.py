"""Start-up costs, in fresh processes: what each entry point imports, and how long `searchlab run` takes to train.

Run by benchmarks/suite.py; by hand:
    python benchmarks/startup.py imports --out imports.json
    python benchmarks/startup.py first-epoch --workers 2 --tracking-uri http://127.0.0.1:5000 --out first.json
    python benchmarks/startup.py first-epoch --workers 4 --devices cuda:0 --study benchmarks/studies/gpu_bound.py \
        --out gpu4.json

- ``imports``: for each path (``import searchlab``; ``searchlab --help``; what ``searchlab run`` loads before the
  study runs; what a spawned worker loads before its first epoch), a fresh ``python -X importtime`` process:
  its wall time, the cumulative import time of each heavy package it loads, and the list of them.
- ``first-epoch``: ``searchlab run STUDY --trials W --workers W`` in a fresh folder (default journal storage;
  the given tracking URI, else the default sqlite store, created fresh). From the journal and the tracking
  store: when the parent run started (set-up done: imports, data, check, stores), and for each worker when
  its first trial started and when its first epoch ended (the ``val_loss`` point of step 1). Times are seconds
  from the command's start; a spawned worker's own start-up is counted from the parent run's start (the
  workers are spawned right after it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_STUDY, HEAVY, PYTHON, SEARCHLAB, clean_env, write_json

PROBE = "import json, sys; print('HEAVY=' + json.dumps([m for m in {heavy!r} if m in sys.modules]))"

# What each path runs, as Python; {study} is the study file.
PATHS = {
    "import searchlab": "import searchlab",
    "searchlab --help": "from searchlab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    # `searchlab run` before run_study: the CLI, the modules run() imports, the study file.
    "searchlab run: before the study runs": (
        "from searchlab.cli import main\nfrom searchlab.config import resolve_config\n"
        "from searchlab.lifecycle import run_study\nfrom searchlab.summary import StudyInterrupted\n"
        "from searchlab.study import load_study_file\nload_study_file({study!r})"
    ),
    # A spawned worker: unpickling its target imports searchlab.pool (and with it the worker, the objective and
    # tracking); it loads the study file, makes an MlflowClient, and the first optimizer imports torch._dynamo.
    "worker process: until its first optimizer": (
        "from searchlab.pool import worker_process\nfrom searchlab.study import load_study_file\n"
        "load_study_file({study!r})\n"
        "from mlflow import MlflowClient\nimport torch\ntorch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"
    ),
}


def parse_importtime(stderr: str) -> dict[str, Any]:
    """Total import time; for each heavy package's first import, its cumulative time (which includes whatever it
    imported first) and the chain of modules that imported it (``pkg <- importer <- ... <- top level``), from
    ``-X importtime`` output (a module's line follows its imports', indented two spaces per level)."""
    entries: list[tuple[int, str, float]] = []
    total = 0.0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") < 2:
            continue
        fields = line[len("import time:") :].split("|", 2)
        try:
            self_us, cumulative_us = int(fields[0]), int(fields[1])
        except ValueError:
            continue  # the header line
        name = fields[2].rstrip()
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        entries.append((depth, name.strip(), cumulative_us / 1e6))
        total += self_us / 1e6
    heavy: dict[str, float] = {}
    chains: dict[str, str] = {}
    for index, (depth, name, cumulative) in enumerate(entries):
        if name not in HEAVY or name in heavy:
            continue
        heavy[name] = cumulative
        chain, level = [name], depth
        for later_depth, later_name, _ in entries[index + 1 :]:
            if later_depth < level:
                chain.append(later_name)
                level = later_depth
                if level == 0:
                    break
        chains[name] = " <- ".join(chain)
    return {"import_s": total, "heavy_cumulative_s": heavy, "imported_by": chains}


def measure_imports(study: str) -> dict[str, Any]:
    results = {}
    for name, code in PATHS.items():
        source = code.format(study=study) + "\n" + PROBE.format(heavy=HEAVY)
        started = time.perf_counter()
        done = subprocess.run(
            [PYTHON, "-X", "importtime", "-c", source],
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=tempfile.gettempdir(),
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
        loaded = json.loads(done.stdout.rsplit("HEAVY=", 1)[1])
        results[name] = {"wall_s": wall, "heavy_loaded": loaded, **parse_importtime(done.stderr)}
    # The console script itself, without -X importtime (which slows imports down).
    started = time.perf_counter()
    subprocess.run([*SEARCHLAB, "--help"], capture_output=True, check=True, env=clean_env())
    results["searchlab --help"]["command_wall_s"] = time.perf_counter() - started
    return results


def first_epoch(args: argparse.Namespace) -> dict[str, Any]:
    import optuna
    from mlflow import MlflowClient

    from searchlab.storage import open_storage

    with tempfile.TemporaryDirectory(prefix="searchlab-startup-") as folder:
        name = f"bench-startup-{os.getpid()}"
        tracking = args.tracking_uri or f"sqlite:///{Path(folder) / 'mlflow.db'}"
        command = [
            *SEARCHLAB,
            "run",
            str(Path(args.study).resolve()),
            "--trials",
            str(args.workers),
            "--workers",
            str(args.workers),
            "--max-epochs",
            str(args.epochs),
            "--study-name",
            name,
            "--tracking-uri",
            tracking,
        ]
        if args.devices:  # every worker on these devices (a GPU host: K workers share each GPU)
            per_device = -(-args.workers // len(args.devices.split(",")))
            command += ["--devices", args.devices, "--trials-per-device", str(per_device)]
        started = time.time()
        done = subprocess.run(command, cwd=folder, env=clean_env(), capture_output=True, text=True)
        wall = time.time() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr[-2000:]}")
        trials = optuna.load_study(
            study_name=name, storage=open_storage(str(Path(folder) / "searchlab.journal"))
        ).get_trials(deepcopy=False)
        client = MlflowClient(tracking)
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id])
        parent = next(run for run in runs if run.data.tags.get("role") == "study")
        parent_start = parent.info.start_time / 1000
        workers: dict[str, dict[str, float]] = {}
        for trial in trials:
            run_id = trial.user_attrs.get("mlflow_run_id")
            points = [p for p in client.get_metric_history(run_id, "val_loss") if p.step == 1] if run_id else []
            trial_start = trial.datetime_start.timestamp()
            epoch_end = points[0].timestamp / 1000 if points else float("nan")
            worker = str(trial.user_attrs.get("worker"))
            mine = workers.setdefault(
                worker, {"first_trial_s": trial_start - started, "first_epoch_s": epoch_end - started}
            )
            mine["first_trial_s"] = min(mine["first_trial_s"], trial_start - started)
            mine["first_epoch_s"] = min(mine["first_epoch_s"], epoch_end - started)
        for mine in workers.values():
            mine["worker_start_to_first_epoch_s"] = mine["first_epoch_s"] - (parent_start - started)
        return {
            "workers": args.workers,
            "devices": args.devices or "default",
            "tracking": "http" if tracking.startswith("http") else "sqlite (fresh)",
            "wall_s": wall,
            "parent_run_s": parent_start - started,
            "first_trial_s": min(w["first_trial_s"] for w in workers.values()),
            "first_epoch_s": min(w["first_epoch_s"] for w in workers.values()),
            "last_worker_first_epoch_s": max(w["first_epoch_s"] for w in workers.values()),
            "per_worker": workers,
        }


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """`searchlab run` in this process, up to its first epoch, with a clock on each step: when each started and
    how long it took (first call only), from before the first searchlab import."""
    started = time.perf_counter()
    steps: list[dict[str, Any]] = []

    def step(name: str, seconds: float, at: float) -> None:
        steps.append({"step": name, "start_s": at - started, "seconds": seconds})

    def clocked(owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        seen = []

        def wrapper(*a: Any, **k: Any) -> Any:
            at = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                if not seen:
                    seen.append(True)
                    step(name, time.perf_counter() - at, at)

        setattr(owner, attribute, wrapper)

    at = time.perf_counter()
    import searchlab.cli
    from searchlab.config import resolve_config
    from searchlab.lifecycle import run_study
    from searchlab.study import load_study_file

    step("imports of `searchlab run` (cli, check -> torch, torchmetrics, optuna)", time.perf_counter() - at, at)
    at = time.perf_counter()
    study = load_study_file(args.study)
    step("study file (its own imports)", time.perf_counter() - at, at)

    import searchlab.lifecycle
    import searchlab.preparation
    import searchlab.tracking
    import searchlab.train
    import searchlab.worker

    for owner, attribute, name in (
        (searchlab.preparation, "load_split", "data load (study.data)"),
        (searchlab.preparation, "check_tracking_uri", "tracking URI check"),
        (searchlab.preparation, "preflight_model", "preflight (model on a batch)"),
        (searchlab.preparation, "check_study", "overfit check (first optimizer imports torch._dynamo)"),
        (searchlab.lifecycle, "open_storage", "open the Optuna storage"),
        (searchlab.tracking.MlflowTracker, "__init__", "MlflowTracker (imports mlflow)"),
        (searchlab.tracking.MlflowTracker, "experiment_id", "experiment get/create"),
        (searchlab.tracking.MlflowTracker, "close_dead_runs", "search for dead runs"),
        (searchlab.lifecycle, "reap_dead_local_trials", "reap dead trials"),
        (searchlab.tracking.MlflowTracker, "start_run", "first run created (parent)"),
        (searchlab.lifecycle, "run_worker", "worker: its one trial, whole"),
        (searchlab.worker, "claim", "first trial claimed"),
        (searchlab.train, "build_optimizer", "first trial's optimizer"),
        (searchlab.train, "train_epoch", "first training epoch"),
        (searchlab.train, "evaluate", "first validation"),
    ):
        clocked(owner, attribute, name)
    tracking = args.tracking_uri or f"sqlite:///{Path(tempfile.mkdtemp(prefix='searchlab-setup-')) / 'mlflow.db'}"
    config = resolve_config(
        study,
        {
            "n_trials": 1,
            "max_epochs": 1,
            "study_name": f"bench-setup-{os.getpid()}",
            "tracking_uri": tracking,
            "storage": str(Path(tempfile.mkdtemp()) / "s.journal"),
        },
    )
    at = time.perf_counter()
    run_study(study, config, check=True, progress=False)
    step("run_study, 1 trial x 1 epoch, whole (publish included)", time.perf_counter() - at, at)
    first_epoch = next(s for s in steps if s["step"] == "first validation")
    return {
        "tracking": "http" if tracking.startswith("http") else "sqlite (fresh)",
        "first_epoch_s": first_epoch["start_s"] + first_epoch["seconds"],
        "steps": sorted(steps, key=lambda s: s["start_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["imports", "first-epoch", "setup"])
    parser.add_argument("--study", default=DEFAULT_STUDY)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tracking-uri", help="first-epoch: a tracking server; default: a fresh sqlite store")
    parser.add_argument("--devices", help="first-epoch: run the workers on these devices (e.g. cuda:0), packed")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.mode == "imports":
        write_json(args.out, measure_imports(args.study))
    elif args.mode == "setup":
        write_json(args.out, setup(args))
    else:
        write_json(args.out, first_epoch(args))


if __name__ == "__main__":
    sys.exit(main())

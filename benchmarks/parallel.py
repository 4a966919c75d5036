"""Trials per hour with 1 and 2 workers on a CPU-bound study, alternating the variants, medians over repeats.

Run: python benchmarks/parallel.py [--trials 20] [--repeats 2] [--workers 1,2] [--json results.json]

Each run is a fresh `searchlab run` in its own folder (default journal storage and sqlite MLflow store).
Throughput counts trials between the first trial's start and the last trial's end, so that process start-up
(imports, data) and the end (publish, exit) are reported apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from _common import HERE, SEARCHLAB, alternate


def one_run(workers: int, trials: int, *, study: str = "cpu_bound", options: Sequence[str] = ()) -> dict[str, float]:
    """One `searchlab run benchmarks/studies/STUDY.py --workers W --trials T OPTIONS` in a fresh folder, timed."""
    from searchlab.storage import open_storage

    with tempfile.TemporaryDirectory() as folder:
        started, clock = time.perf_counter(), time.time()
        subprocess.run(
            [
                *SEARCHLAB,
                "run",
                str(HERE / "studies" / f"{study}.py"),
                "--workers",
                str(workers),
                "--trials",
                str(trials),
                *options,
            ],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - started
        name = study.replace("_", "-")  # the benchmark studies are named after their files
        trials_done = optuna.load_study(
            study_name=name, storage=open_storage(str(Path(folder) / "searchlab.journal"))
        ).trials
        first = min(trial.datetime_start for trial in trials_done).timestamp()
        last = max(trial.datetime_complete for trial in trials_done).timestamp()
        busy = last - first
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials_done]
    return {
        "wall_s": wall,
        "trials_s": busy,
        "trials_per_hour": 3600 * trials / busy,
        "wall_trials_per_hour": 3600 * trials / wall,
        "trial_s_median": statistics.median(durations),
        "before_first_trial_s": first - clock,
        "after_last_trial_s": clock + wall - last,
    }


def _steps(seconds: Any, steps: int) -> None:
    """A pure torch training loop on one thread (the cpu_bound study's MLP, batch 32), timed."""
    import torch

    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 32), torch.randn(32, 1)
    for step in range(steps + 200):  # 200 warm-up steps
        if step == 200:
            started = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    seconds.put(time.perf_counter() - started)


def plain_torch_rate(processes: int, steps: int = 4000) -> float:
    """Training steps per second of ``processes`` plain torch loops at once, no searchlab: how the machine itself
    scales (a VM's cores may share physical ones with other guests)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    seconds = context.Queue()
    workers = [context.Process(target=_steps, args=(seconds, steps)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(steps / seconds.get() for _ in workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    variants = [int(w) for w in args.workers.split(",")]
    results: dict[int, list[dict[str, float]]] = {w: [] for w in variants}
    for repeat in range(args.repeats):
        for workers in alternate(variants, repeat):
            results[workers].append(one_run(workers, args.trials))
            print(
                f"repeat {repeat + 1}: {workers} worker(s): {results[workers][-1]['trials_per_hour']:.0f} trials/h",
                file=sys.stderr,
            )
    base = statistics.median(r["trials_per_hour"] for r in results[variants[0]])
    table = {}
    print(f"{'workers':>7}  {'trials/h median':>15}  {'min':>7}  {'max':>7}  {'ratio':>5}  {'wall s median':>13}")
    for workers, runs in results.items():
        rates = [r["trials_per_hour"] for r in runs]
        median = statistics.median(rates)
        table[workers] = {
            "trials_per_hour_median": median,
            "min": min(rates),
            "max": max(rates),
            "ratio": median / base,
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "runs": runs,
        }
        print(
            f"{workers:>7}  {median:>15.0f}  {min(rates):>7.0f}  {max(rates):>7.0f}  {median / base:>5.2f}  "
            f"{table[workers]['wall_s_median']:>13.1f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"trials": args.trials, "repeats": args.repeats, "results": table}, indent=2)
        )


if __name__ == "__main__":
    main()

"""The samplers and pruners on the shipped studies/regression.py: TPE against random search at equal trials, and
the epochs TPE with a pruner spends to reach the best validation loss random search reaches in 60 trials.

Run: python benchmarks/pruning.py [--only sampler|pruners] [--sampler-trials 50] [--sampler-seeds 0,1,2,3,4]
                                  [--trials 60] [--tpe-trials 100] [--seeds 0,1,2] [--pruners median,hyperband,sha]

sampler: for each seed, random search and TPE (no pruner) each run --sampler-trials trials (the study's own 50 by
default; the two alternate, seed by seed); printed: each one's best validation loss per seed, their medians over
seeds, TPE's median / random's (lower is better; the target is below 1) and the seeds where TPE found the better
model.

pruners: for each seed, random search without pruning runs --trials trials; its best value is the target and its
total epochs the baseline. Then TPE with each pruner runs up to --tpe-trials trials (the budget compared is epochs,
not trials: pruned trials are short); the epochs it spends (trials in the order they finished) until its best
value reaches the target are counted. The printed ratio is TPE+pruner epochs / random epochs (lower is better; the
target is 0.30 or less), medians over seeds; "inf" means the target was not reached.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from _common import SEARCHLAB
from optuna.trial import TrialState

STUDY = Path(__file__).resolve().parent.parent / "studies" / "regression.py"


def search(sampler: str, pruner: str, seed: int, trials: int) -> list[optuna.trial.FrozenTrial]:
    from searchlab.storage import open_storage

    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                *SEARCHLAB,
                "run",
                str(STUDY),
                "--trials",
                str(trials),
                "--sampler",
                sampler,
                "--pruner",
                pruner,
                "--seed",
                str(seed),
                "--no-check",
            ],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        journal = open_storage(str(Path(folder) / "searchlab.journal"))
        study = optuna.load_study(study_name="regression", storage=journal)
        return sorted(study.get_trials(), key=lambda trial: trial.datetime_complete)


def epochs(trial: optuna.trial.FrozenTrial) -> int:
    return len(trial.intermediate_values)


def epochs_to_reach(trials: list[optuna.trial.FrozenTrial], target: float) -> float:
    spent = 0
    for trial in trials:
        spent += epochs(trial)
        if trial.state == TrialState.COMPLETE and trial.value <= target:
            return spent
    return math.inf


def best_value(trials: list[optuna.trial.FrozenTrial]) -> float:
    return min(t.value for t in trials if t.state == TrialState.COMPLETE)


def compare_samplers(trials: int, seeds: list[int], results: dict[str, object]) -> None:
    """TPE against random search at equal trials, both without a pruner."""
    rows = []
    print(f"{'seed':>4}  {'random best':>11}  {'tpe best':>9}  {'tpe/random':>10}")
    for seed in seeds:
        random_best = best_value(search("random", "none", seed, trials))
        tpe_best = best_value(search("tpe", "none", seed, trials))
        rows.append({"seed": seed, "random": random_best, "tpe": tpe_best})
        print(f"{seed:>4}  {random_best:>11.5f}  {tpe_best:>9.5f}  {tpe_best / random_best:>10.3f}", flush=True)
    random_median = statistics.median(r["random"] for r in rows)
    tpe_median = statistics.median(r["tpe"] for r in rows)
    wins = sum(r["tpe"] < r["random"] for r in rows)
    print(
        f"median best over {len(rows)} seeds, {trials} trials each: random {random_median:.5f}, tpe {tpe_median:.5f}: "
        f"tpe/random {tpe_median / random_median:.3f} (target < 1); tpe better on {wins}/{len(rows)} seeds"
    )
    results["sampler"] = {"trials": trials, "runs": rows, "ratio": tpe_median / random_median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["sampler", "pruners"])
    parser.add_argument("--sampler-trials", type=int, default=50)
    parser.add_argument("--sampler-seeds", default="0,1,2,3,4")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--tpe-trials", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pruners", default="median,hyperband,sha")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results: dict[str, object] = {}
    if args.only != "pruners":
        compare_samplers(args.sampler_trials, [int(s) for s in args.sampler_seeds.split(",")], results)
    if args.only != "sampler":
        compare_pruners(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def compare_pruners(args: argparse.Namespace, results: dict[str, object]) -> None:
    """Epochs TPE with each pruner spends to reach random search's best."""
    pruners = args.pruners.split(",")
    rows: dict[str, list[dict[str, float]]] = {pruner: [] for pruner in pruners}
    for seed in (int(s) for s in args.seeds.split(",")):
        baseline = search("random", "none", seed, args.trials)
        target = best_value(baseline)
        random_epochs = sum(epochs(t) for t in baseline)
        for pruner in pruners:
            tuned = search("tpe", pruner, seed, args.tpe_trials)
            spent = epochs_to_reach(tuned, target)
            rows[pruner].append(
                {
                    "seed": seed,
                    "target": target,
                    "random_epochs": random_epochs,
                    "tpe_epochs": spent,
                    "ratio": spent / random_epochs,
                    "pruned": sum(t.state == TrialState.PRUNED for t in tuned),
                }
            )
            print(
                f"seed {seed}: random best {target:.4f} in {random_epochs} epochs; tpe+{pruner}: {spent} epochs "
                f"(ratio {spent / random_epochs:.2f})",
                file=sys.stderr,
            )
    print(f"{'pruner':>10}  {'ratio median':>12}  {'min':>5}  {'max':>5}  {'reached':>7}")
    for pruner, runs in rows.items():
        ratios = [r["ratio"] for r in runs]
        reached = sum(math.isfinite(r) for r in ratios)
        print(
            f"{pruner:>10}  {statistics.median(ratios):>12.2f}  {min(ratios):>5.2f}  {max(ratios):>5.2f}  "
            f"{reached:>4}/{len(ratios)}"
        )
    best = min(rows, key=lambda p: statistics.median(r["ratio"] for r in rows[p]))
    print(f"best pruner: {best} (median ratio {statistics.median(r['ratio'] for r in rows[best]):.2f}; target <= 0.30)")
    results["pruners"] = {"trials": args.trials, "results": rows}


if __name__ == "__main__":
    main()

"""Epochs that TPE with a pruner spends to reach the best validation loss random search reaches in 60 trials.

Run: python benchmarks/pruning.py [--trials 60] [--tpe-trials 100] [--seeds 0,1,2] [--pruners median,hyperband,sha]

For each seed: random search without pruning runs --trials trials of studies/regression.py; its best value is the
target and its total epochs the baseline. Then TPE with each pruner runs up to --tpe-trials trials (the budget
compared is epochs, not trials: pruned trials are short); the epochs it spends (trials in the order they finished)
until its best value reaches the target are counted. The printed ratio is TPE+pruner epochs / random epochs
(lower is better; the target is 0.30 or less), medians over seeds; "inf" means the target was not reached.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--tpe-trials", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pruners", default="median,hyperband,sha")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    pruners = args.pruners.split(",")
    rows: dict[str, list[dict[str, float]]] = {pruner: [] for pruner in pruners}
    for seed in (int(s) for s in args.seeds.split(",")):
        baseline = search("random", "none", seed, args.trials)
        target = min(t.value for t in baseline if t.state == TrialState.COMPLETE)
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
    if args.json:
        Path(args.json).write_text(json.dumps({"trials": args.trials, "results": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()

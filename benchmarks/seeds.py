"""How far apart do seeds put one configuration? The margin a nightly promotion has to beat.

    python benchmarks/seeds.py [--search 20] [--seeds 10] [--max-epochs 30]

On the shipped studies/regression.py: ``searchlab run --trials SEARCH`` finds a best configuration; that
configuration is then retrained with SEEDS trial seeds on the same data (the textbook loop searchlab trains, on the
CPU), and once more with its own recorded seed, which is what ``nightly --reevaluate`` does. Printed: each seed's
best val_loss, their spread (max-min and the standard deviation, relative to the median) against the default
--threshold of 1 %, and the recorded seed's value against the recorded one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import optuna
import torch
from _common import SEARCHLAB, clean_env, write_json
from history import STUDY_FILE, STUDY_NAME

from searchlab.data import load_split
from searchlab.model import new_trial
from searchlab.storage import open_storage
from searchlab.study import load_study_file
from searchlab.train import train_trial


def retrain(study: object, params: dict, seed: int, split: tuple, max_epochs: int, patience: int) -> float:
    """The configuration's best val_loss, trained with ``seed``."""
    fixed = optuna.trial.FixedTrial(params)
    _, result = train_trial(
        study,
        new_trial(study.space, fixed, seed),
        *split,
        torch.device("cpu"),
        max_epochs=max_epochs,
        patience=patience,
    )
    return result.best_val_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="searchlab-seeds-") as folder:
        command = [*SEARCHLAB, "run", STUDY_FILE, "--trials", str(args.search), "--max-epochs", str(args.max_epochs)]
        command += ["--no-report", "--no-register", "--threads", "1"]
        subprocess.run(command, cwd=folder, env=clean_env(), check=True, capture_output=True)
        storage = open_storage(str(Path(folder) / "searchlab.journal"))
        best = optuna.load_study(study_name=STUDY_NAME, storage=storage).best_trial
    study = load_study_file(STUDY_FILE)
    torch.set_num_threads(best.user_attrs["setup"]["threads"])
    split = load_split(study, best.user_attrs["setup"]["data_seed"])
    patience = best.user_attrs["setup"]["patience"]
    recorded_seed = best.user_attrs["seed"]
    own = retrain(study, best.params, recorded_seed, split, args.max_epochs, patience)
    values = [retrain(study, best.params, 1000 + seed, split, args.max_epochs, patience) for seed in range(args.seeds)]
    median = statistics.median(values)
    spread, stdev = (max(values) - min(values)) / median, statistics.stdev(values) / median
    print(f"best of {args.search} trials: trial {best.number}, val_loss {best.value:.6g}, params {best.params}")
    print(f"its own seed again: {own:.6g} ({own / best.value - 1:+.2%} from the recorded value)")
    print(f"{args.seeds} other seeds: " + ", ".join(f"{v:.5g}" for v in values))
    print(f"spread: max-min {spread:.1%} of the median, standard deviation {stdev:.1%}; the default threshold: 1%")
    print(f"seeds that 'beat' the recorded value by more than 1%: {sum(v < 0.99 * best.value for v in values)}")
    if args.out:
        write_json(args.out, {"recorded": best.value, "own_seed": own, "other_seeds": values, "spread": spread})


if __name__ == "__main__":
    main()

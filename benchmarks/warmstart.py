"""Does a night of a long study start from what earlier nights learned? Its first trials against a cold start's.

    python benchmarks/warmstart.py [--seeds 5] [--history 150] [--night 10] [--max-epochs 8]

For each seed, on the shipped studies/regression.py (the same data split: one --seed throughout):
- ``history``: ``searchlab run --trials HISTORY`` (the earlier nights; more than the sampler's window of 100 recent
  and 25 best trials, so the window is what it learns from);
- ``warm``: tonight on a copy of that study, ``searchlab run --trials NIGHT``;
- ``cold``: the same command on a new study (TPE's first 10 trials are random).
Warm and cold alternate. Printed per seed and as medians over the seeds: the best and the mean val_loss of tonight's
trials, and warm over cold.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import optuna
from _common import SEARCHLAB, alternate, clean_env, write_json
from history import STUDY_FILE, STUDY_NAME

from searchlab.storage import open_storage


def run(folder: Path, trials: int, seed: int, max_epochs: int) -> list[float]:
    """``searchlab run`` in ``folder``; the values of the trials it added."""
    before = count(folder)
    command = [*SEARCHLAB, "run", STUDY_FILE, "--trials", str(trials), "--max-epochs", str(max_epochs)]
    command += ["--seed", str(seed), "--no-report", "--no-register"]
    subprocess.run(command, cwd=folder, env=clean_env(), check=True, capture_output=True)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(str(folder / "searchlab.journal")))
    return [t.value for t in study.get_trials(deepcopy=False)[before:] if t.value is not None]


def count(folder: Path) -> int:
    if not (folder / "searchlab.journal").exists():
        return 0
    storage = open_storage(str(folder / "searchlab.journal"))
    return len(optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials(deepcopy=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--history", type=int, default=150)
    parser.add_argument("--night", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="searchlab-warm-") as scratch:
            history = Path(scratch) / "history"
            history.mkdir()
            run(history, args.history, seed, args.max_epochs)
            found: dict[str, list[float]] = {}
            for variant in alternate(["warm", "cold"], seed):
                folder = Path(scratch) / variant
                if variant == "warm":
                    shutil.copytree(history, folder)
                else:
                    folder.mkdir()
                found[variant] = run(folder, args.night, seed, args.max_epochs)
        row = {"seed": seed, **{f"{v}_{f.__name__}": f(found[v]) for v in found for f in (min, statistics.mean)}}
        rows.append(row)
        print({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    print(f"\nmedians over {args.seeds} seeds ({args.history} earlier trials, {args.night} tonight, "
          f"--max-epochs {args.max_epochs})")  # fmt: skip
    for name in ("min", "mean"):
        warm = statistics.median(row[f"warm_{name}"] for row in rows)
        cold = statistics.median(row[f"cold_{name}"] for row in rows)
        wins = sum(row[f"warm_{name}"] < row[f"cold_{name}"] for row in rows)
        label = "best" if name == "min" else "mean"
        print(f"  {label} val_loss tonight: warm {warm:.5f}, cold {cold:.5f}, warm/cold {warm / cold:.3f}, "
              f"warm better on {wins} of {len(rows)} seeds")  # fmt: skip
    if args.out:
        write_json(args.out, rows)


if __name__ == "__main__":
    main()

"""Packed trials: trials per hour unpacked against --pack 4/8/16 (one worker, one thread) and with two workers, all
tracked to a tracking server over HTTP; and what packs do to the search (TPE's best value over seeds).

Run: python benchmarks/packing.py [--only throughput,quality] [--trials 32] [--repeats 2] [--packs 1,4,8,16]
                                  [--quality-seeds 5] [--json FILE]

- throughput  `searchlab run benchmarks/studies/packing_workload.py --workers W --pack K --threads 1` in a fresh
              folder per run (journal storage; trials' runs, params, curves and weights to a `searchlab server`),
              variants alternating (reversed every other repeat). Trials per hour count the trials between the
              first trial's start and the last one's end (start-up and publishing are not trials). Target: K = 8
              gives at least 2.5x the trials per hour of unpacked.
- quality     TPE on benchmarks/studies/regression_workload.py (width and batch size searched), unpacked against
              --pack 8, the same number of trials, one run per seed: the median over seeds of each best validation
              loss. Target: packed within 2 % of unpacked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna
import parallel  # benchmarks/parallel.py: one timed `searchlab run` of a benchmark study
from _common import HERE, SEARCHLAB, alternate, clean_env, tracking_server

OPTIONS = ["--threads", "1", "--no-report", "--no-register", "--no-check"]


def throughput(args: argparse.Namespace, url: str) -> dict[str, Any]:
    variants = [(1, k) for k in args.packs] + [(2, 1), (2, max(args.packs))]
    runs: dict[str, list[dict[str, float]]] = {f"{w}x{k}": [] for w, k in variants}
    for repeat in range(args.repeats):
        for workers, pack in alternate(variants, repeat):
            options = [*OPTIONS, "--pack", str(pack), "--tracking-uri", url]
            run = parallel.one_run(workers, args.trials, study="packing_workload", options=options)
            runs[f"{workers}x{pack}"].append(run)
            print(
                f"repeat {repeat + 1}: {workers} worker(s), pack {pack}: {run['trials_per_hour']:.0f} trials/h",
                file=sys.stderr,
            )
    base = statistics.median(r["trials_per_hour"] for r in runs["1x1"])
    print(
        f"\n{'workers':>7}  {'pack':>4}  {'trials/h median':>15}  {'min':>7}  {'max':>7}  {'x unpacked':>10}  "
        f"{'wall s':>6}"
    )
    table = {}
    for workers, pack in variants:
        rates = [r["trials_per_hour"] for r in runs[f"{workers}x{pack}"]]
        median = statistics.median(rates)
        wall = statistics.median(r["wall_s"] for r in runs[f"{workers}x{pack}"])
        table[f"{workers}x{pack}"] = {"median": median, "min": min(rates), "max": max(rates), "ratio": median / base}
        print(
            f"{workers:>7}  {pack:>4}  {median:>15.0f}  {min(rates):>7.0f}  {max(rates):>7.0f}  "
            f"{median / base:>10.2f}  {wall:>6.1f}"
        )
    eight = table.get("1x8", {}).get("ratio")
    if eight is not None:
        print(f"target: pack 8 >= 2.5 x unpacked: {eight:.2f} -> {'pass' if eight >= 2.5 else 'FAIL'}")
    return {"runs": runs, "table": table}


def best_value(pack: int, seed: int, trials: int) -> float:
    """TPE's best validation loss on the regression workload after ``trials`` trials (one worker)."""
    from searchlab.storage import open_storage

    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [*SEARCHLAB, "run", str(HERE / "studies" / "regression_workload.py"), "--trials", str(trials),
             "--seed", str(seed), "--pack", str(pack), "--sampler", "tpe", *OPTIONS],
            cwd=folder, check=True, capture_output=True, env=clean_env(),
        )  # fmt: skip
        storage = open_storage(str(Path(folder) / "searchlab.journal"))
        return float(optuna.load_study(study_name="regression-workload", storage=storage).best_value)


def quality(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[int, list[float]] = {pack: [] for pack in args.quality_packs}
    for seed in range(args.first_seed, args.first_seed + args.quality_seeds):
        for pack in alternate(args.quality_packs, seed):
            values[pack].append(best_value(pack, seed, args.trials))
            print(f"seed {seed}: pack {pack}: best {values[pack][-1]:.5f}", file=sys.stderr)
    medians = {pack: statistics.median(found) for pack, found in values.items()}
    print(f"\nTPE, {args.trials} trials, median best val_loss over {args.quality_seeds} seeds:")
    for pack, median in medians.items():
        print(f"  pack {pack}: {median:.5f}" + (f" ({median / medians[1]:.3f} x unpacked)" if 1 in medians else ""))
    result: dict[str, Any] = {"values": values, "medians": medians}
    if 1 in medians and 8 in medians:
        result["ratio"] = ratio = medians[8] / medians[1]
        print(f"target: pack 8 within 2 % of unpacked: {ratio:.3f} -> {'pass' if ratio <= 1.02 else 'FAIL'}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--packs", default="1,4,8,16", help="pack sizes of one worker (1: unpacked, first)")
    parser.add_argument("--only", default="throughput,quality", help="comma-separated subset of: throughput,quality")
    parser.add_argument("--quality-seeds", type=int, default=5, help="seeds of the search-quality comparison")
    parser.add_argument("--first-seed", type=int, default=0, help="the quality comparison's first seed")
    parser.add_argument("--quality-packs", default="1,8", help="pack sizes the quality comparison runs")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    args.packs = [int(k) for k in args.packs.split(",")]
    args.quality_packs = [int(k) for k in args.quality_packs.split(",")]
    results: dict[str, Any] = {"trials": args.trials, "repeats": args.repeats}
    selected = {name.strip() for name in args.only.split(",")}
    if "throughput" in selected:
        with tempfile.TemporaryDirectory(prefix="searchlab-packing-") as folder, tracking_server(Path(folder)) as url:
            results["throughput"] = throughput(args, url)
    if "quality" in selected:
        results["quality"] = quality(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

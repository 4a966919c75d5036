"""Packed trials: trials per hour unpacked against --pack 4/8/16 (one worker, one thread) and with two workers, all
tracked to a tracking server over HTTP; and what packs do to the search (TPE's best value over seeds).

Run: python benchmarks/packing.py [--only throughput,quality] [--trials 32] [--repeats 2] [--packs 1,4,8,16]
                                  [--study packing_workload] [--quality-seeds 5] [--first-seed 0]
                                  [--quality-variants 1,8] [--json FILE]

- throughput  `searchlab run benchmarks/studies/STUDY.py --workers W --pack K --threads 1` in a fresh
              folder per run (journal storage; trials' runs, params, curves and weights to a `searchlab server`),
              variants alternating (reversed every other repeat). Trials per hour count the trials between the
              first trial's start and the last one's end (start-up and publishing are not trials). Target: K = 8
              gives at least 2.5x the trials per hour of unpacked.
- quality     TPE on benchmarks/studies/regression_workload.py (width and batch size searched), unpacked against
              --pack 8, the same number of trials, one run per seed: the median over seeds of each best validation
              loss, and its 90 % bootstrap interval. Target: packed within 2 % of unpacked. Other variants: eight
              unpacked workers (w8: the same eight-at-a-time sampling without a pack), packs given the trials
              unpacked would take in their time (8x92).
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
            run = parallel.one_run(workers, args.trials, study=args.study, options=options)
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


def variant(name: str, trials: int) -> tuple[int, int, int]:
    """A quality variant's (pack size, workers, trials): "8" packs of 8 in one worker, "w8" eight unpacked workers
    (TPE sampling eight trials at a time, with its constant liar, as a pack does), "8x77" packs of 8 for 77 trials."""
    spec, _, more = name.partition("x")
    workers = int(spec[1:]) if spec.startswith("w") else 1
    return (1 if spec.startswith("w") else int(spec)), workers, int(more) if more else trials


def best_value(name: str, seed: int, trials: int) -> float:
    """TPE's best validation loss on the regression workload, run as the variant ``name`` says."""
    from searchlab.storage import open_storage

    pack, workers, trials = variant(name, trials)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [*SEARCHLAB, "run", str(HERE / "studies" / "regression_workload.py"), "--trials", str(trials),
             "--seed", str(seed), "--pack", str(pack), "--workers", str(workers), "--sampler", "tpe", *OPTIONS],
            cwd=folder, check=True, capture_output=True, env=clean_env(),
        )  # fmt: skip
        storage = open_storage(str(Path(folder) / "searchlab.journal"))
        return float(optuna.load_study(study_name="regression-workload", storage=storage).best_value)


def median_interval(values: list[float]) -> tuple[float, float]:
    """A 90 % bootstrap interval of the median: how far another set of seeds may move it (what a comparison of
    medians over these seeds can resolve)."""
    import numpy as np

    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(np.asarray(values), size=(10_000, len(values))), axis=1)
    low, high = np.percentile(medians, [5, 95])
    return float(low), float(high)


def quality(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, list[float]] = {name: [] for name in args.quality_variants}
    for seed in range(args.first_seed, args.first_seed + args.quality_seeds):
        for name in alternate(args.quality_variants, seed):
            values[name].append(best_value(name, seed, args.trials))
            print(f"seed {seed}: {name}: best {values[name][-1]:.5f}", file=sys.stderr)
    medians = {name: statistics.median(found) for name, found in values.items()}
    print(f"\nTPE on regression_workload, median best val_loss over {args.quality_seeds} seeds ({args.trials} trials "
          "unless the variant says):")  # fmt: skip
    intervals = {name: median_interval(found) for name, found in values.items()}
    for name, median in medians.items():
        pack, workers, trials = variant(name, args.trials)
        ratio = f" ({median / medians['1']:.3f} x unpacked)" if "1" in medians else ""
        low, high = intervals[name]
        print(f"  pack {pack}, {workers} worker(s), {trials} trials: {median:.5f}{ratio}, 90 % {low:.5f}-{high:.5f}")
    result: dict[str, Any] = {"values": values, "medians": medians, "intervals": intervals}
    if "1" in medians and "8" in medians:
        result["ratio"] = ratio_8 = medians["8"] / medians["1"]
        print(f"target: pack 8 within 2 % of unpacked: {ratio_8:.3f} -> {'pass' if ratio_8 <= 1.02 else 'FAIL'}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument(
        "--study",
        default="packing_workload",
        help="the throughput's study in benchmarks/studies (regression_workload: width and batch size searched,"
        " each pack training its first trial's)",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--packs", default="1,4,8,16", help="pack sizes of one worker (1: unpacked, first)")
    parser.add_argument("--only", default="throughput,quality", help="comma-separated subset of: throughput,quality")
    parser.add_argument("--quality-seeds", type=int, default=5, help="seeds of the search-quality comparison")
    parser.add_argument("--first-seed", type=int, default=0, help="the quality comparison's first seed")
    parser.add_argument("--quality-variants", default="1,8", help='what the quality comparison runs: "K" packs of K, '
                        '"wN" N unpacked workers, "KxT" packs of K for T trials (e.g. 1,8,w8,8x77)')  # fmt: skip
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    args.packs = [int(k) for k in args.packs.split(",")]
    args.quality_variants = args.quality_variants.split(",")
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

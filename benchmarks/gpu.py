"""Trials per hour of one GPU: 1, 2 or 4 worker processes sharing it, or one worker training packs of 8-32 trials.

Run: python benchmarks/gpu.py [--packing 1,4,p8,p16,p32] [--trials 64] [--repeats 2] [--devices cuda:0] [--json F]

Each run is a fresh `searchlab run benchmarks/studies/gpu_bound.py --devices cuda:0 --no-report` in its own folder:
a variant N runs N workers on the one GPU (``--workers N --trials-per-device N``); a variant pK runs one worker
that trains K trials at once as one vectorised model (``--pack K``). Throughput counts trials between
the first trial's start and the last trial's end (start-up and exit are reported apart); nvidia-smi, sampled
meanwhile, gives the GPU's mean utilisation and its peak memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import parallel  # benchmarks/parallel.py: one timed `searchlab run` of a benchmark study
from _common import alternate


class GpuSampler:
    """nvidia-smi's utilisation and memory of one GPU every 200 ms while the block runs (nothing without it)."""

    def __init__(self, gpu: str) -> None:
        self.gpu, self.lines = gpu, ""

    def __enter__(self) -> GpuSampler:
        self.process = None
        if shutil.which("nvidia-smi") and self.gpu.startswith("cuda"):
            index = self.gpu.split(":", 1)[1] if ":" in self.gpu else "0"
            self.process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "-i",
                    index,
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            self.lines = self.process.communicate()[0]

    def figures(self) -> dict[str, float]:
        samples = [[float(v) for v in line.split(",")] for line in self.lines.splitlines() if line.count(",") == 1]
        if not samples:
            return {}
        return {
            "gpu_util_mean_pct": statistics.fmean(s[0] for s in samples),
            "gpu_memory_peak_mib": max(s[1] for s in samples),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packing", default="1,4,p8,p16,p32", help="N processes per GPU, or pK: packs of K")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--devices", default="cuda:0", help="the GPU to pack (cpu: a dry run of this script)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    variants = [n.strip() for n in args.packing.split(",")]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in variants}
    for repeat in range(args.repeats):
        for packed in alternate(variants, repeat):
            workers, options = (1, ["--pack", packed[1:]]) if packed.startswith("p") else (int(packed), [])
            options += ["--devices", args.devices, "--trials-per-device", str(workers), "--no-report"]
            with GpuSampler(args.devices) as sampler:
                run = parallel.one_run(workers, args.trials, study="gpu_bound", options=options)
            results[packed].append({**run, **sampler.figures()})
            print(f"repeat {repeat + 1}: {packed} per GPU: {json.dumps(results[packed][-1])}", file=sys.stderr)
    base = statistics.median(r["trials_per_hour"] for r in results[variants[0]])
    table: dict[str, dict[str, Any]] = {}
    print(
        f"{'per GPU':>7}  {'trials/h median':>15}  {'min':>7}  {'max':>7}  {'ratio':>5}  {'trial s':>7}  "
        f"{'GPU util %':>10}  {'GPU MiB':>7}  {'wall s':>6}"
    )
    for packed, runs in results.items():
        rates = [r["trials_per_hour"] for r in runs]
        median = statistics.median(rates)
        row = {
            "trials_per_hour_median": median,
            "min": min(rates),
            "max": max(rates),
            "ratio": median / base,
            "trial_s_median": statistics.median(r["trial_s_median"] for r in runs),
            "gpu_util_mean_pct": statistics.median(r.get("gpu_util_mean_pct", float("nan")) for r in runs),
            "gpu_memory_peak_mib": max(r.get("gpu_memory_peak_mib", float("nan")) for r in runs),
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "runs": runs,
        }
        table[packed] = row
        print(
            f"{packed:>7}  {median:>15.0f}  {min(rates):>7.0f}  {max(rates):>7.0f}  {row['ratio']:>5.2f}  "
            f"{row['trial_s_median']:>7.2f}  {row['gpu_util_mean_pct']:>10.0f}  {row['gpu_memory_peak_mib']:>7.0f}  "
            f"{row['wall_s_median']:>6.1f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"trials": args.trials, "repeats": args.repeats, "devices": args.devices, "results": table}, indent=2
            )
        )


if __name__ == "__main__":
    main()

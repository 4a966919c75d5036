"""The performance suite: framework overhead, the naive MLflow script, scaling, start-up, data path, side by side.

Run: python benchmarks/suite.py [--repeats 3] [--json benchmarks/results/suite.json]
                                [--only overhead,naive,batch32,small,scaling,startup,data]
                                [--workload benchmarks/studies/regression_workload.py]
                                [--study benchmarks/studies/diabetes.py]

Each benchmark alternates its variants (reversed order every other repeat), each measurement in a fresh
process; the table gives the median, min and max over repeats, the ratio the issue's target is about, and
pass/fail. The JSON holds the table, every raw figure, the breakdown of a tracked study's time and the machine.

- overhead  ``searchlab`` (``run_study``, one worker, journal storage, full tracking to a ``searchlab server``
            over HTTP: parent and child runs, params, curves, state_dict; overfit check off, no report, no model
            registration) against ``bare`` (the same trials, params, seeds and epochs through
            ``objective.train_trial``, no Optuna, no tracking): target searchlab <= 1.05 x bare; and ``searchlab``
            as run by default (+ the study report and the best model registered); and ``bare+traffic``, the bare
            loop while another process makes one tracked trial's MLflow calls per trial-length against the same
            server (what the server's work on these cores costs the training, whoever sends). On ``--workload``: the
            regression workload at the issue's scale (a trial trains ~1 s; the naive script takes ~1.5x bare).
            (benchmarks/overhead.py)
- batch32   the overhead variants and the naive script again on benchmarks/studies/batch32_workload.py (batch 32,
            20,000 training and 5,000 validation rows, ~2.4 s per trial): a shape the suite was not tuned on, where
            per-batch costs (validation at the training batch size was one) show. Same targets.
- naive     the same study as an Optuna objective with synchronous ``mlflow.log_metric`` per metric per epoch
            and ``mlflow.log_artifact`` for the weights: target searchlab <= 0.70 x naive.
- small     ``searchlab`` against ``bare`` on ``--study`` (benchmarks/studies/diabetes.py, ~50-120 ms per
            trial): what searchlab costs per trial where a trial is tiny (no target).
- scaling   benchmarks/parallel.py's trials per hour with 1 and 2 workers: target 2 workers >= 1.8 x 1 worker.
- startup   import cost of each entry point, ``searchlab run`` to the first epoch (1 and 2 workers), and where the
            first seconds go. (benchmarks/startup.py)
- data      in-memory batches against DataLoader(TensorDataset) at batch sizes 32/64/128, and the share of an
            epoch outside forward/backward/step. (benchmarks/datapath.py)

Before the timed overhead repeats, one untimed searchlab run samples the trials that ``bare`` retrains (the
sampler is seeded: every run samples the same ones, which the suite checks) and is timed part by part.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_STUDY,
    HERE,
    LOADS,
    SERVER_GROUPS,
    alternate,
    group_cpu_s,
    run_child,
    stats,
    tracking_server,
    write_json,
)

BENCHMARKS = ("overhead", "naive", "batch32", "small", "scaling", "startup", "data")
WORKLOAD = str(HERE / "studies" / "regression_workload.py")
BATCH32_WORKLOAD = str(HERE / "studies" / "batch32_workload.py")
# The breakdown's parts that the bare loop does too (benchmarks/_probe.py's names); fit's own time (callbacks
# included) counts as overhead.
TRAINING_PARTS = (
    "train epochs",
    "validation",
    "per-trial model build",
    "per-trial optimizer",
    "per-trial batches",
    "data load",
)
DEFAULT_JSON = HERE / "results" / "suite.json"


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        benchmark: str,
        variant: str,
        unit: str,
        values: list[float],
        *,
        ratio: float | None = None,
        target: str = "",
        passed: bool | None = None,
    ) -> None:
        self.rows.append(
            {
                "benchmark": benchmark,
                "variant": variant,
                "unit": unit,
                **stats(values),
                "values": values,
                "ratio": ratio,
                "target": target,
                "pass": passed,
            }
        )

    def print(self) -> None:
        header = (
            f"{'benchmark':<10} {'variant':<58} {'median':>9} {'min':>9} {'max':>9} {'unit':<8} {'ratio':>6}  "
            f"{'target':<18} result"
        )
        print(header)
        print("-" * len(header))
        for row in self.rows:
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
            verdict = "" if row["pass"] is None else ("PASS" if row["pass"] else "FAIL")
            print(
                f"{row['benchmark']:<10} {row['variant']:<58} {fmt(row['median']):>9} {fmt(row['min']):>9} "
                f"{fmt(row['max']):>9} {row['unit']:<8} {ratio:>6}  {row['target']:<18} {verdict}"
            )


def fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in ("torch", "mlflow", "optuna", "torchmetrics", "sklearn"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads_default": torch.get_num_threads(),
        "versions": versions,
        "load_average_start": os.getloadavg(),
    }


def overhead(
    args: argparse.Namespace,
    table: Table,
    details: dict[str, Any],
    uri: str,
    selected: set[str],
    *,
    study: str,
    name: str,
    targets: bool,
) -> None:
    """The overhead variants on one study; ``targets``: the study the issue's ratios are judged on (with the
    naive script and the default run with its report and registry), else the per-trial cost only."""
    common = ["--study", study, "--trials", str(args.trials), "--epochs", str(args.epochs)]
    with tempfile.TemporaryDirectory(prefix="searchlab-overhead-") as folder:
        log(f"{name}: untimed searchlab run (samples the trials; timed part by part)")
        prepared = run_child(
            "overhead", ["searchlab", *common, "--tracking-uri", uri, "--breakdown"], cwd=tempfile.mkdtemp(dir=folder)
        )
        params_file = Path(folder) / "params.json"
        write_json(params_file, prepared)
        details[f"{name}_breakdown"] = prepared["breakdown"]
        details[f"{name}_prepare"] = {k: v for k, v in prepared.items() if k != "breakdown"}
        variants = (
            ["searchlab", "bare"]
            + (["searchlab+publish", "bare+traffic"] if targets else [])
            + (["naive"] if targets and "naive" in selected else [])
        )
        period = prepared["wall_s"] / args.trials  # bare+traffic replays a trial's MLflow calls at searchlab's pace
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        latencies: list[dict[str, float]] = []
        for repeat in range(args.repeats):
            for variant in alternate(variants, repeat):
                extra = {
                    "searchlab": ["--tracking-uri", uri],
                    "searchlab+publish": ["--tracking-uri", uri, "--report", "--register"],
                    "bare": ["--params", str(params_file)],
                    "bare+traffic": ["--params", str(params_file), "--tracking-uri", uri, "--period", f"{period:.3f}"],
                    "naive": ["--tracking-uri", uri, "--breakdown"],
                }[variant]
                server_cpu = group_cpu_s(SERVER_GROUPS[uri])
                result = run_child(
                    "overhead", [variant.removesuffix("+publish"), *common, *extra], cwd=tempfile.mkdtemp(dir=folder)
                )
                result["server_cpu_s"] = group_cpu_s(SERVER_GROUPS[uri]) - server_cpu
                runs[variant].append(result)
                log(f"{name} repeat {repeat + 1}: {variant} {result['wall_s']:.2f} s ({result['epochs']} epochs)")
            latencies.append(run_child("overhead", ["latency", "--tracking-uri", uri]))
    digest = prepared["params_digest"]
    same = {
        v: all(r["params_digest"] == digest and r["epochs"] == prepared["epochs"] for r in rs) for v, rs in runs.items()
    }
    details[f"{name}_runs"] = {
        v: [{k: x for k, x in r.items() if k not in ("trials",)} for r in rs] for v, rs in runs.items()
    }
    details[f"{name}_same_trials"] = same
    details[f"{name}_latency"] = latencies
    wall = {v: [r["wall_s"] for r in rs] for v, rs in runs.items()}
    bare = statistics.median(wall["bare"])
    searchlab = statistics.median(wall["searchlab"])
    ratio = searchlab / bare
    short = Path(study).name
    table.add(name, f"bare loop ({short}, {args.trials} trials x {args.epochs} epochs)", "s", wall["bare"], ratio=1.0)
    table.add(name, "searchlab, tracked over HTTP, no report or registry (/ bare)", "s", wall["searchlab"], ratio=ratio)
    # The machine's speed drifts over minutes (a shared host): each repeat's own ratio is judged, not the medians'.
    paired = [s / b for s, b in zip(wall["searchlab"], wall["bare"], strict=True)]
    table.add(
        name,
        "searchlab / bare, each repeat (median ratio)",
        "ratio",
        paired,
        ratio=statistics.median(paired),
        target="<= 1.05 x bare" if targets else "",
        passed=(statistics.median(paired) <= 1.05 and same["searchlab"]) if targets else None,
    )
    # Within one run, immune to the machine's drift: the share of the tracked run's wall time spent outside the
    # training loop (what the untimed breakdown run's main thread did besides train_trial's epochs and builds).
    parts = prepared["breakdown"]["parts_s"]
    training = sum(seconds for part, seconds in parts.items() if part.startswith(TRAINING_PARTS))
    table.add(
        name,
        "share of a tracked run outside training (breakdown run)",
        "share",
        [1 - training / prepared["breakdown"]["total_s"]],
    )
    # CPU time: what the tracked run costs the machine's cores (the server's included), and whether the training
    # thread itself needs more of it in the tracked process.
    cpu = {v: [r["cpu_s"] for r in rs] for v, rs in runs.items()}
    process = [s / b for s, b in zip(cpu["searchlab"], cpu["bare"], strict=True)]
    table.add(
        name,
        "CPU: searchlab process (all threads) / bare process, each repeat",
        "ratio",
        process,
        ratio=statistics.median(process),
    )
    trained = [
        r["main_thread_cpu_s"] / b["main_thread_cpu_s"] for r, b in zip(runs["searchlab"], runs["bare"], strict=True)
    ]
    table.add(
        name,
        "CPU: searchlab's main (training) thread / bare's, each repeat",
        "ratio",
        trained,
        ratio=statistics.median(trained),
    )
    served = [r["server_cpu_s"] for r in runs["searchlab"]]
    table.add(
        name,
        "CPU: tracking server per trial of a searchlab run",
        "ms",
        [1000 * seconds / args.trials for seconds in served],
    )
    table.add(name, "CPU: tracking server during a bare run (idle)", "s", [r["server_cpu_s"] for r in runs["bare"]])
    total = [
        (r["cpu_s"] + r["server_cpu_s"]) / b["cpu_s"] for r, b in zip(runs["searchlab"], runs["bare"], strict=True)
    ]
    table.add(
        name,
        "CPU: searchlab process + tracking server / bare process, each repeat",
        "ratio",
        total,
        ratio=statistics.median(total),
    )
    if "bare+traffic" in wall:
        # The same bare loop while another process makes one tracked trial's MLflow calls per trial-length against
        # the same server: what tracking to a server on this machine costs the training, whoever makes the calls.
        table.add(
            name,
            f"bare loop + a trial's MLflow calls every {period:.2f} s, other process (/ bare)",
            "s",
            wall["bare+traffic"],
            ratio=statistics.median(wall["bare+traffic"]) / bare,
        )
        traffic = [t / b for t, b in zip(wall["bare+traffic"], wall["bare"], strict=True)]
        table.add(
            name,
            "bare + traffic / bare, each repeat (median ratio): the server's share",
            "ratio",
            traffic,
            ratio=statistics.median(traffic),
        )
        beyond = [s / t for s, t in zip(wall["searchlab"], wall["bare+traffic"], strict=True)]
        table.add(
            name,
            "searchlab / (bare + traffic), each repeat (median ratio): searchlab's own",
            "ratio",
            beyond,
            ratio=statistics.median(beyond),
        )
    if "searchlab+publish" in wall:
        by_default = statistics.median(wall["searchlab+publish"])
        table.add(
            name,
            "searchlab as run by default, + report + registry (/ bare)",
            "s",
            wall["searchlab+publish"],
            ratio=by_default / bare,
        )
        table.add(
            name,
            "report + registry, once per run (default - without)",
            "s",
            [r - s for r, s in zip(wall["searchlab+publish"], wall["searchlab"], strict=True)],
        )
    # What each trial costs on top of training, pairing each repeat's runs: the target holds for any workload
    # whose bare trial takes at least 20 x this.
    table.add(
        name,
        "searchlab cost per trial ((searchlab - bare) / trials)",
        "ms",
        [1000 * (s - b) / args.trials for s, b in zip(wall["searchlab"], wall["bare"], strict=True)],
        target=f"<= {50 * bare / args.trials:.1f} ms here",
    )
    per_call = {key: [run[key] for run in latencies] for key in latencies[0]}
    table.add(name, "one MLflow log_batch, kept-alive connection", "ms", per_call["log_batch_keepalive_ms"])
    if "naive" in runs:
        naive = statistics.median(wall["naive"])
        row = "naive" if name == "overhead" else f"{name} naive"
        table.add(
            row,
            "naive mlflow.log_metric script (/ bare)",
            "s",
            wall["naive"],
            ratio=naive / bare,
            target="(issue: ~1.5)",
        )
        table.add(
            row,
            "naive cost per trial ((naive - bare) / trials)",
            "ms",
            [1000 * (n - b) / args.trials for n, b in zip(wall["naive"], wall["bare"], strict=True)],
        )
        table.add(row, "searchlab, no report or registry (/ naive)", "s", wall["searchlab"], ratio=searchlab / naive)
        paired = [s / n for s, n in zip(wall["searchlab"], wall["naive"], strict=True)]
        table.add(
            row,
            "searchlab / naive, each repeat (median ratio)",
            "ratio",
            paired,
            ratio=statistics.median(paired),
            target="<= 0.70 x naive",
            passed=statistics.median(paired) <= 0.70 and same["naive"],
        )


def scaling(args: argparse.Namespace, table: Table, details: dict[str, Any]) -> None:
    import parallel  # benchmarks/parallel.py: one `searchlab run` of its CPU-bound study, trials per hour

    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for workers in alternate([1, 2], repeat):
            runs[workers].append(parallel.one_run(workers, args.scaling_trials))
            LOADS.append(os.getloadavg()[0])
            log(f"scaling repeat {repeat + 1}: {workers} worker(s) {runs[workers][-1]['trials_per_hour']:.0f} trials/h")
    details["scaling"] = runs
    rates = {w: [r["trials_per_hour"] for r in rs] for w, rs in runs.items()}
    table.add("scaling", f"1 worker ({args.scaling_trials} trials, cpu_bound)", "trials/h", rates[1], ratio=1.0)
    table.add(
        "scaling",
        "2 workers (/ 1 worker)",
        "trials/h",
        rates[2],
        ratio=statistics.median(rates[2]) / statistics.median(rates[1]),
    )
    # As for the overhead: each repeat's own ratio (its two runs are next to each other in time) is judged.
    paired = [two / one for two, one in zip(rates[2], rates[1], strict=True)]
    ratio = statistics.median(paired)
    table.add(
        "scaling",
        "2 workers / 1 worker, each repeat (median ratio)",
        "ratio",
        paired,
        ratio=ratio,
        target=">= 1.8 x 1 worker",
        passed=ratio >= 1.8,
    )
    # The machine's own scaling: plain torch loops in 1 and 2 processes, no searchlab.
    plain: dict[int, list[float]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for processes in alternate([1, 2], repeat):
            plain[processes].append(parallel.plain_torch_rate(processes))
    details["scaling_plain_torch"] = plain
    machine = statistics.median(plain[2]) / statistics.median(plain[1])
    table.add("scaling", "plain torch loops, 2 processes (/ 1): the machine's own", "steps/s", plain[2], ratio=machine)
    table.add(
        "scaling", "searchlab's 2-worker ratio / the machine's", "share", [ratio / machine], ratio=ratio / machine
    )
    walls = {w: [r["wall_s"] for r in rs] for w, rs in runs.items()}
    table.add("scaling", "1 worker, whole command", "s", walls[1])
    table.add(
        "scaling",
        "2 workers, whole command (/ 1 worker)",
        "s",
        walls[2],
        ratio=statistics.median(walls[2]) / statistics.median(walls[1]),
    )
    for workers in (1, 2):
        table.add(
            "scaling",
            f"{workers} worker(s): command start -> first trial",
            "s",
            [r["before_first_trial_s"] for r in runs[workers]],
        )
        table.add(
            "scaling",
            f"{workers} worker(s): last trial's end -> command exit",
            "s",
            [r["after_last_trial_s"] for r in runs[workers]],
        )


def startup(args: argparse.Namespace, table: Table, details: dict[str, Any], uri: str) -> None:
    imports = [run_child("startup", ["imports", "--study", args.study]) for _ in range(args.repeats)]
    log("startup: imports measured")
    variants = {
        "http, 1 worker": ["--workers", "1", "--tracking-uri", uri],
        "http, 2 workers": ["--workers", "2", "--tracking-uri", uri],
        "fresh sqlite store, 1 worker": ["--workers", "1"],
    }
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in alternate(list(variants), repeat):
            result = run_child(
                "startup", ["first-epoch", "--study", args.study, "--epochs", str(args.epochs), *variants[variant]]
            )
            runs[variant].append(result)
            log(f"startup repeat {repeat + 1}: {variant}: first epoch at {result['first_epoch_s']:.2f} s")
    details["startup_imports"] = imports
    details["startup_first_epoch"] = runs
    details["startup_steps"] = run_child("startup", ["setup", "--study", args.study, "--tracking-uri", uri])
    for path in imports[0]:
        walls = [run[path]["wall_s"] for run in imports]
        heavy = imports[0][path]["heavy_loaded"]
        if path == "searchlab --help":
            table.add(
                "startup",
                "searchlab --help (console script)",
                "s",
                [run[path]["command_wall_s"] for run in imports],
                target="no torch/mlflow",
                passed=not {"torch", "mlflow", "optuna"} & set(heavy),
            )
        elif path == "import searchlab":
            table.add(
                "startup",
                path,
                "s",
                walls,
                target="no torch/mlflow",
                passed=not {"torch", "mlflow", "optuna"} & set(heavy),
            )
        else:
            table.add("startup", f"imports: {path}", "s", walls)
    for variant, results in runs.items():
        table.add("startup", f"run -> first epoch ({variant})", "s", [r["first_epoch_s"] for r in results])
        if variant.endswith("2 workers"):
            table.add(
                "startup",
                f"run -> last worker's first epoch ({variant})",
                "s",
                [r["last_worker_first_epoch_s"] for r in results],
            )
            table.add(
                "startup",
                f"worker spawn -> its first epoch ({variant})",
                "s",
                [w["worker_start_to_first_epoch_s"] for r in results for w in r["per_worker"].values()],
            )
        table.add("startup", f"run -> set-up done ({variant})", "s", [r["parent_run_s"] for r in results])


def data(args: argparse.Namespace, table: Table, details: dict[str, Any]) -> None:
    result = run_child("datapath", ["--study", args.study, "--repeats", str(args.repeats)])
    details["data"] = result
    for batch_size, figures in result["batch_sizes"].items():
        ms = figures["ms"]

        def values(name: str, ms: dict[str, Any] = ms) -> list[float]:
            return ms[name]["values"]

        table.add("data", f"bs {batch_size}: batches only, in memory", "ms/epoch", values("batches memory"))
        table.add(
            "data",
            f"bs {batch_size}: batches only, DataLoader (/ memory)",
            "ms/epoch",
            values("batches loader"),
            ratio=figures["loader_over_memory_batches"],
        )
        table.add("data", f"bs {batch_size}: fit epoch, in memory", "ms/epoch", values("epoch memory"))
        table.add(
            "data",
            f"bs {batch_size}: fit epoch, DataLoader (/ memory)",
            "ms/epoch",
            values("epoch loader"),
            ratio=figures["loader_over_memory_epoch"],
        )
        table.add(
            "data",
            f"bs {batch_size}: forward/backward/step only",
            "ms/epoch",
            values("core"),
            ratio=1 - figures["share_outside_core"],
        )
        table.add("data", f"bs {batch_size}: share of epoch outside f/b/step", "share", [figures["share_outside_core"]])
        for part in ("part: evaluate", "part: metrics built", "part: best-state copy"):
            table.add("data", f"bs {batch_size}: {part.removeprefix('part: ')}", "ms/epoch", values(part))
        one, slot = ms["epoch memory, 1 thread(s)"]["median"], ms[f"epoch memory, {result['core_threads']} thread(s)"]
        table.add(
            "data",
            f"bs {batch_size}: fit epoch, {result['core_threads']} threads (/ 1 thread)",
            "ms/epoch",
            slot["values"],
            ratio=slot["median"] / one,
        )


def print_details(details: dict[str, Any]) -> None:
    for name in ("overhead", "batch32", "small"):
        breakdown = details.get(f"{name}_breakdown")
        if not breakdown:
            continue
        trials = len(details[f"{name}_prepare"]["trials"])
        print(
            f"\nWhere a tracked study's time goes ({name}: untimed searchlab run, {trials} trials, "
            f"{breakdown['total_s']:.2f} s; exclusive times):"
        )
        for part, seconds in breakdown["parts_s"].items():
            print(f"  {seconds:8.3f} s  {1000 * seconds / trials:8.1f} ms/trial  {part}")
        print("MLflow HTTP calls (all, incl. set-up and publish):")
        for endpoint, figures in breakdown["endpoints"].items():
            print(
                f"  {figures['calls']:5d} x {figures['ms_median']:7.1f} ms (median) = {figures['ms_total']:8.1f} ms  "
                f"{endpoint}"
            )
    if "startup_steps" in details:
        steps = details["startup_steps"]
        print(
            f"\n`searchlab run` in one process, 1 trial x 1 epoch, {steps['tracking']} tracking "
            f"(first epoch ends at {steps['first_epoch_s']:.2f} s):"
        )
        for step in steps["steps"]:
            print(f"  at {step['start_s']:7.2f} s  {step['seconds']:7.2f} s  {step['step']}")
    if "startup_imports" in details:
        print("\nHeavy packages each path imports (cumulative seconds of the first import, and who imported it):")
        for path, figures in details["startup_imports"][0].items():
            print(f"  {path}: {', '.join(figures['heavy_loaded']) or 'none'}")
            for package, seconds in sorted(figures["heavy_cumulative_s"].items(), key=lambda item: -item[1]):
                if seconds >= 0.05:
                    chain = figures["imported_by"][package].split(" <- ")
                    short = (
                        " <- ".join(chain[:2] + (["..."] if len(chain) > 3 else []) + chain[-1:])
                        if len(chain) > 2
                        else " <- ".join(chain)
                    )
                    print(f"      {seconds:6.2f} s  {short}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(DEFAULT_JSON), help=f"where to write the results [{DEFAULT_JSON}]")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset of: " + ",".join(BENCHMARKS)
    )
    parser.add_argument("--workload", default=WORKLOAD, help="the study of overhead/naive (the issue's targets)")
    parser.add_argument("--study", default=DEFAULT_STUDY, help="the study of small/startup/data")
    parser.add_argument("--trials", type=int, default=20, help="overhead/naive trials")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (early stopping off)")
    parser.add_argument("--scaling-trials", type=int, default=20)
    args = parser.parse_args()
    args.study = str(Path(args.study).resolve())
    args.workload = str(Path(args.workload).resolve())
    selected = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = selected - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}: use {', '.join(BENCHMARKS)}")
    table, details = Table(), {}
    info = machine()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="searchlab-suite-") as folder:
        needs_server = bool(selected & {"overhead", "naive", "batch32", "small", "startup"})
        server = tracking_server(Path(folder)) if needs_server else None
        uri = server.__enter__() if server else ""
        try:
            if selected & {"overhead", "naive"}:
                overhead(args, table, details, uri, selected, study=args.workload, name="overhead", targets=True)
            if "batch32" in selected:
                overhead(
                    args,
                    table,
                    details,
                    uri,
                    selected | {"naive"},
                    study=BATCH32_WORKLOAD,
                    name="batch32",
                    targets=True,
                )
            if "small" in selected:
                overhead(args, table, details, uri, selected, study=args.study, name="small", targets=False)
            if "scaling" in selected:
                scaling(args, table, details)
            if "startup" in selected:
                startup(args, table, details, uri)
            if "data" in selected:
                data(args, table, details)
        finally:
            if server:
                server.__exit__(None, None, None)
    info["load_average_end"] = os.getloadavg()
    info["load_after_each_measurement"] = LOADS
    info["suite_wall_s"] = time.time() - started
    print(
        f"\nmachine: {info['cpu']}, {info['cores']} cores, torch {info['versions']['torch']}, mlflow "
        f"{info['versions']['mlflow']}, optuna {info['versions']['optuna']}; load average at start "
        f"{info['load_average_start'][0]:.1f}, after each measurement {fmt(min(LOADS, default=0))}.."
        f"{fmt(max(LOADS, default=0))} (1-minute; above {info['cores']} another job shared the cores); "
        f"repeats {args.repeats}; {info['suite_wall_s'] / 60:.1f} min\n"
    )
    table.print()
    print_details(details)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, {"machine": info, "args": vars(args), "rows": table.rows, "details": details})
    print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()

"""A study after a year of nightly sweeps against a fresh one: what each command costs as the history grows (issue 21).

    python benchmarks/history.py /work/scale/journal-365 --nights 365 --trials 50      # once: ~25 min
    python benchmarks/history.py /work/scale/pg-365 --nights 365 --trials 50 \
        --storage postgresql://postgres@127.0.0.1/scale_pg_365
    python benchmarks/scale.py /work/scale/journal-365 /work/scale/pg-365 --repeats 2

For each history folder (its storage, a journal or a database, is what history.py wrote there), for the same history
compacted (a journal: ``searchlab compact``, as each night leaves it), and for a fresh study on the same kind of
storage, in alternation, each command on a copy (a copied folder; a database copied with PostgreSQL's
CREATE DATABASE ... TEMPLATE):
- ``open``: a fresh process loads the study and lists its trials (what the coordinator and every worker do);
- ``run``: ``searchlab run STUDY --trials 30 --max-epochs 1``: seconds from the command's start to its first trial,
  seconds per trial after it (start to start; one epoch of ~1,350 rows, so the time outside training dominates;
  a fresh study samples its first 10 trials at random, then TPE), peak RSS of its largest process;
- ``nightly``: the same for ``searchlab nightly STUDY --trials 30 --max-epochs 1`` (its compaction after the night
  included in its wall time);
- ``trials``, ``best``, ``report``: seconds until the command has answered; ``dashboard``, ``ui``: seconds from the
  command's start until the study's page data answers (optuna-dashboard's study API; MLflow's run search, one page);
- the sizes of the journal file or database, and of mlflow.db.
Ratios are history over fresh, from the medians of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from _common import SEARCHLAB, alternate, clean_env, free_port, stats, write_json
from history import STUDY_FILE, STUDY_NAME, storage_of

ADMIN = "postgresql://postgres@127.0.0.1/postgres"
COMMANDS = {
    "run": ["run", STUDY_FILE, "--trials", "30", "--max-epochs", "1"],
    "nightly": ["nightly", STUDY_FILE, "--trials", "30", "--max-epochs", "1"],
    "trials": ["trials"],
    "best": ["best"],
    "report": ["report", "--out", "report-out"],
}
OPEN = (
    "import resource, sys, time, optuna\n"
    "from searchlab.storage import open_storage\n"
    "start = time.perf_counter(); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "study = optuna.load_study(study_name=sys.argv[1], storage=open_storage(sys.argv[2] or None))\n"
    "n = len(study.get_trials(deepcopy=False))\n"
    "print(time.perf_counter() - start, n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
)


@contextlib.contextmanager
def copy_of(history: Path | None, storage: str) -> Iterator[tuple[Path, str]]:
    """A scratch folder (and database) holding a copy of ``history``, or fresh ones; yields (folder, storage)."""
    with tempfile.TemporaryDirectory(prefix="searchlab-scale-") as scratch:
        folder = Path(scratch) / "study"
        if history is None:
            folder.mkdir()
        else:
            shutil.copytree(history, folder)
        if not storage.startswith("postgresql"):
            yield folder, storage
            return
        name = f"scale_copy_{int(time.time() * 1000)}"
        template = "" if history is None else f" TEMPLATE {storage.rsplit('/', 1)[1]}"
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}{template}")
        try:
            yield folder, storage.rsplit("/", 1)[0] + "/" + name
        finally:
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def timed(command: list[str], folder: Path, storage: str) -> dict[str, float]:
    """Run ``searchlab COMMAND --storage S`` in ``folder``: wall seconds, peak RSS (MB) of its largest process."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "start = time.time(); done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(start, time.time() - start, done.returncode, "
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
        "sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *SEARCHLAB, *command, "--storage", storage],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    start, wall, code, rss = done.stdout.split()
    if int(code) not in (0, 3):  # 3: a night whose champion got worse, a valid outcome
        raise RuntimeError(f"searchlab {' '.join(command)} failed (exit {code}):\n{done.stderr}")
    return {"start": float(start), "wall_s": float(wall), "peak_rss_mb": float(rss)}


def trial_times(storage: str, folder: Path, after: int) -> list[tuple[float, float]]:
    """(start, complete) epoch seconds of the study's trials numbered ``after`` or more."""
    import optuna

    from searchlab.storage import open_storage

    with contextlib.chdir(folder):
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage))
        return [
            (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
            for t in study.get_trials(deepcopy=False)
            if t.number >= after and t.datetime_start and t.datetime_complete
        ]


def measure(history: Path | None, storage: str) -> dict[str, Any]:
    """Every figure once, on copies of ``history`` (None: a fresh study)."""
    figures: dict[str, Any] = {}
    with copy_of(history, storage) as (folder, url):
        done = subprocess.run(
            [sys.executable, "-c", OPEN, STUDY_NAME, url], cwd=folder, capture_output=True, text=True, env=clean_env()
        )
        if history is not None:
            seconds, n, rss = done.stdout.split()
            figures.update(open_s=float(seconds), trials=int(n), open_rss_mb=float(rss))
        figures.update(sizes(folder, url))
    for name in ("run", "nightly"):
        with copy_of(history, storage) as (folder, url):
            before = figures.get("trials", 0)
            result = timed(COMMANDS[name], folder, url)
            times = sorted(trial_times(url, folder, before))
            figures[f"{name}_first_trial_s"] = times[0][0] - result["start"]
            figures[f"{name}_per_trial_s"] = (times[-1][0] - times[0][0]) / (len(times) - 1)
            figures[f"{name}_peak_rss_mb"] = result["peak_rss_mb"]
            figures[f"{name}_wall_s"] = result["wall_s"]
            if name == "nightly":
                for view in ("trials", "best", "report"):
                    figures[f"{view}_s"] = timed(COMMANDS[view], folder, url)["wall_s"]
                figures["dashboard_s"] = served(["dashboard", "--storage", url], folder, "/api/studies/{study}")
                figures["ui_s"] = served(["ui", "--study-name", STUDY_NAME], folder, "/ajax-api/2.0/mlflow/runs/search")
    return figures


def served(command: list[str], folder: Path, path: str) -> float:
    """Seconds from starting ``searchlab COMMAND --port P`` until ``path`` answers 200 (POST for MLflow's search;
    ``{study}``: the study's id, from the dashboard's list of studies, as its page finds it)."""
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen(
        [*SEARCHLAB, *command, "--port", str(port)],
        cwd=folder,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    search = json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode() if "mlflow" in path else None
    try:
        while time.perf_counter() - start < 300:
            if "{study}" in path:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=60) as answer:
                        path = path.format(study=json.loads(answer.read())["study_summaries"][0]["study_id"])
                except OSError:
                    time.sleep(0.1)
                continue
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=search)
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    answer.read()
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"searchlab {' '.join(command)} did not answer {path}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # SIGINT would be ignored under a shell's background job
        server.wait(timeout=60)


def sizes(folder: Path, storage: str) -> dict[str, float]:
    mb = 1024 * 1024
    found = {"mlflow_db_mb": (folder / "mlflow.db").stat().st_size / mb if (folder / "mlflow.db").exists() else 0.0}
    if storage.startswith("postgresql"):
        with psycopg.connect(storage) as connection:
            found["storage_mb"] = connection.execute("SELECT pg_database_size(current_database())").fetchone()[0] / mb
    else:
        path = folder / storage
        found["storage_mb"] = path.stat().st_size / mb if path.exists() else 0.0
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("histories", nargs="+", type=Path, help="folders benchmarks/history.py wrote")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    rows: dict[str, list[dict[str, Any]]] = {}
    for history in args.histories:
        storage = storage_of(history)
        variants = [("fresh", None), (history.name, history)]
        if not storage.startswith("postgresql"):
            compacted = Path(tempfile.mkdtemp(prefix="searchlab-scale-")) / f"{history.name} compacted"
            shutil.copytree(history, compacted)
            started = time.perf_counter()
            subprocess.run([*SEARCHLAB, "compact"], cwd=compacted, env=clean_env(), check=True)
            print(f"searchlab compact of {history.name}: {time.perf_counter() - started:.1f} s", flush=True)
            variants.append((compacted.name, compacted))
        for repeat in range(args.repeats):
            for label, folder in alternate(variants, repeat):
                key = f"{'postgresql' if storage.startswith('postgresql') else 'journal'} {label}"
                figures = measure(folder, storage)
                rows.setdefault(key, []).append(figures)
                print(key, json.dumps({k: round(v, 3) for k, v in figures.items()}), flush=True)
    table = {key: {name: stats([r[name] for r in runs])["median"] for name in runs[0]} for key, runs in rows.items()}
    print("\nmedians, and history over fresh")
    for key, medians in table.items():
        fresh = table.get(key.split()[0] + " fresh", {})
        print(key)
        for name, value in medians.items():
            ratio = f"  x{value / fresh[name]:.2f}" if fresh.get(name) else ""
            print(f"  {name:24} {value:10.3f}{ratio}")
    if args.out:
        write_json(args.out, {"runs": rows, "medians": table})


if __name__ == "__main__":
    main()

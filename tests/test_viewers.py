"""`searchlab ui` and `searchlab dashboard` as real servers: their HTTP APIs, a headless browser, Ctrl-C."""

from __future__ import annotations

import html
import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SEARCHLAB, clean_env, default_sigint, free_port, write_study

from searchlab.cli import main

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))),
                None)
TRIALS = 4


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where a small study ran: searchlab.journal and mlflow.db."""
    folder = tmp_path_factory.mktemp("viewed")
    study_file = write_study(folder, name="viewed")
    subprocess.run([SEARCHLAB, "run", str(study_file), "--trials", str(TRIALS)], cwd=folder, env=clean_env(),
                   check=True, capture_output=True, timeout=300)
    return folder


def start(folder: Path, *args: str, ready: str) -> Server:
    """Start `searchlab ARGS --port P` in ``folder`` and wait until ``ready`` (a path) answers."""
    port = free_port()
    log = folder / f"{args[0]}-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen([SEARCHLAB, *args, "--port", str(port)], cwd=folder, env=clean_env(),
                                   stdout=out, stderr=subprocess.STDOUT, preexec_fn=default_sigint)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + ready, timeout=5):
                return Server(process, url, log)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"searchlab {args[0]} did not start: {log.read_text()}") from None
            time.sleep(0.5)


def stop_with_ctrl_c(server: Server) -> None:
    """Ctrl-C stops the server cleanly: exit 0, and nothing listens on its port any more."""
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0, server.log.read_text()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the server still listens after Ctrl-C"


def get_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def rendered_text(url: str) -> str:
    """The page's text after its JavaScript ran in headless Chromium (tags, scripts and styles dropped)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", result.stdout, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def serving(folder: Path, command: str, ready: str) -> Iterator[Server]:
    """A module's server for the study in ``folder``, killed at the end if a test did not stop it."""
    server = start(folder, command, "--study-name", "viewed", ready=ready)
    yield server
    if server.process.poll() is None:
        server.process.kill()


@pytest.fixture(scope="module")
def dashboard(finished_study: Path) -> Iterator[Server]:
    yield from serving(finished_study, "dashboard", "/api/studies")


@pytest.fixture(scope="module")
def mlflow_ui(finished_study: Path) -> Iterator[Server]:
    yield from serving(finished_study, "ui", "/health")


def experiment_runs(server: Server) -> tuple[str, list[dict]]:
    """The experiment id of the study and its runs, through MLflow's REST API."""
    experiment = get_json(f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=viewed")
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = get_json(f"{server.url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    return experiment_id, runs


def test_dashboard_serves_the_study_and_its_trials(dashboard: Server) -> None:
    studies = get_json(f"{dashboard.url}/api/studies")["study_summaries"]
    (study,) = [summary for summary in studies if summary["study_name"] == "viewed"]
    detail = get_json(f"{dashboard.url}/api/studies/{study['study_id']}")
    assert [trial["number"] for trial in detail["trials"]] == list(range(TRIALS))
    assert {trial["state"] for trial in detail["trials"]} == {"Complete"}
    assert {param["name"] for param in detail["trials"][0]["params"]} >= {"lr", "momentum", "dropout", "width"}
    assert f"Optuna dashboard: http://127.0.0.1:{dashboard.url.rsplit(':', 1)[1]}/dashboard/studies/" \
        f"{study['study_id']}" in dashboard.log.read_text()


def test_mlflow_ui_serves_the_runs_under_their_names(mlflow_ui: Server) -> None:
    experiment_id, runs = experiment_runs(mlflow_ui)
    names = sorted(run["info"]["run_name"] for run in runs)
    trial_names = [name for name in names if name.startswith("trial-")]
    assert len(runs) == TRIALS + 1 and len(trial_names) == TRIALS
    assert all(" val_loss=" in name for name in trial_names)
    params = [{param["key"] for param in run["data"]["params"]} for run in runs if run["info"]["run_name"] in
              trial_names]
    assert all(keys == params[0] for keys in params), "every trial logs the same params, so Compare lines them up"
    assert f"MLflow UI: {mlflow_ui.url}/#/experiments/{experiment_id}?workflowType=machine_learning" \
        in mlflow_ui.log.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_a_browser_shows_the_runs_and_the_study(mlflow_ui: Server, dashboard: Server) -> None:
    experiment_id, runs = experiment_runs(mlflow_ui)
    parent = next(run for run in runs if not run["info"]["run_name"].startswith("trial-"))
    page = rendered_text(f"{mlflow_ui.url}/#/experiments/{experiment_id}?workflowType=machine_learning")
    assert parent["info"]["run_name"] in page and f"{TRIALS + 1} matching runs" in page

    trial_runs = [run for run in runs if run["info"]["run_name"].startswith("trial-")]
    ids = urllib.parse.quote(json.dumps([run["info"]["run_id"] for run in trial_runs]))
    compare = rendered_text(f"{mlflow_ui.url}/#/compare-runs?runs={ids}&experiments=%5B%22{experiment_id}%22%5D")
    assert all(run["info"]["run_name"] in compare for run in trial_runs)

    studies = get_json(f"{dashboard.url}/api/studies")["study_summaries"]
    study_id = next(summary["study_id"] for summary in studies if summary["study_name"] == "viewed")
    study_page = rendered_text(f"{dashboard.url}/dashboard/studies/{study_id}")
    assert f"viewed (id={study_id})" in study_page and "Best Trial" in study_page


def test_ctrl_c_stops_both_cleanly(mlflow_ui: Server, dashboard: Server) -> None:
    stop_with_ctrl_c(mlflow_ui)
    stop_with_ctrl_c(dashboard)


def test_ui_on_a_tracking_server_prints_its_address(mlflow_server: str, workdir: Path) -> None:
    result = CliRunner().invoke(main, ["ui", "--tracking-uri", mlflow_server])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"MLflow UI: {mlflow_server} (served by the tracking server)"


def test_viewers_refuse_bad_input_in_one_line(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = CliRunner().invoke(main, ["server", "--port", port])
        assert result.exit_code == 2
        assert result.output.strip() == f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): " \
            "choose another --port"
    result = CliRunner().invoke(main, ["ui"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: no MLflow runs at sqlite:///")
    result = CliRunner().invoke(main, ["dashboard"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: no study storage at searchlab.journal: run 'searchlab run' here first, " \
        "or pass the --storage it used"
    assert list(workdir.iterdir()) == []

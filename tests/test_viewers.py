"""`searchlab ui`, `dashboard` and `server` as real servers: their HTTP APIs, a headless browser, Ctrl-C, the hosts
and origins they answer, and secrets kept out of `ps`."""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
from conftest import (
    POSTGRES_URL,
    SEARCHLAB,
    Server,
    clean_env,
    run_study,
    start,
    stop,
    write_study,
)

from searchlab.cli import main
from searchlab.errors import ConfigError
from searchlab.viewers import check_port_free

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
TRIALS = 4


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where a small study ran: searchlab.journal and mlflow.db."""
    folder = tmp_path_factory.mktemp("viewed")
    run_study(folder, write_study(folder, name="viewed"), "--trials", str(TRIALS))
    return folder


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
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", result.stdout, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def serving(folder: Path, command: str, ready: str) -> Iterator[Server]:
    """A module's server for the study in ``folder``, stopped at the end if a test did not stop it."""
    server = start(folder, command, "--study-name", "viewed", ready=ready)
    yield server
    stop(server)


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
    assert (
        f"Optuna dashboard: http://127.0.0.1:{dashboard.url.rsplit(':', 1)[1]}/dashboard/studies/"
        f"{study['study_id']}" in dashboard.log.read_text()
    )


def test_mlflow_ui_serves_the_runs_under_their_names(mlflow_ui: Server) -> None:
    experiment_id, runs = experiment_runs(mlflow_ui)
    names = sorted(run["info"]["run_name"] for run in runs)
    trial_names = [name for name in names if name.startswith("trial-")]
    assert len(runs) == TRIALS + 1 and len(trial_names) == TRIALS
    assert all(" best_val_loss=" in name for name in trial_names)
    params = [
        {param["key"] for param in run["data"]["params"]} for run in runs if run["info"]["run_name"] in trial_names
    ]
    assert all(keys == params[0] for keys in params), "every trial logs the same params, so Compare lines them up"
    assert (
        f"MLflow UI: {mlflow_ui.url}/#/experiments/{experiment_id}?workflowType=machine_learning"
        in mlflow_ui.log.read_text()
    )


def test_mlflow_ui_answers_only_its_own_names_and_pages(mlflow_ui: Server) -> None:
    """MLflow's app served by `searchlab ui` keeps `mlflow server`'s checks: a rebound Host name, or a write from
    another site's page, is refused; its own page reads and writes."""
    port = mlflow_ui.url.rsplit(":", 1)[1]
    assert send(mlflow_ui, "POST", SEARCH, {"Host": f"localhost:{port}"}, {"max_results": 1})[0] == 200
    assert send(mlflow_ui, "POST", SEARCH, {"Host": f"evil.example:{port}"}, {"max_results": 1})[0] == 403
    create = "/api/2.0/mlflow/experiments/create"
    assert send(mlflow_ui, "POST", create, {"Origin": "http://evil.example"}, {"name": "planted"})[0] == 403
    status, body = send(mlflow_ui, "POST", create, {"Origin": mlflow_ui.url}, {"name": "from-its-own-page"})
    assert status == 200, body
    pid = mlflow_ui.process.pid
    (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()  # the server: one process
    command_line = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
    assert "searchlab.mlflow_app" in command_line and not any("sqlite" in part for part in command_line)


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
    assert "best_val_loss" in study_page and "Objective 0" not in study_page  # the value is named


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
        assert (
            result.output.strip() == f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): "
            "choose another --port"
        )
    result = CliRunner().invoke(main, ["ui"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: no MLflow runs at sqlite:///")
    result = CliRunner().invoke(main, ["dashboard"])
    assert result.exit_code == 2
    assert (
        result.output.strip() == "Error: no study storage at searchlab.journal: run 'searchlab run' here first, "
        "or pass the --storage it used"
    )
    assert list(workdir.iterdir()) == []


def test_dashboard_shows_a_long_studys_latest_trials_and_says_so(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="long", storage=journal(tmp_path))
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1) - 0.5) ** 2, n_trials=60)
    best = sorted(t.number for t in sorted(study.trials, key=lambda t: t.value)[:25] if t.number < 50)
    with running(tmp_path, "dashboard", "--study-name", "long", "--last", "10", ready="/api/studies") as server:
        detail = get_json(f"{server.url}/api/studies/{study._study_id}")
        assert [trial["number"] for trial in detail["trials"]] == [*best, *range(50, 60)]
        assert detail["best_trials"][0]["number"] == study.best_trial.number
        assert (
            f"the 10 latest trials and the 25 best; {50 - len(best)} earlier trials are left out (--all shows every "
            "trial)" in server.log.read_text()
        )
        if CHROMIUM is not None:  # the trial list as the page draws it: the study's own numbers
            page = rendered_text(f"{server.url}/dashboard/studies/{study._study_id}/trials")
            assert f"{len(best) + 10} Trials Trial {best[0]} Complete" in page, page[:2000]
            assert f"Trial {best[0]} (trial_id={best[0]})" in page  # the first one's page: its own number
    with running(tmp_path, "dashboard", "--study-name", "long", "--all", ready="/api/studies") as server:
        assert len(get_json(f"{server.url}/api/studies/{study._study_id}")["trials"]) == 60
        assert "left out" not in server.log.read_text()


# ---------------------------------------------------------------- hosts, origins, read-only, secrets, ports


@contextlib.contextmanager
def running(folder: Path, *args: str, ready: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    server = start(folder, *args, ready=ready, env=env)
    try:
        yield server
    finally:
        stop(server)


def send(
    server: Server, method: str, path: str, headers: dict[str, str] | None = None, body: dict | None = None
) -> tuple[int, bytes]:
    """(status, body) of one request to ``server``, with the given headers (a Host given replaces the real one)."""
    port = int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def guarded_study(tmp_path: Path) -> tuple[Path, int]:
    """A folder whose searchlab.journal holds the study "guarded" with one trial, and that study's id."""
    study = optuna.create_study(study_name="guarded", storage=journal(tmp_path))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    return tmp_path, study._study_id


def journal(folder: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "searchlab.journal")))


def study_names(folder: Path) -> list[str]:
    return [summary.study_name for summary in optuna.get_all_study_summaries(journal(folder))]


def test_dashboard_refuses_foreign_hosts_and_cross_origin_writes(guarded_study: tuple[Path, int]) -> None:
    folder, study_id = guarded_study
    with running(folder, "dashboard", ready="/api/studies") as server:
        port = server.url.rsplit(":", 1)[1]
        evil = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}  # DNS rebinding
        assert send(server, "GET", "/api/studies", {"Host": evil["Host"]})[0] == 403
        for malformed in (f"evil.example:{port}@127.0.0.1", "[::1", ""):
            assert send(server, "GET", "/api/studies", {"Host": malformed})[0] == 403, malformed
        assert send(server, "GET", f"/api/studies/{study_id}", evil)[0] == 403
        assert (
            send(server, "POST", "/api/studies", evil, {"study_name": "planted", "directions": ["minimize"]})[0] == 403
        )
        assert send(server, "DELETE", f"/api/studies/{study_id}", evil)[0] == 403
        assert send(server, "DELETE", f"/api/studies/{study_id}", {"Origin": evil["Origin"]})[0] == 403  # CSRF
        for other in ("http://localhost:3000", f"http://127.0.0.1:{int(port) + 1}", "null"):  # another app, a sandbox
            assert send(server, "DELETE", f"/api/studies/{study_id}", {"Origin": other})[0] == 403
        assert study_names(folder) == ["guarded"]

        status, body = send(server, "GET", "/api/studies")
        assert status == 200 and [study["study_name"] for study in json.loads(body)["study_summaries"]] == ["guarded"]
        assert send(server, "GET", "/dashboard", {"Host": f"localhost:{port}"})[0] == 200
        own = {"Origin": server.url}  # the dashboard's own page still changes studies
        assert send(server, "POST", "/api/studies", own, {"study_name": "made", "directions": ["minimize"]})[0] == 201
        made = optuna.load_study(study_name="made", storage=journal(folder))._study_id
        assert send(server, "DELETE", f"/api/studies/{made}", own)[0] == 204
        assert study_names(folder) == ["guarded"]


def test_dashboard_answers_its_allowed_hosts(guarded_study: tuple[Path, int]) -> None:
    folder, study_id = guarded_study
    with running(folder, "dashboard", "--allowed-hosts", "myname,*.lab.example", ready="/api/studies") as server:
        port = server.url.rsplit(":", 1)[1]
        for name in ("myname", "box1.lab.example"):
            status, body = send(server, "GET", f"/api/studies/{study_id}", {"Host": f"{name}:{port}"})
            assert status == 200 and len(json.loads(body)["trials"]) == 1
        assert send(server, "GET", "/api/studies", {"Host": f"evil.example:{port}"})[0] == 403


def test_read_only_dashboard_refuses_every_write(guarded_study: tuple[Path, int]) -> None:
    folder, study_id = guarded_study
    with running(folder, "dashboard", "--read-only", ready="/api/studies") as server:
        assert send(server, "DELETE", f"/api/studies/{study_id}")[0] == 403
        assert send(server, "DELETE", f"/api/studies/{study_id}", {"Origin": server.url})[0] == 403
        assert send(server, "POST", "/api/studies", {}, {"study_name": "made", "directions": ["minimize"]})[0] == 403
        assert send(server, "PUT", f"/api/studies/{study_id}/note", {}, {"version": 1, "body": "x"})[0] == 403
        assert send(server, "GET", f"/api/studies/{study_id}")[0] == 200
        assert study_names(folder) == ["guarded"]
        assert "(read-only)" in server.log.read_text()


def test_dashboard_refuses_a_malformed_allowed_host_in_one_line(
    guarded_study: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(guarded_study[0])
    result = CliRunner().invoke(main, ["dashboard", "--allowed-hosts", "http://myname:8080"])
    assert result.exit_code == 2
    assert (
        result.output.strip() == "Error: --allowed-hosts takes host names without a scheme or port, not "
        "'http://myname:8080'"
    )


SEARCH = "/api/2.0/mlflow/experiments/search"


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-hosts", "mlflow-defaults"])
def test_server_answers_its_hostname_with_allowed_hosts(tmp_path: Path, allowed: bool) -> None:
    hostname = socket.gethostname()
    flags = ["--allowed-hosts", hostname] if allowed else []
    with running(
        tmp_path, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *flags, ready="/health"
    ) as server:
        port = server.url.rsplit(":", 1)[1]
        status, body = send(server, "POST", SEARCH, {"Host": f"{hostname}:{port}"}, {"max_results": 1})
        assert status == (200 if allowed else 403), body
        assert send(server, "POST", SEARCH, {"Host": f"localhost:{port}"}, {"max_results": 1})[0] == 200
        assert send(server, "POST", SEARCH, {"Host": f"evil.example:{port}"}, {"max_results": 1})[0] == 403


def test_the_several_hosts_recipe_runs_by_host_name(tmp_path: Path) -> None:
    """`searchlab server --allowed-hosts HOSTNAME`, then a run with --tracking-uri http://HOSTNAME:PORT: tracked."""
    from conftest import by_host_name

    study = write_study(tmp_path)
    with running(
        tmp_path,
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--allowed-hosts",
        socket.gethostname(),
        ready="/health",
    ) as server:
        url = by_host_name(server.url)
        result = subprocess.run(
            [SEARCHLAB, "run", str(study), "--trials", "1", "--tracking-uri", url],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert f"open       {url}/#/experiments/" in result.stdout


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (MLflow's Alembic table cannot share the Optuna tests' one), dropped after."""
    name = f"mlflow_{secrets.token_hex(4)}"
    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield name
    finally:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()


def process_tree(root: int) -> dict[int, str]:
    """pid → command line (`ps -eo args`) of ``root`` and every process below it."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    table = []
    for line in rows.splitlines():
        pid, ppid, *args = line.split(None, 2)
        table.append((int(pid), int(ppid), args[0] if args else ""))
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, ppid, _ in table if ppid in tree} - tree
        tree |= below
        grew = bool(below)
    return {pid: args for pid, _, args in table if pid in tree}


@pytest.mark.parametrize("way", ["env", "file"])
def test_server_keeps_the_backend_password_out_of_ps(tmp_path: Path, postgres_database: str, way: str) -> None:
    password = f"pw{secrets.token_hex(8)}"  # trust auth ignores it; unique, so no other process shows it
    base = urllib.parse.urlsplit(POSTGRES_URL)
    uri = (
        f"postgresql://{base.username or 'postgres'}:{password}@{base.hostname}:{base.port or 5432}/{postgres_database}"
    )
    (tmp_path / "uri").write_text(uri + "\n")
    args = ["--backend-store-uri-file", "uri"] if way == "file" else []
    env = {"SEARCHLAB_BACKEND_STORE_URI": uri} if way == "env" else {}
    with running(tmp_path, "server", *args, ready="/health", env=env) as server:
        assert send(server, "POST", "/api/2.0/mlflow/experiments/create", {}, {"name": "in-postgres"})[0] == 200
        tree = process_tree(server.process.pid)
        everything = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert any("mlflow" in args and "server" in args for args in tree.values()), tree
    assert not [args for args in tree.values() if password in args], "the password shows in ps"
    assert password not in everything
    assert password not in server.log.read_text()
    engine = sqlalchemy.create_engine(uri)
    with engine.connect() as connection:
        names = connection.execute(sqlalchemy.text("SELECT name FROM experiments")).scalars().all()
    engine.dispose()
    assert "in-postgres" in names  # the server did keep its runs there


def test_server_refuses_a_password_on_its_command_line(workdir: Path) -> None:
    result = CliRunner().invoke(main, ["server", "--backend-store-uri", "postgresql://u:s3cret@db/mlflow"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "s3cret" not in result.output
    assert result.output.startswith("Error: --backend-store-uri holds a password")
    assert "SEARCHLAB_BACKEND_STORE_URI" in result.output and "--backend-store-uri-file" in result.output
    (workdir / "empty").write_text("\n")
    result = CliRunner().invoke(main, ["server", "--backend-store-uri-file", "empty"])
    assert result.exit_code == 2 and result.output == "Error: empty is empty: it should hold the backend store URI\n"


def test_port_check_passes_a_port_left_in_time_wait_and_refuses_a_live_one() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and wsgiref listen
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first: its end waits in TIME_WAIT, holding the port
            assert client.recv(1) == b""
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port} .Address already in use."):
            check_port_free("127.0.0.1", port)  # still listening
    check_port_free("127.0.0.1", port)  # stopped, with its closed connection in TIME_WAIT
    if shutil.which("ss"):  # the case is the one meant: the port is held in TIME_WAIT
        states = subprocess.run(["ss", "-tan", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert "TIME-WAIT" in states, states

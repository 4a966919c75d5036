"""Shared fixtures: study files written on the fly, a working directory per test, a real MLflow server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_URL = os.environ.get("SEARCHLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SEARCHLAB = str(Path(sys.executable).with_name("searchlab"))


def is_setting(variable: str) -> bool:
    """A variable that would change what searchlab does (SEARCHLAB_UNSENT_DIR is the suite's own: see unsent_dir)."""
    searchlab = variable.startswith("SEARCHLAB_") and variable != "SEARCHLAB_UNSENT_DIR"
    return searchlab or variable == "MLFLOW_TRACKING_URI"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without SEARCHLAB_*/MLflow settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not is_setting(k)}
    return {**env, **extra}


def default_sigint() -> None:
    """For subprocesses a test stops with SIGINT, as a terminal's Ctrl-C does: a process started in the background
    (CI runners often are) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


STUDY_TEMPLATE = """
import torch
from torch import nn

import searchlab as sl


def data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(160, generator=g)
    return sl.Split(train=(x[:120], y[:120]), val=(x[120:], y[120:]))


def model(trial):
{body}


study = sl.Study(name={name!r}, task={task!r}, data=data, model=model, max_epochs={max_epochs}, patience={patience},
                 n_trials=3{extra})

if __name__ == "__main__":
    study.run()
"""

DEFAULT_BODY = """    width = trial.suggest_int("width", 4, 16)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(trial.params["dropout"]), nn.Linear(width, 1))"""


def one_line_config_error(call: Callable[..., object], *args: object) -> str:
    """The message of the ConfigError that ``call(*args)`` raises, checked to be one line."""
    from searchlab.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def write_study(
    folder: Path,
    *,
    name: str = "tiny",
    task: str = "regression",
    body: str = DEFAULT_BODY,
    max_epochs: int = 6,
    patience: int = 3,
    extra: str = "",
    filename: str = "tiny_study.py",
) -> Path:
    """Write a small, fast regression study file; ``body`` replaces the model builder's body."""
    path = folder / filename
    path.write_text(
        STUDY_TEMPLATE.format(
            name=name,
            task=task,
            body=body,
            max_epochs=max_epochs,
            patience=patience,
            extra=f", {extra}" if extra else "",
        )
    )
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with no SEARCHLAB_*/MLflow variables leaking in."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if is_setting(variable):
            monkeypatch.delenv(variable)
    return tmp_path


@pytest.fixture
def study_file(workdir: Path) -> Path:
    return write_study(workdir)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on loopback (sqlite backend, proxied artifacts)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(  # searchlab server: mlflow server, bound to loopback by default
        [
            SEARCHLAB,
            "server",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "art"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()}") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


class RestartableServer:
    """A real `mlflow server` on a fixed loopback port that a test kills (SIGKILL) and starts again, as an outage."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "art"),
            "--workers",
            "1",
        ]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.3)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def restartable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path_factory.mktemp("restartable-server"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session", autouse=True)
def unsent_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Records that could not reach MLflow wait in the suite's own folder, not in ~/.cache (subprocesses inherit
    it; each store has its own subfolder)."""
    folder = tmp_path_factory.mktemp("unsent")
    previous = os.environ.get("SEARCHLAB_UNSENT_DIR")
    os.environ["SEARCHLAB_UNSENT_DIR"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["SEARCHLAB_UNSENT_DIR"]
    else:
        os.environ["SEARCHLAB_UNSENT_DIR"] = previous


@pytest.fixture
def read_only_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty folder nothing can be written in: mode 0555, or, for root (whom modes do not stop), a read-only
    tmpfs mounted on it; skipped only for root where mounting is not allowed."""
    folder = tmp_path_factory.mktemp("read-only")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"root ignores folder modes, and a read-only tmpfs cannot be mounted: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def by_host_name(url: str) -> str:
    """``url`` (a server on 127.0.0.1) by this machine's host name, which MLflow's host check refuses by default;
    skipped where the name does not lead to 127.0.0.1."""
    name = socket.gethostname()
    if name == "localhost":
        pytest.skip("the host name is localhost, which MLflow's host check allows")
    try:
        address = socket.gethostbyname(name)
    except OSError as error:
        pytest.skip(f"host name {name!r} does not resolve: {error}")
    if address != "127.0.0.1":
        pytest.skip(f"host name {name!r} resolves to {address}, not to the test server's 127.0.0.1")
    return url.replace("127.0.0.1", name, 1)


def run_study(folder: Path, study_file: Path, *args: str) -> None:
    """`searchlab run STUDY_FILE ARGS` in ``folder``, as a user runs it (a process of its own)."""
    command = [SEARCHLAB, "run", str(study_file), *args]
    subprocess.run(command, cwd=folder, env=clean_env(), check=True, capture_output=True, timeout=300)


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path


def start(folder: Path, *args: str, ready: str, env: dict[str, str] | None = None) -> Server:
    """Start `searchlab ARGS --port P` in ``folder`` and wait until ``ready`` (a path) answers."""
    port = free_port()
    log = folder / f"{args[0]}-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [SEARCHLAB, *args, "--port", str(port)],
            cwd=folder,
            env=clean_env(**(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_sigint,
        )
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


def stop(server: Server) -> None:
    """SIGTERM, as a service manager stops it: `searchlab server` and `ui` stop the MLflow server they started (a kill
    would leave that one running); killed if it has not stopped within 30 s."""
    if server.process.poll() is None:
        server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium driven through WebDriver (Debian's chromium and chromium-driver; .ci/run installs them),
    for the tests that click, switch tabs or look into frames as a person would."""
    import shutil

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Chromium or its WebDriver is not installed (.ci/run installs both)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.implicitly_wait(30)  # find_element waits for what the page's scripts render
    try:
        yield chrome
    finally:
        chrome.quit()

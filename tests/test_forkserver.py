"""The workers' fork server: `searchlab run` starts it before its own imports when the run will have workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SEARCHLAB, clean_env, write_study
from test_parallel import group_alive, wait_until

import searchlab.forkserver
from searchlab.forkserver import start_early

# Study-file code that records, as the file loads, whether the loading process has a fork server child yet. A child
# that is still finishing its exec (the parent's start returns once the exec is under way) shows an empty command
# line for a moment: it is read again.
RECORD_CHILDREN = """
import os as _os
import time as _time


def _command(child):
    for _ in range(100):
        text = open(f"/proc/{child}/cmdline").read()
        if text:
            break
        _time.sleep(0.01)
    return text.replace("\\0", " ")


_children = open(f"/proc/{_os.getpid()}/task/{_os.getpid()}/children").read().split()
_commands = [_command(child) for child in _children]
with open("loaded-by.txt", "a") as _record:
    _record.write(f"{_os.getpid()} {any('forkserver' in command for command in _commands)}\\n")
"""


@pytest.mark.parametrize(("workers", "early"), [("2", True), ("1", False)])
def test_run_starts_the_fork_server_before_it_loads_the_study_only_for_several_workers(
    workdir: Path, workers: str, early: bool
) -> None:
    # So that the workers' imports overlap the command's own (on a 16-core GPU host with 4 workers, the first
    # trial came at 14-17 s instead of 25-28 s).
    path = write_study(workdir)
    path.write_text(RECORD_CHILDREN + path.read_text())
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--workers", workers, "--trials", "2", "--no-report"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    loads = dict(line.split() for line in (workdir / "loaded-by.txt").read_text().splitlines())
    assert len(loads) == (1 if workers == "1" else 3)  # the command, then each worker
    assert loads[str(run.pid)] == str(early)


@pytest.mark.parametrize(
    ("flag", "variable", "cores", "started"),
    [
        ("2", None, 2, True),
        (None, "3", 2, True),
        ("auto", None, 2, True),
        ("auto", None, 1, False),
        (None, None, 8, False),
        ("1", "4", 8, False),
        ("zero", None, 8, False),
        ("0", None, 8, False),
    ],
)
def test_start_early_starts_it_for_a_run_with_several_workers_and_leaves_bad_input_to_the_run(
    monkeypatch: pytest.MonkeyPatch, flag: str | None, variable: str | None, cores: int, started: bool
) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(searchlab.forkserver, "worker_context", lambda: calls.append(True))
    monkeypatch.setattr(searchlab.forkserver.os, "cpu_count", lambda: cores)
    if variable is None:
        monkeypatch.delenv("SEARCHLAB_WORKERS", raising=False)
    else:
        monkeypatch.setenv("SEARCHLAB_WORKERS", variable)
    start_early(flag)
    assert calls == ([True] if started else [])


def test_a_run_that_stops_on_bad_input_leaves_no_fork_server_loading(workdir: Path) -> None:
    # Started before the study file is read, the fork server would go on importing torch & co. for seconds after
    # the command's one-line error, holding its output open (6.5 s here).
    broken = workdir / "broken.py"
    broken.write_text("raise RuntimeError('broken on purpose')\n")
    started = time.monotonic()
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(broken), "--workers", "2"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 2 and "broken on purpose" in stderr and len(stderr.strip().splitlines()) == 1
        assert time.monotonic() - started < 3, "something held the command's output open"
        wait_until(lambda: not group_alive(run.pid), timeout=5, what="the command's processes to end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)


# Study-file code that swallows a Ctrl-C while it "imports", as torch does when one comes while it imports numpy
# (numpy is left half-loaded, and the command died later with a RecursionError deep in numpy).
SWALLOWS_CTRL_C = """
import time as _time
try:
    open("loading", "w").close()
    _time.sleep(60)
except BaseException:
    pass
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_while_the_study_loads_ends_the_command_at_once_even_if_an_import_swallows_it(
    workdir: Path, workers: str
) -> None:
    path = write_study(workdir)
    path.write_text(SWALLOWS_CTRL_C + path.read_text())
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--workers", workers, "--trials", "2"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until((workdir / "loading").exists, timeout=60, what="the study file to start loading")
        run.send_signal(signal.SIGINT)  # to the command alone: it stops its fork server itself
        sent = time.monotonic()
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 130 and stderr.strip() == "interrupted", stderr
        assert time.monotonic() - sent < 3, "the command went on loading"
        wait_until(lambda: not group_alive(run.pid), timeout=5, what="the command's processes to end")
        assert sorted(p.name for p in workdir.iterdir() if p.name != "__pycache__") == ["loading", "tiny_study.py"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)

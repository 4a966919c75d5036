"""Parallel workers end to end: exact budgets, kill -9, PostgreSQL workers, heartbeats, Ctrl-C, a tracking server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import POSTGRES_URL, SEARCHLAB, clean_env, write_study
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_cli import check_tracked

from searchlab.budget import count, retried_numbers
from searchlab.cli import main
from searchlab.recovery import stale_trial_callback
from searchlab.results import trial_run_id
from searchlab.settings import BUDGET_ATTR, EXPERIMENT_ATTR, PARENT_RUN_ATTR
from searchlab.storage import open_storage
from searchlab.tracking import MlflowTracker

# Trials of about a second: long enough to be killed in the middle, short enough for a quick suite.
SLOW = {"max_epochs": 300, "patience": 300}


def wait_until(condition: Callable[[], object], *, timeout: float = 120, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def load(name: str, storage: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None


def running_trials(name: str, storage: str) -> list:
    study = load(name, storage)
    return study.get_trials(states=(TrialState.RUNNING,)) if study else []


def no_running_runs(client: MlflowClient, name: str) -> None:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert runs and [run.info.run_name for run in runs if run.info.status == "RUNNING"] == []


def test_workers_share_an_exact_budget_on_the_default_storage(workdir: Path) -> None:
    path = write_study(workdir, max_epochs=150, patience=150)  # trials long enough for every worker to start
    result = CliRunner().invoke(main, ["run", str(path), "--workers", "3", "--trials", "10"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert [trial.number for trial in study.trials] == list(range(10))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    check_tracked(study, client, path)
    assert len({trial.user_attrs["worker"] for trial in study.trials}) >= 2
    run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.data.params["threads"] == "1"  # one torch thread per CPU worker
    assert run.data.params["device"] == "cpu"
    parents = [r for r in client.search_runs(["1"]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.params["workers"] == "3"


def test_kill_9_of_workers_loses_nothing_and_leaves_nothing_running(workdir: Path) -> None:
    path = write_study(workdir, **SLOW)
    # Retries enough for a retry that is itself killed, again and again: the lowest running trial, the victim, is
    # often the latest retry, and a kill that lands just after a trial ends kills the next one too.
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--workers", "2", "--trials", "30", "--retries", "20"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = str(workdir / "searchlab.journal")
    killed: list[int] = []
    try:
        while len(killed) < 5:
            # (a trial just claimed is RUNNING a moment before it names its worker)
            victim = wait_until(
                lambda: [
                    t for t in running_trials("tiny", journal) if t.number not in killed and "worker" in t.user_attrs
                ],
                what="a running trial",
            )[0]
            time.sleep(0.3)  # some epochs in
            try:
                os.kill(int(victim.user_attrs["worker"].rpartition(":")[2]), signal.SIGKILL)
            except ProcessLookupError:  # an earlier kill landed as its worker began this trial: not yet reaped
                continue
            number = victim.number
            state = wait_until(
                lambda n=number: (s := load("tiny", journal).trials[n].state) != TrialState.RUNNING and s,
                what=f"trial {number} to end",
            )
            if state == TrialState.FAIL:  # not finished before the kill landed
                killed.append(number)
        _, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    assert "died (killed by SIGKILL)" in stderr
    study = load("tiny", journal)
    trials = study.get_trials()
    assert count(trials).final == 30 and count(trials).running == count(trials).waiting == 0
    died = [t.number for t in trials if "died" in t.user_attrs.get("fail_reason", "")]
    assert set(killed) <= set(died) and set(died) <= retried_numbers(trials), "every killed trial is retried"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    no_running_runs(client, "tiny")
    for number in died:
        dead = trials[number]
        assert dead.state == TrialState.FAIL and "died" in dead.user_attrs["fail_reason"]
        if "mlflow_run_id" not in dead.user_attrs:
            continue  # killed before it recorded its run id: that run was closed by its worker tag (checked above)
        run_record = client.get_run(dead.user_attrs["mlflow_run_id"])
        retry = next(t for t in trials if t.user_attrs.get("resumes") == number)
        assert retry.params == dead.params and retry.user_attrs["seed"] == dead.user_attrs["seed"]
        assert run_record.data.tags["retried"] == "True"
        if dead.intermediate_values:  # it trained: its params went with its run's creation, before any epoch
            assert {key: run_record.data.params.get(key) for key in dead.params} == {
                key: str(value) for key, value in dead.params.items()
            }
        # its retry went on in the same run (one curve, no step twice), or in a new one when it was killed before
        # it had read the dead run back
        steps = [
            sorted(point.step for point in client.get_metric_history(run_record.info.run_id, name))
            for name in ("train_loss", "val_loss")
        ]
        assert steps[0] == steps[1] and len(steps[1]) == len(set(steps[1]))
        if retry.user_attrs.get("mlflow_run_id") == run_record.info.run_id:
            assert retry.user_attrs["resumed_from"]["trial"] == number
        if retry.state == TrialState.COMPLETE and retry.user_attrs.get("mlflow_run_id") == run_record.info.run_id:
            assert run_record.info.status == "FINISHED" and steps[1] == list(range(1, len(steps[1]) + 1))


def test_workers_on_other_hosts_join_through_postgresql(workdir: Path) -> None:
    name = f"pg-workers-{uuid.uuid4().hex[:8]}"
    path = write_study(workdir, **SLOW)  # slow enough for the joining workers to start before the run is done
    args = ["--storage", POSTGRES_URL, "--study-name", name]
    processes = [
        subprocess.Popen(
            [SEARCHLAB, "run", str(path), "--trials", "8", *args],
            cwd=workdir,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    ]
    try:
        wait_until(
            lambda: (study := load(name, POSTGRES_URL)) and BUDGET_ATTR in study.user_attrs, what="the study to start"
        )
        processes += [
            subprocess.Popen(
                [SEARCHLAB, "worker", str(path), *args],
                cwd=workdir,
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [process.communicate(timeout=300) for process in processes]
        assert [process.returncode for process in processes] == [0, 0, 0], outputs
        study = load(name, POSTGRES_URL)
        assert [trial.number for trial in study.trials] == list(range(8))
        assert count(study.trials).final == 8
        check_tracked(study, MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), path)
        assert len({trial.user_attrs["worker"] for trial in study.trials}) >= 2
        assert sum(int(out.split("worker done: ")[1].split()[0]) for out, _ in outputs[1:]) >= 1
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL))


def test_a_worker_that_stopped_beating_elsewhere_is_failed_retried_and_closed(workdir: Path) -> None:
    name = f"pg-stale-{uuid.uuid4().hex[:8]}"
    path = write_study(workdir)
    tracking = f"sqlite:///{workdir / 'mlflow.db'}"
    args = ["--storage", POSTGRES_URL, "--study-name", name]
    try:
        first = subprocess.run(
            [SEARCHLAB, "run", str(path), "--trials", "1", *args],
            cwd=workdir,
            env=clean_env(SEARCHLAB_HEARTBEAT="1"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert first.returncode == 0, first.stderr
        # A worker on another host claims a trial, beats once, then vanishes.
        tracker = MlflowTracker(tracking)
        storage = open_storage(POSTGRES_URL, heartbeat=1, on_stale=stale_trial_callback(1, tracker, 3))
        study = optuna.load_study(study_name=name, storage=storage)
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.set_user_attr("worker", "some-other-host:4242")
        run_id = tracker.start_run(
            study.user_attrs[EXPERIMENT_ATTR], f"trial-{trial.number}", parent_run_id=study.user_attrs[PARENT_RUN_ATTR]
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.report(0.9, 1)
        trial.report(0.8, 2)
        storage.record_heartbeat(trial._trial_id)
        study.set_user_attr(BUDGET_ATTR, 3)
        time.sleep(4)  # past the grace period (3 heartbeats of 1 s)
        joined = subprocess.run(
            [SEARCHLAB, "worker", str(path), *args],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
            env=clean_env(),
        )  # adopts the run's heartbeat (1 s)
        assert joined.returncode == 0, joined.stderr
        trials = optuna.load_study(study_name=name, storage=open_storage(POSTGRES_URL)).get_trials()
        assert trials[trial.number].state == TrialState.FAIL
        assert trial.number in retried_numbers(trials)
        assert count(trials).final == 3 and count(trials).running == 0
        closed = MlflowClient(tracking).get_run(run_id)
        assert closed.info.status == "KILLED" and "heartbeats" in closed.data.tags["reason"]
        # its curves stay as its worker sent them (this one sent none), not completed from Optuna's values
        assert MlflowClient(tracking).get_metric_history(run_id, "val_loss") == []
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL))


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c-in-terminal", "sigint-to-run-only"])
def test_ctrl_c_stops_every_worker_and_leaves_nothing_running(workdir: Path, whole_group: bool) -> None:
    path = write_study(workdir, max_epochs=100000, patience=100000)
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--workers", "2", "--trials", "10"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    journal = str(workdir / "searchlab.journal")
    try:
        wait_until(lambda: len(running_trials("tiny", journal)) == 2, what="two running trials")
        time.sleep(1.0)
        if whole_group:
            os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr
    assert "parent run" in stdout
    study = load("tiny", journal)
    assert study.get_trials(states=(TrialState.RUNNING,)) == []
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    # each interrupted trial waits for the next run, which resumes it
    assert sorted(t.user_attrs["resumes"] for t in study.get_trials(states=(TrialState.WAITING,))) == [
        t.number for t in interrupted
    ]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    no_running_runs(client, "tiny")
    for trial in interrupted:
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"


def test_ctrl_c_while_the_fork_server_loads_ends_everything_at_once_with_one_line(workdir: Path) -> None:
    """A Ctrl-C in the first seconds, while the workers' fork server imports torch and mlflow: the command says
    'interrupted' once, with no traceback, and every process that holds its output is gone at once (the fork
    server does not finish its imports first)."""
    path = write_study(workdir)
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--workers", "2", "--trials", "4"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def fork_server_loading() -> bool:
        """Whether the fork server is importing, with searchlab.preload's Ctrl-C handler in place (before it, for
        the ~0.1 s its interpreter takes to start, a Ctrl-C is ignored: it would end once its imports did)."""
        listed = subprocess.run(
            ["ps", "-ww", "-o", "pid=,args=", "-g", str(run.pid)],  # -ww: never cut at 80
            capture_output=True,
            text=True,
        ).stdout
        for line in listed.splitlines():
            pid, _, args = line.strip().partition(" ")
            if "multiprocessing.forkserver" in args:
                with contextlib.suppress(OSError):
                    caught = next(
                        row for row in Path(f"/proc/{pid}/status").read_text().splitlines() if row.startswith("SigCgt:")
                    )
                    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))
        return False

    try:
        wait_until(fork_server_loading, timeout=60, what="the fork server to load with its Ctrl-C handler")
        os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        interrupted = time.monotonic()
        _, stderr = run.communicate(timeout=60)  # its end: every holder of the command's output has exited
        waited = time.monotonic() - interrupted
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted") and "Traceback" not in stderr, stderr
    assert waited < 3.0, f"the command's output stayed open {waited:.1f} s after Ctrl-C"


def test_parallel_workers_log_to_a_tracking_server(workdir: Path, mlflow_server: str) -> None:
    name = f"http-workers-{uuid.uuid4().hex[:8]}"
    path = write_study(workdir)
    result = CliRunner().invoke(
        main,
        ["run", str(path), "--workers", "2", "--trials", "4", "--tracking-uri", mlflow_server, "--study-name", name],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=name, storage=open_storage(None))
    check_tracked(study, MlflowClient(mlflow_server), path)
    no_running_runs(MlflowClient(mlflow_server), name)


def test_a_tracking_server_that_goes_down_briefly_loses_no_curve_point(workdir: Path, tmp_path_factory) -> None:
    from conftest import free_port

    folder = tmp_path_factory.mktemp("flaky-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "art"),
    ]

    def start_server() -> subprocess.Popen:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(
            lambda: subprocess.run(["curl", "-sf", f"{url}/health"], capture_output=True).returncode == 0,
            what="the tracking server",
        )
        return server

    server = start_server()
    path = write_study(workdir, **SLOW)
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--trials", "3", "--tracking-uri", url],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: running_trials("tiny", str(workdir / "searchlab.journal")), what="a running trial")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        time.sleep(3)
        server = start_server()
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        study = optuna.load_study(study_name="tiny", storage=open_storage(None))
        client = MlflowClient(url)
        for trial in study.trials:
            assert trial.state == TrialState.COMPLETE
            # a trial that started while the server was down is found by its number (it ended before its run existed)
            history = client.get_metric_history(trial_run_id(client, "tiny", trial), "val_loss")
            assert sorted(p.step for p in history) == list(range(1, trial.user_attrs["epochs"] + 1))
        no_running_runs(client, "tiny")
    finally:
        if run.poll() is None:
            run.kill()
        os.killpg(server.pid, signal.SIGKILL)


def test_a_study_reopened_after_its_run_was_killed_recovers_first(workdir: Path) -> None:
    path = write_study(workdir, max_epochs=100000, patience=100000)
    journal = str(workdir / "searchlab.journal")
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--trials", "3"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: [t for t in running_trials("tiny", journal) if t.intermediate_values], what="a trial training")
    run.kill()  # kill -9 of the whole run: nobody is left to clean up
    run.wait()
    (orphan,) = running_trials("tiny", journal)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(orphan.user_attrs["mlflow_run_id"]).info.status == "RUNNING"

    path = write_study(workdir)  # the same study, with short trials this time
    again = CliRunner().invoke(main, ["run", str(path), "--trials", "2"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    trials = load("tiny", journal).get_trials()
    assert trials[orphan.number].state == TrialState.FAIL
    assert orphan.number in retried_numbers(trials)
    # The orphan's retry is one of this run's 2 trials: enqueued trials count in --trials, as in Optuna's n_trials.
    assert count(trials).running == 0 and count(trials).final == 2
    assert trials[-2].system_attrs["failed_trial"] == orphan.number, "the retry runs first"
    assert trials[-2].user_attrs["resumed_from"]["trial"] == orphan.number
    continued = client.get_run(orphan.user_attrs["mlflow_run_id"])  # the retry went on in the orphan's run
    assert continued.info.status == "FINISHED" and trials[-2].user_attrs["mlflow_run_id"] == continued.info.run_id
    no_running_runs(client, "tiny")


WAIT_FOR_THE_WORKERS = """def data(seed):
    import os, pathlib, time
    pathlib.Path(f"data-{os.getpid()}").touch()
    if "CUDA_VISIBLE_DEVICES" not in os.environ:  # the command itself (each worker's slot sets it): wait for both
        deadline = time.monotonic() + 60
        while len(list(pathlib.Path().glob("data-*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
"""


RECORD_THE_PROCESS = """def data(seed):
    import json, os, torch
    with open("processes.jsonl", "a") as out:
        out.write(json.dumps({"pid": os.getpid(), "mark": os.environ.get("TEST_MARK"),
                              "slot": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads()}))
        out.write("\\n")
"""


def test_workers_see_their_runs_environment_and_their_slots_threads(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers are forked from a fork server that outlives a run (here, two runs in one process): each run's
    workers still get that run's environment, and torch in each has its slot's thread count."""
    import json

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # a worker's slot sets it; the command's stays unset
    path = write_study(workdir)
    path.write_text(path.read_text().replace("def data(seed):\n", RECORD_THE_PROCESS))
    for mark in ("first", "second"):
        monkeypatch.setenv("TEST_MARK", mark)
        result = CliRunner().invoke(main, ["run", str(path), "--workers", "2", "--trials", "2"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (workdir / "processes.jsonl").read_text().splitlines()]
    workers = [record for record in records if record["slot"] is not None]
    assert [record["mark"] for record in workers] == ["first", "first", "second", "second"]
    assert len({record["pid"] for record in workers}) == 4
    assert [record["threads"] for record in workers] == [1, 1, 1, 1]  # 2 workers on this machine's cores: 1 each


def group_alive(group: int) -> bool:
    """Whether a process of the group still runs (multiprocessing's resource tracker ends just after the command:
    it reads the command's end from a pipe)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_start_with_the_run_and_leave_quietly_when_its_set_up_fails(workdir: Path) -> None:
    """The workers load while the run is set up (here the command's data() waits until theirs ran); when the
    set-up fails (here: the one-batch check), they exit with it, before writing anything, and the command says
    why once."""
    from test_check import PLANTED

    path = write_study(workdir, body=PLANTED["detached output"][0])
    path.write_text(path.read_text().replace("def data(seed):\n", WAIT_FOR_THE_WORKERS))
    env = {k: v for k, v in clean_env().items() if k != "CUDA_VISIBLE_DEVICES"}
    started = time.monotonic()
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--workers", "2", "--trials", "4"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 1, stderr
    assert time.monotonic() - started < 50, "the command's data() waited in vain: its workers had not started"
    assert stderr.count("cannot learn one tiny batch") == 1 and "Traceback" not in stderr, stderr
    assert len(list(workdir.glob("data-*"))) == 3  # the command's and both workers'
    wait_until(lambda: not group_alive(run.pid), timeout=10, what="the command's processes to end")
    assert [p.name for p in workdir.iterdir() if p.name != "__pycache__" and not p.name.startswith("data-")] == [
        "tiny_study.py"
    ]


def check_stores_agree(client: MlflowClient, name: str, journal: str) -> list:
    """Every trial's MLflow run says what Optuna says: its state, and for a complete trial its whole curves and
    weights. Returns the trials."""
    trials = load(name, journal).get_trials()
    for trial in trials:
        if trial.state == TrialState.WAITING:
            continue
        run = client.get_run(trial_run_id(client, name, trial))
        assert run.data.tags["state"] == trial.state.name, (trial.number, run.data.tags)
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "KILLED"}.get(
            trial.state.name, run.info.status
        ), (trial.number, run.info.status)
        if trial.state == TrialState.COMPLETE:
            epochs = list(range(1, trial.user_attrs["epochs"] + 1))
            for curve in ("train_loss", "val_loss"):
                assert sorted(p.step for p in client.get_metric_history(run.info.run_id, curve)) == epochs
            assert "model_state_dict.pt" in [f.path for f in client.list_artifacts(run.info.run_id)]
    no_running_runs(client, name)
    return trials


def test_an_outage_past_the_wait_fails_no_trial_and_the_stores_agree_once_it_is_back(
    workdir: Path, restartable_server
) -> None:
    """The server stops mid-study for longer than SEARCHLAB_TRACKING_WAIT: the trials go on and complete (the run
    ends while the server is still down), what MLflow did not get is saved, and the next run sends it."""
    path = write_study(workdir, **SLOW)
    journal = str(workdir / "searchlab.journal")
    args = [SEARCHLAB, "run", str(path), "--tracking-uri", restartable_server.url]
    env = clean_env(SEARCHLAB_TRACKING_WAIT="3")
    run = subprocess.Popen(
        [*args, "--trials", "5"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: [t for t in running_trials("tiny", journal) if t.intermediate_values], what="a trial")
        restartable_server.kill()
        stdout, stderr = run.communicate(timeout=300)  # ends with the server down: nothing waited for it
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr and "failed" not in stderr, stderr
    assert [t.state for t in load("tiny", journal).get_trials()] == [TrialState.COMPLETE] * 5
    assert "the next run on this tracking URI sends them" in stdout, stdout
    restartable_server.start()
    again = subprocess.run([*args, "--trials", "1"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resent" in again.stdout and "unsent" not in again.stdout, again.stdout
    trials = check_stores_agree(MlflowClient(restartable_server.url), "tiny", journal)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6


def test_ctrl_c_while_the_tracking_server_is_down_exits_at_once_and_the_next_run_closes_up(
    workdir: Path, restartable_server
) -> None:
    from conftest import default_sigint

    path = write_study(workdir, **SLOW)
    journal = str(workdir / "searchlab.journal")
    args = [SEARCHLAB, "run", str(path), "--tracking-uri", restartable_server.url]
    run = subprocess.Popen(
        [*args, "--trials", "50"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        wait_until(lambda: [t for t in running_trials("tiny", journal) if t.number >= 1], what="a second trial")
        restartable_server.kill()
        time.sleep(1)  # the sender meets the outage
        interrupted = time.monotonic()
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=120)
        took = time.monotonic() - interrupted
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, stderr
    assert took < 30, f"a Ctrl-C waited {took:.0f}s for the tracking server"  # the retry window is 120 s
    assert "Traceback" not in stderr and "interrupted" in stderr, stderr
    assert "the next run on this tracking URI sends them" in stdout, stdout
    assert running_trials("tiny", journal) == []
    restartable_server.start()
    again = subprocess.run(
        [*args, "--trials", "1"], cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "resent" in again.stdout, again.stdout
    trials = check_stores_agree(MlflowClient(restartable_server.url), "tiny", journal)
    assert any(t.user_attrs.get("fail_reason") == "interrupted (Ctrl-C)" for t in trials)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        listing = subprocess.run(["ps", "-o", "pid=", "--ppid", str(todo.pop())], capture_output=True, text=True)
        children = {int(line) for line in listing.stdout.split()}
        found |= children
        todo += children
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_9_of_the_run_ends_its_fork_server_and_workers_and_fails_their_trials(workdir: Path) -> None:
    path = write_study(workdir, max_epochs=100000, patience=100000)
    journal = str(workdir / "searchlab.journal")
    run = subprocess.Popen(
        [SEARCHLAB, "run", str(path), "--workers", "2", "--trials", "10"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: len([t for t in running_trials("tiny", journal) if t.intermediate_values]) == 2,
            what="two trials training",
        )
        below = descendants(run.pid)
        workers = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in running_trials("tiny", journal)}
        assert workers < below and len(below) >= 3  # the fork server and two workers
    finally:
        run.kill()  # kill -9 of the whole run: its workers must not go on unsupervised
        run.wait()
    wait_until(lambda: not any(alive(pid) for pid in below), timeout=60, what="the fork server and workers to end")
    trials = load("tiny", journal).get_trials()
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert running_trials("tiny", journal) == [] and len(stopped) == 2
    assert {t.user_attrs["fail_reason"] for t in stopped} == {"stopped: its searchlab run died"}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for trial in stopped:  # the workers closed their trials' runs themselves
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    again = subprocess.run(
        [SEARCHLAB, "run", str(write_study(workdir)), "--trials", "1"],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    no_running_runs(client, "tiny")  # the parent run the kill left RUNNING is closed by the next run

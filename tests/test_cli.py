"""End to end through the CLI against the real stores: Optuna journal/PostgreSQL and MLflow sqlite/server."""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import DEFAULT_BODY, POSTGRES_URL, by_host_name, clean_env, write_study
from mlflow import MlflowClient
from optuna.trial import TrialState

from searchlab.cli import entry_point, main
from searchlab.settings import PARENT_RUN_TAG, STATE_DICT_FILE
from searchlab.storage import open_storage
from searchlab.study import load_study_file
from searchlab.trial import Trial

SPACE_PARAMS = {"lr", "momentum", "dropout", "weight_decay", "batch_size", "optimizer"}


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def runs_of(client: MlflowClient, name: str) -> tuple[list, list]:
    """(parent runs, child runs) of the experiment named ``name``."""
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if PARENT_RUN_TAG not in run.data.tags]
    children = [run for run in runs if PARENT_RUN_TAG in run.data.tags]
    return parents, children


def check_tracked(study: optuna.Study, client: MlflowClient, study_file: Path, *, seed: int = 0) -> None:
    """Every trial is cross-linked with a finished child run that holds params, full curves and loadable weights."""
    parents, children = runs_of(client, study.study_name)
    by_id = {run.info.run_id: run for run in children}
    parent_ids = {run.info.run_id for run in parents}
    declared = load_study_file(study_file)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags[PARENT_RUN_TAG] in parent_ids
        assert run.data.tags["trial_number"] == str(trial.number)
        assert run.data.tags["study_name"] == study.study_name
        assert run.data.tags["state"] == "COMPLETE"
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"trial-{trial.number} best_val_loss={trial.value:.4g}"
        assert "val_loss" not in run.data.tags, "one name for the curve (metric), one for the value: no tag like them"
        assert run.data.metrics["best_val_loss"] == pytest.approx(trial.value)
        assert SPACE_PARAMS | {"width", "seed", "n_params"} <= set(run.data.params)
        assert run.data.params["seed"] == str(trial.user_attrs["seed"])
        assert float(run.data.params["lr"]) == trial.params["lr"]
        epochs = trial.user_attrs["epochs"]
        for metric in ("train_loss", "val_loss", "val_mse", "val_mae", "val_r2"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [point.step for point in history] == list(range(1, epochs + 1))
        val_losses = [point.value for point in client.get_metric_history(run.info.run_id, "val_loss")]
        assert min(val_losses) == pytest.approx(trial.value)
        assert run.data.metrics["best_val_loss"] == pytest.approx(trial.value)
        # The weights load with weights_only=True into the study's model and reproduce the best val loss.
        path = client.download_artifacts(run.info.run_id, STATE_DICT_FILE)
        state_dict = torch.load(path, weights_only=True)
        model = declared.model(Trial(optuna.trial.FixedTrial(trial.params), dict(trial.params), seed=0))
        model.load_state_dict(state_dict)
        model.eval()
        split = declared.data(seed)  # the study seed also fixes the split
        x_val, y_val = split.val
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(model(x_val).squeeze(1), y_val).item()
        assert loss == pytest.approx(trial.value, rel=1e-4)


def test_run_tracks_every_trial_and_continues_the_study(workdir: Path, study_file: Path) -> None:
    result = invoke("run", str(study_file), "--trials", "3", "--sampler", "random", "--seed", "7")
    assert result.exit_code == 0, result.output
    assert "best       trial" in result.output and "compare    searchlab ui --study-name tiny" in result.output

    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert len(study.trials) == 3
    check_tracked(study, client, study_file, seed=7)
    (parent,), children = runs_of(client, "tiny")
    assert len(children) == 3
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "random" and parent.data.params["seed"] == "7"
    assert parent.data.params["n_trials"] == "3"
    # what the trials search: the space's names and the builder's own knob
    assert parent.data.params["searched"] == "lr,momentum,dropout,weight_decay,batch_size,width"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    assert parent.data.tags["best_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    description = parent.data.tags["mlflow.note.content"]  # the run's description in the UI, linking its charts
    assert f"(#/experiments/{parent.info.experiment_id}/runs?viewStateShareKey=searchlab&" in description

    again = invoke("run", str(study_file), "--trials", "3", "--sampler", "random", "--seed", "7")
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert [trial.number for trial in study.trials] == list(range(6))
    first, second = study.trials[:3], study.trials[3:]
    assert [t.params for t in first] != [t.params for t in second], "a continued study must not replay samples"
    parents, children = runs_of(client, "tiny")
    assert len(parents) == 2 and len(children) == 6


def test_trials_and_best_read_the_study_back(workdir: Path, study_file: Path) -> None:
    assert invoke("run", str(study_file), "--trials", "2").exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))

    table = invoke("trials").output.splitlines()
    assert table[0].split()[:4] == ["number", "state", "value", "mlflow_run_id"]
    assert [row.split()[0] for row in table[1:]] == ["0", "1"]
    assert all(trial.user_attrs["mlflow_run_id"] in table[trial.number + 1] for trial in study.trials)

    best = invoke("best", str(study_file), "--export", "best.pt")
    assert best.exit_code == 0, best.output
    assert f"trial      {study.best_trial.number}" in best.output
    assert study.best_trial.user_attrs["mlflow_run_id"] in best.output
    weights = torch.load(workdir / "best.pt", weights_only=True)
    assert set(weights) == {"0.weight", "0.bias", "3.weight", "3.bias"}


def test_run_on_postgresql_storage(workdir: Path, study_file: Path) -> None:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        result = invoke("run", str(study_file), "--trials", "2", "--storage", POSTGRES_URL, "--study-name", name)
        assert result.exit_code == 0, result.output
        study = optuna.load_study(study_name=name, storage=open_storage(POSTGRES_URL))
        assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 2
        check_tracked(study, MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), study_file)
        assert len(invoke("trials", "--storage", POSTGRES_URL, "--study-name", name).output.splitlines()) == 3
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL))


def test_run_against_a_tracking_server(workdir: Path, study_file: Path, mlflow_server: str) -> None:
    name = f"http-{uuid.uuid4().hex[:8]}"
    result = invoke("run", str(study_file), "--trials", "2", "--tracking-uri", mlflow_server, "--study-name", name)
    assert result.exit_code == 0, result.output
    assert "View run" not in result.output
    study = optuna.load_study(study_name=name, storage=open_storage(None))
    check_tracked(study, MlflowClient(mlflow_server), study_file)
    exported = invoke("best", "--study-name", name, "--tracking-uri", mlflow_server, "--export", "w.pt")
    assert exported.exit_code == 0, exported.output
    assert torch.load(workdir / "w.pt", weights_only=True)


def test_a_failing_trial_does_not_stop_the_study(workdir: Path) -> None:
    body = """    if trial.number == 1:
        raise RuntimeError("planted failure")
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))"""
    # The preflight builds the model from an in-memory trial numbered 0, so only the study's trial 1 fails.
    path = write_study(workdir, body=body)
    result = invoke("run", str(path), "--trials", "3")
    assert result.exit_code == 0, result.output
    assert "trial 1 failed: RuntimeError: planted failure" in result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    failed = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["reason"] == "RuntimeError: planted failure"
    assert study.trials[1].user_attrs["fail_reason"] == "RuntimeError: planted failure"


def test_a_diverging_trial_stops_with_its_reason_and_no_nan(workdir: Path) -> None:
    path = write_study(workdir, extra="space=sl.default_space(lr=1e9, momentum=0.0)")
    refused = CliRunner().invoke(main, ["run", str(path), "--trials", "2"])
    assert refused.exit_code == 1 and "the loss became nan" in refused.output  # the preflight check sees it
    result = invoke("run", str(path), "--trials", "2", "--no-check")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for trial in study.trials:
        assert "non-finite" in trial.user_attrs["reason"]
        assert trial.value is None or math.isfinite(trial.value)
        assert all(math.isfinite(v) for v in trial.intermediate_values.values())
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert "non-finite" in run.data.tags["reason"]
        assert run.info.status in {"FINISHED", "FAILED"}
        assert all(math.isfinite(v) for v in run.data.metrics.values())


BAD_INPUTS = {
    "missing file": ({}, ["run", "nothere.py"], "not found"),
    "no study": ({"text": "x = 1\n"}, ["run", "study.py"], "declares no study"),
    "inverted range": (
        {"extra": "space=sl.default_space(lr=sl.Float(0.1, 0.001, log=True))"},
        ["run", "study.py"],
        "inverted range",
    ),
    "log scale from zero": (
        {"extra": "space=sl.default_space(lr=sl.Float(0.0, 0.1, log=True))"},
        ["run", "study.py"],
        "must start above 0",
    ),
    "unknown sampler flag": ({}, ["run", "study.py", "--sampler", "grid"], "'grid' is not one of"),
    "unknown sampler in file": ({"extra": "sampler='grid'"}, ["run", "study.py"], "unknown sampler 'grid'"),
    "unknown task": ({"task": "ranking"}, ["run", "study.py"], "unknown task 'ranking'"),
    "zero trials": ({}, ["run", "study.py", "--trials", "0"], "n_trials must be at least 1"),
    "trials not a number": ({}, ["run", "study.py", "--trials", "many"], "'many' is not a valid integer"),
    "unreachable storage": (
        {},
        ["run", "study.py", "--storage", "postgresql://postgres@127.0.0.1:1/test"],
        "cannot open storage postgresql://postgres@127.0.0.1:1/test",
    ),
    "storage password masked": (
        {},
        ["run", "study.py", "--storage", "postgresql://bob:s3cret@127.0.0.1:1/test"],
        "postgresql://bob:***@127.0.0.1:1/test",
    ),
    "storage folder missing": ({}, ["run", "study.py", "--storage", "nowhere/study.journal"], "does not exist"),
    "unknown storage scheme": ({}, ["run", "study.py", "--storage", "redis://127.0.0.1:6379"], "unknown storage"),
    "unreachable tracking server": (
        {},
        ["run", "study.py", "--tracking-uri", "http://127.0.0.1:1"],
        "cannot reach the MLflow tracking server at http://127.0.0.1:1",
    ),
    "tracking folder missing": (
        {},
        ["run", "study.py", "--tracking-uri", "sqlite:///nowhere/mlflow.db"],
        "does not exist",
    ),
    "sigmoid head on regression": (
        {"body": "    return nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())"},
        ["run", "study.py"],
        "ends in nn.Sigmoid",
    ),
    "output shape mismatch": (
        {"body": "    return nn.Linear(4, 3)"},
        ["run", "study.py"],
        "outputs shape (8, 3) but targets have shape (8,)",
    ),
    "builder that crashes": (
        {"body": "    return nn.Linear(4, trial.params['width'])"},
        ["run", "study.py"],
        "KeyError: 'width'",
    ),
    "dropped param still used": (
        {"extra": "space=sl.default_space(dropout=None)"},
        ["run", "study.py"],
        "KeyError: 'dropout'",
    ),
    "no study for trials": ({}, ["trials"], "run 'searchlab run FILE' first"),
    "ftp tracking URI": ({}, ["run", "study.py", "--tracking-uri", "ftp://x"], "unsupported tracking URI 'ftp://x'"),
    "plain-path tracking URI": (
        {},
        ["run", "study.py", "--tracking-uri", "./mlruns"],
        "use sqlite:///PATH (e.g. sqlite:///mlflow.db) or http://HOST:PORT",
    ),
    "tracking server refusing the host name": (
        {},
        ["run", "study.py", "--tracking-uri", "{server_by_host_name}"],
        "(HTTP 403, MLflow's host check): start it with --allowed-hosts ",
    ),
    "sqlite tracking in a read-only folder": (
        {},
        ["run", "study.py", "--tracking-uri", "sqlite:///{read_only}/m.db"],
        "cannot be written here",
    ),
    "journal in a read-only folder": (
        {},
        ["run", "study.py", "--storage", "{read_only}/study.journal"],
        "cannot be written here",
    ),
    "storage is a folder": ({}, ["run", "study.py", "--storage", "."], "storage '.' is a folder"),
    "storage is the study file": ({}, ["run", "study.py", "--storage", "study.py"], "is a Python file"),
    "storage is a new .py file": ({}, ["run", "study.py", "--storage", "some_file.py"], "is a Python file"),
    "study name with a newline": ({}, ["run", "study.py", "--study-name", "we'ird\n$(id)"], "control characters"),
    "study name with a tab in the file": ({"name": "a\tb"}, ["run", "study.py"], "control characters"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    workdir: Path, case: str, request: pytest.FixtureRequest
) -> None:
    spec, args, message = BAD_INPUTS[case]
    if "text" in spec:
        (workdir / "study.py").write_text(spec["text"])
    else:
        write_study(workdir, filename="study.py", **spec)
    study_text = (workdir / "study.py").read_text()
    read_only = request.getfixturevalue("read_only_folder") if any("{read_only}" in arg for arg in args) else None
    server = request.getfixturevalue("mlflow_server") if "{server_by_host_name}" in args else None
    args = [arg.replace("{read_only}", str(read_only)) for arg in args]
    if server is not None:
        args = [by_host_name(server) if arg == "{server_by_host_name}" else arg for arg in args]
        experiments = {experiment.name for experiment in MlflowClient(server).search_experiments()}
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and not result.stdout, result.output
    assert message in lines[0]
    assert "s3cret" not in result.output
    # both stores untouched: no journal, sqlite file or study created, no experiment or run on the server
    assert sorted(path.name for path in workdir.iterdir() if path.name != "__pycache__") == ["study.py"]
    assert (workdir / "study.py").read_text() == study_text
    if read_only is not None:
        assert not list(read_only.iterdir())
    if server is not None:
        assert {experiment.name for experiment in MlflowClient(server).search_experiments()} == experiments


@pytest.mark.parametrize(
    ("storage", "tracking_uri"),
    [
        ("searchlab.journal", None),
        ("my runs/study.journal", "sqlite:///my runs/m;$(id).db"),
        ("postgresql://bob:***@db/x", "sqlite:///x.db"),
    ],
)
def test_the_printed_compare_commands_paste_into_a_shell_as_they_read(
    workdir: Path, storage: str, tracking_uri: str | None
) -> None:
    """A study name (or path) with quotes, ; or $(...) stays one word when the printed line is pasted."""
    from searchlab.settings import default_tracking_uri
    from searchlab.summary import RunSummary

    name = 'we\'ird;$(id) `id` "x"'
    summary = RunSummary(name, storage, tracking_uri or default_tracking_uri(), "1", "r")
    (line,) = [line for line in summary.lines() if line.startswith("compare")]
    ui, dashboard = line.removeprefix("compare    ").removesuffix(" (Optuna dashboard)").split(" (MLflow UI); ")
    for command in (ui, dashboard):  # searchlab as a shell function that prints its arguments, one per line
        done = subprocess.run(
            ["sh", "-c", f'searchlab() {{ printf "%s\\n" "$@"; }}; {command}'],
            capture_output=True,
            text=True,
            env={"SEARCHLAB_STORAGE": "postgresql://bob:pw@db/x", "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0 and not done.stderr, done
        words = done.stdout.splitlines()
        assert words[:3] == [command.split()[1], "--study-name", name]
        if command is ui:
            assert words[3:] == ([] if tracking_uri is None else ["--tracking-uri", tracking_uri])
        else:
            assert words[3:] == (
                []
                if storage == "searchlab.journal"
                else ["--storage", "postgresql://bob:pw@db/x" if "***" in storage else storage]
            )


def test_environment_settings_are_checked_too(workdir: Path, study_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCHLAB_SAMPLER", "grid")
    result = CliRunner().invoke(main, ["run", str(study_file)])
    assert result.exit_code == 2 and "unknown sampler 'grid'" in result.output
    monkeypatch.setenv("SEARCHLAB_SAMPLER", "random")
    monkeypatch.setenv("SEARCHLAB_TRIALS", "lots")
    result = CliRunner().invoke(main, ["run", str(study_file)])
    assert result.exit_code == 2 and "SEARCHLAB_TRIALS='lots' must be an integer" in result.output
    assert not (workdir / "searchlab.journal").exists() and not (workdir / "mlflow.db").exists()


def test_every_command_has_help() -> None:
    for command in ([], *([name] for name in main.commands)):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_pruned_trials_keep_their_curve_and_say_when(workdir: Path) -> None:
    path = write_study(workdir, max_epochs=30, patience=30)
    result = invoke("run", str(path), "--trials", "14", "--pruner", "median", "--sampler", "random")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "the median pruner stops some of 14 random trials"
    assert len(study.trials) == 14
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for trial in pruned:
        epoch = trial.user_attrs["pruned_epoch"]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["state"] == "PRUNED" and run.data.tags["pruned_epoch"] == str(epoch)
        assert run.data.tags["reason"].startswith(f"pruned at epoch {epoch}")
        steps = [point.step for point in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == list(range(1, epoch + 1)) == sorted(trial.intermediate_values)
    (parent,) = runs_of(client, "tiny")[0]
    assert parent.data.params["pruner"] == "median"


@pytest.mark.parametrize("pruner", ["none", "hyperband", "sha"])
def test_every_pruner_runs(workdir: Path, study_file: Path, pruner: str) -> None:
    result = invoke("run", str(study_file), "--trials", "3", "--pruner", pruner)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert all(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in study.trials)


def test_the_console_script_freezes_the_heap_on_its_way_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The installed ``searchlab`` ends through entry_point: the command's own exit code, its objects frozen so
    that interpreter shutdown does not walk them (seconds after a run)."""
    monkeypatch.setattr(sys, "argv", ["searchlab", "--version"])
    try:
        with pytest.raises(SystemExit) as exited:
            entry_point()
        assert exited.value.code == 0 and "version" in capsys.readouterr().out
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_python_dash_m_searchlab_is_the_same_command() -> None:
    """``python -m searchlab`` works where the console script is not on PATH (e.g. searchlab on PYTHONPATH)."""
    done = subprocess.run([sys.executable, "-m", "searchlab", "run", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m searchlab run" in done.stdout and "--trials-per-device" in done.stdout


FAILS_IN_TRAINING = """    class FailsInTraining(nn.Module):  # but on the check's batch of 8 examples
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, x):
            if self.training and len(x) != 8:
                raise RuntimeError("planted failure")
            return self.layers(x)

    return FailsInTraining()"""


def test_a_run_where_no_trial_completes_exits_1_and_says_so(workdir: Path) -> None:
    """A CI job or a scheduler must tell a sweep that produced nothing from one that did: every trial failing is
    exit 1 and one line on stderr (the summary still says where everything is), from the CLI and from the study
    file run as a script."""
    path = write_study(workdir, body=FAILS_IN_TRAINING)
    result = CliRunner().invoke(main, ["run", str(path), "--trials", "2"])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: no trial completed this run: 2 failed (trial 0: RuntimeError: planted failure)"]
    assert "study      tiny: 2 trials this run (2 fail)" in result.stdout
    script = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=clean_env(SEARCHLAB_TRIALS="1")
    )
    assert script.returncode == 1, script.stderr
    assert "Error: no trial completed this run: 1 failed (trial 2: RuntimeError: planted failure)" in script.stderr
    planted = "    if trial.number == 1:\n        raise RuntimeError('planted')\n" + DEFAULT_BODY
    mixed = write_study(workdir, body=planted, name="mixed", filename="mixed.py")
    assert CliRunner().invoke(main, ["run", str(mixed), "--trials", "2"]).exit_code == 0  # one completed


def test_check_and_run_give_a_model_error_and_a_failed_check_the_same_exit_code(workdir: Path) -> None:
    """One meaning per code: 2 for a model that does not fit the task (refused before training), 1 for a model
    that fits but cannot learn, from `check` and from `run` alike."""
    softmax = "    return nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())"
    detached = (
        "    return nn.Sequential(nn.Linear(4, 1), nn.Flatten(0), nn.Unflatten(0, (-1, 1))).requires_grad_(False)"
    )
    for body, code, message in ((softmax, 2, "ends in nn.Sigmoid"), (detached, 1, "requires grad")):
        path = write_study(workdir, body=body, name="s", filename="s.py")
        for command in (["check", str(path)], ["run", str(path), "--trials", "1"]):
            result = CliRunner().invoke(main, command)
            assert result.exit_code == code, (command, result.output)
            assert message in result.output, result.output

"""searchlab.packing: `searchlab run --pack K` trains packs of real trials on real stores (journal, PostgreSQL,
MLflow), each member its own Optuna trial and MLflow run, the budget exact."""

from __future__ import annotations

import uuid
from collections import defaultdict
from pathlib import Path

import optuna
from click.testing import CliRunner
from conftest import POSTGRES_URL, write_study
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_cli import check_tracked, invoke, runs_of

from searchlab.cli import main
from searchlab.settings import BUDGET_ATTR, PACK_ATTR
from searchlab.storage import open_storage


def packs_of(study: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    packs: dict[int, list[optuna.trial.FrozenTrial]] = defaultdict(list)
    for trial in study.trials:
        packs[trial.user_attrs[PACK_ATTR]["first"]].append(trial)
    return packs


def test_every_member_of_a_pack_is_a_tracked_trial_and_the_budget_is_exact(workdir: Path, study_file: Path) -> None:
    result = invoke("run", str(study_file), "--pack", "3", "--trials", "7")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert len(study.trials) == 7
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    check_tracked(study, client, study_file)  # params, full curves, weights reproducing the value, cross-links
    (parent,), children = runs_of(client, "tiny")
    assert len(children) == 7
    said = "7 trials in 3 packs, each trained as one vectorised model (members per pack: 3, 3, 1)"
    assert f"packs      {said}" in result.output
    assert parent.data.params["pack"] == "3"
    assert (parent.data.tags["packs"], parent.data.tags["members_per_pack"]) == ("3", "3,3,1")
    summary = Path(client.download_artifacts(parent.info.run_id, "report/summary.md")).read_text()
    assert f"{said}." in summary
    packs = packs_of(study)
    assert sorted(len(members) for members in packs.values()) == [1, 3, 3]
    for first, members in packs.items():
        attrs = [member.user_attrs[PACK_ATTR] for member in members]
        assert all(a["members"] == [m.number for m in members] for a in attrs)
        assert {a["batch_seed"] for a in attrs} == {study.trials[first].user_attrs["seed"]}
        shared = {(m.params["width"], m.params["batch_size"]) for m in members}
        assert len(shared) == 1, "members share the params that define shapes and the batch stream"
        assert len({m.params["lr"] for m in members}) == len(members), "the sampler picks each member's lr"
        assert len({m.user_attrs["seed"] for m in members}) == len(members), "each member has its own seed"


def test_pruned_members_leave_their_pack_with_their_curve(workdir: Path) -> None:
    path = write_study(workdir, max_epochs=30, patience=30)
    result = invoke("run", str(path), "--pack", "4", "--trials", "12", "--pruner", "median", "--sampler", "random")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert len(study.trials) == 12
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "the median pruner stops some of 12 random trials"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for trial in pruned:
        epoch = trial.user_attrs["pruned_epoch"]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "PRUNED"
        steps = [point.step for point in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == list(range(1, epoch + 1)) == sorted(trial.intermediate_values)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    for trial in complete:  # a pruned member does not stop the others
        assert len(trial.intermediate_values) == 30 or trial.user_attrs["reason"].startswith("non-finite")


def test_two_workers_pack_trials_of_one_study_on_postgresql_tracked_to_a_server(
    workdir: Path, study_file: Path, mlflow_server: str
) -> None:
    name = f"pack-{uuid.uuid4().hex[:8]}"
    try:
        result = invoke(
            "run", str(study_file), "--pack", "3", "--workers", "2", "--trials", "8",
            "--storage", POSTGRES_URL, "--study-name", name, "--tracking-uri", mlflow_server,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        study = optuna.load_study(study_name=name, storage=open_storage(POSTGRES_URL))
        assert len(study.trials) == 8
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
        assert len({t.user_attrs["worker"] for t in study.trials}) == 2
        assert max(len(members) for members in packs_of(study).values()) == 3
        check_tracked(study, MlflowClient(mlflow_server), study_file)
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL))


def test_a_model_a_pack_cannot_vectorise_is_refused_before_anything_is_written(workdir: Path) -> None:
    body = "    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))"
    path = write_study(workdir, body=body)
    result = CliRunner().invoke(main, ["run", str(path), "--pack", "2"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: the model's BatchNorm1d at '1' updates running statistics, which a pack of trials cannot share: "
        "use nn.GroupNorm or nn.LayerNorm, track_running_stats=False, or --pack 1"
    ]
    assert not (workdir / "searchlab.journal").exists() and not (workdir / "mlflow.db").exists()
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "1"]).exit_code == 0, "unpacked it trains"


def test_a_joining_worker_adopts_the_runs_pack_size(workdir: Path, study_file: Path) -> None:
    name = f"pack-join-{uuid.uuid4().hex[:8]}"
    args = ["--storage", POSTGRES_URL, "--study-name", name]
    try:
        assert invoke("run", str(study_file), "--pack", "2", "--trials", "2", *args).exit_code == 0
        study = optuna.load_study(study_name=name, storage=open_storage(POSTGRES_URL))
        study.set_user_attr(BUDGET_ATTR, 6)  # as if the run were still going: four more trials to take
        joined = invoke("worker", str(study_file), *args)
        assert joined.exit_code == 0, joined.output
        assert "worker done: 4 trial(s) finished here" in joined.output
        study = optuna.load_study(study_name=name, storage=open_storage(POSTGRES_URL))
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
        assert sorted(len(members) for members in packs_of(study).values()) == [2, 2, 2]
        check_tracked(study, MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"), study_file)
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES_URL))


def test_bad_input_in_one_member_fails_the_whole_pack_and_leaves_nothing_running(workdir: Path) -> None:
    body = """    if trial.number == 1:
        raise sl.ConfigError("trial 1's model is bad input")
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))"""
    path = write_study(workdir, body=body)
    result = CliRunner().invoke(main, ["run", str(path), "--pack", "3", "--trials", "3"])
    assert result.exit_code == 2, result.output
    assert "trial 1's model is bad input" in result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3, "every claimed member is told, none RUNNING"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert {run.info.status for run in runs_of(client, "tiny")[1]} == {"FAILED"}

"""The objective with an in-memory tracker: seeds, params, tracking, statuses, optimizers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import optuna
import pytest
import torch
from torch import nn

import searchlab as sl
from searchlab.config import TrialSettings
from searchlab.data import prepare_split
from searchlab.devices import Slot
from searchlab.errors import TrialStopped
from searchlab.model import build_optimizer, trial_seed
from searchlab.objective import Objective, resumed_trial
from searchlab.tasks import ModelError, get_task


class InMemoryTracker:
    """A Tracker that keeps everything in dicts, for tests of what the objective records."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}

    def start_run(
        self, experiment_id: str, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> str:
        run_id = f"run{len(self.runs)}"
        self.runs[run_id] = {
            "name": name,
            "parent": parent_run_id,
            "tags": dict(tags or {}),
            "params": {},
            "metrics": [],
            "state_dict": None,
            "status": "RUNNING",
        }
        return run_id

    def run_id(self, run: str, *, wait: bool = True) -> str:
        return run

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.runs[run_id]["params"].update(params)

    def log_metrics(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        self.runs[run_id]["metrics"].append((step, dict(values)))

    def log_state_dict(self, run_id: str, state_dict: Mapping[str, Any]) -> None:
        self.runs[run_id]["state_dict"] = dict(state_dict)

    def log_checkpoint(self, run_id: str, checkpoint: Mapping[str, Any]) -> None:
        self.runs[run_id].setdefault("checkpoints", []).append(checkpoint["epoch"])

    checkpoint_seconds = 0.0

    def delete_checkpoints(self, run_id: str) -> None:
        self.runs[run_id]["checkpoints"] = []

    def resume_run(self, run_id: str, tags: Mapping[str, Any]) -> Any:
        raise NotImplementedError("tests/test_resume.py resumes trials on real stores")

    def end_run(self, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
        self.runs[run_id]["tags"].update(tags or {})
        self.runs[run_id]["status"] = status


def data(seed: int) -> sl.Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 3, generator=g)
    y = x @ torch.tensor([1.0, -1.0, 2.0])
    return sl.Split(train=(x[:64], y[:64]), val=(x[64:], y[64:]))


def model(trial: sl.Trial) -> nn.Module:
    width = trial.suggest_int("width", 4, 8)
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Dropout(trial.params["dropout"]), nn.Linear(width, 1))


def make_objective(study: sl.Study, tracker: InMemoryTracker) -> Objective:
    train, val = prepare_split(study.data(0), get_task(study.task))
    settings = TrialSettings(
        "0", "parent", seed=0, max_epochs=5, patience=2, run_tags={"study_name": study.name, "sampler": "random"}
    )
    return Objective(study, train, val, tracker, settings, slot=Slot(0, "cpu", threads=1))


def tiny_study(**changes: Any) -> sl.Study:
    return sl.Study(**{"name": "tiny", "task": "regression", "data": data, "model": model, **changes})


def test_trial_seed_derives_from_study_seed_and_number() -> None:
    assert trial_seed(0, 3) == trial_seed(0, 3)
    assert len({trial_seed(0, n) for n in range(50)}) == 50
    assert trial_seed(0, 3) != trial_seed(1, 3)


def test_objective_returns_best_val_loss_and_tracks_the_trial() -> None:
    tracker = InMemoryTracker()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(make_objective(tiny_study(), tracker), n_trials=1)
    trial = study.trials[0]
    (run,) = tracker.runs.values()
    assert run["parent"] == "parent" and run["status"] == "FINISHED" and run["name"] == "trial-0"
    assert run["tags"] | {"trial_number": 0, "state": "COMPLETE", "study_name": "tiny"} == run["tags"]
    assert {
        "lr",
        "momentum",
        "dropout",
        "weight_decay",
        "batch_size",
        "optimizer",
        "width",
        "seed",
        "n_params",
        "device",
        "threads",
    } <= set(run["params"])
    assert run["params"]["device"] == "cpu" and run["params"]["threads"] == 1
    assert run["params"]["seed"] == trial.user_attrs["seed"] == trial_seed(0, 0)
    curve = [values["val_loss"] for step, values in run["metrics"] if "val_loss" in values]
    assert min(curve) == pytest.approx(trial.value)
    assert [step for step, values in run["metrics"] if "val_loss" in values] == list(range(1, len(curve) + 1))
    assert trial.intermediate_values == {step: value for step, value in enumerate(curve, start=1)}
    assert set(run["state_dict"]) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert trial.user_attrs["mlflow_run_id"] == "run0"


def test_same_seed_same_trial_same_result_on_cpu() -> None:
    values = []
    for _ in range(2):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
        study.optimize(make_objective(tiny_study(), InMemoryTracker()), n_trials=2)
        values.append([trial.value for trial in study.trials])
    assert values[0] == values[1]


def test_a_failing_builder_fails_the_run_with_its_reason() -> None:
    def broken(trial: sl.Trial) -> nn.Module:
        raise RuntimeError("no such layer")

    tracker = InMemoryTracker()
    with pytest.raises(RuntimeError):
        make_objective(tiny_study(model=broken), tracker)(optuna.create_study().ask())
    (run,) = tracker.runs.values()
    assert run["status"] == "FAILED"
    assert run["tags"]["reason"] == "RuntimeError: no such layer" and run["tags"]["state"] == "FAIL"


def test_ctrl_c_kills_the_run_and_propagates() -> None:
    def interrupted(trial: sl.Trial) -> nn.Module:
        raise KeyboardInterrupt

    tracker = InMemoryTracker()
    with pytest.raises(KeyboardInterrupt):
        make_objective(tiny_study(model=interrupted), tracker)(optuna.create_study().ask())
    (run,) = tracker.runs.values()
    assert run["status"] == "KILLED" and "interrupted" in run["tags"]["reason"]


def test_a_trial_that_diverges_at_once_stops_with_its_reason() -> None:
    tracker = InMemoryTracker()
    study = tiny_study(space=sl.default_space(lr=1e12, momentum=0.0))
    trial = optuna.create_study().ask()
    with pytest.raises(TrialStopped, match=r"non-finite (training|validation) loss .* at epoch 1"):
        make_objective(study, tracker)(trial)
    (run,) = tracker.runs.values()
    assert run["status"] == "FAILED" and "non-finite" in run["tags"]["reason"]
    assert run["metrics"] == [] and run["state_dict"] is None


@pytest.mark.parametrize(
    ("name", "kind"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_build_optimizer(name: str, kind: type) -> None:
    layer = nn.Linear(2, 1)
    optimizer = build_optimizer(layer, {"optimizer": name, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4})
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 1e-4
    assert (group["momentum"] if name == "sgd" else group["betas"][0]) == 0.9


def test_build_optimizer_leaves_frozen_layers_out() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, {"lr": 0.1})
    assert [p.shape for p in optimizer.param_groups[0]["params"]] == [(1, 2), (1,)]
    model[1].requires_grad_(False)
    with pytest.raises(ModelError, match="no parameter of the model requires grad"):
        build_optimizer(model, {"lr": 0.1})


def test_dropped_parameters_fall_back_to_defaults() -> None:
    optimizer = build_optimizer(nn.Linear(2, 1), {})
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.SGD and group["lr"] == 1e-3 and group["momentum"] == 0.0


def test_a_pruned_trial_logs_its_best_weights_so_far_and_keeps_its_checkpoint() -> None:
    tracker = InMemoryTracker()
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=3))
    objective = make_objective(tiny_study(), tracker)
    objective.settings = dataclasses.replace(objective.settings, checkpoint_every=0)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and max(trial.intermediate_values) == 3
    (run,) = tracker.runs.values()
    best_epoch = min(trial.intermediate_values, key=trial.intermediate_values.__getitem__)
    assert (best_epoch, {"best_val_loss": trial.intermediate_values[best_epoch]}) in run["metrics"]
    assert set(run["state_dict"]) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    assert run["checkpoints"] == [1, 2, 3], "kept for searchlab resume"
    assert run["tags"]["state"] == "PRUNED" and run["status"] == "FINISHED"


def test_a_complete_trial_deletes_its_checkpoints() -> None:
    tracker = InMemoryTracker()
    objective = make_objective(tiny_study(), tracker)
    objective.settings = dataclasses.replace(objective.settings, checkpoint_every=0)
    optuna.create_study().optimize(objective, n_trials=1)
    (run,) = tracker.runs.values()
    assert run["status"] == "FINISHED" and run["checkpoints"] == []


def test_a_retry_takes_up_the_run_of_the_trial_it_resumes_even_through_one_that_died_before_naming_it() -> None:
    study = optuna.create_study()
    setup = {"data_seed": 0, "threads": 1, "max_epochs": 5, "patience": 2}
    attrs = [
        {"seed": 11, "setup": setup, "mlflow_run_id": "run-a"},  # A: died; its run holds the checkpoint
        {"seed": 11, "setup": setup, "resumes": 0},  # B: A's retry, killed while it read A's run back
        {"resumes": 1},  # C: B's retry
    ]
    for user_attrs in attrs:
        study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.WAITING, user_attrs=user_attrs))
    trial_c = optuna.Trial(study, study.trials[2]._trial_id)
    source, run_id = resumed_trial(trial_c, data_seed=0)
    assert (source.number, source.user_attrs["seed"], run_id) == (1, 11, "run-a")
    assert resumed_trial(trial_c, data_seed=1) is None, "another data split: a fresh trial"
    assert resumed_trial(optuna.Trial(study, study.trials[0]._trial_id), data_seed=0) is None

"""A long-lived nightly study, written as fast as the stores take it: the history searchlab must stay quick on.

Night 1 is real (``searchlab nightly STUDY --trials 3 --max-epochs 3``): trained trials, a registered champion, and
the exact records searchlab writes. Nights 2..N are made from it through the stores' own APIs, without training:
- Optuna: each trial as a worker writes it (ask, each param, its user attributes, one intermediate value per epoch,
  tell; on a journal op by op, so the file is the one a year of real nights leaves; on a database one transaction
  per trial, the same rows), then what a run and a night record on the study;
- MLflow: the night's parent run and a child run per trial (params, tags, five curves, best_val_loss).
Values are a smooth function of the params with noise, so that a sampler has something to learn.

By hand (``--storage`` a journal path, the default, or a postgresql:// URL; the folder gets mlflow.db; a folder
that holds a history is continued up to --nights):
    python benchmarks/history.py FOLDER --nights 365 --trials 50
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import SEARCHLAB, clean_env  # noqa: E402

STUDY_FILE = str(HERE.parent / "studies" / "regression.py")
STUDY_NAME = "regression"
STORAGE_FILE = "storage.txt"  # in a history's folder: where its study is (a journal file's name or a database URL)
CURVES = ("train_loss", "val_loss", "val_mae", "val_mse", "val_r2")


def write_history(
    folder: Path, *, nights: int, trials: int, storage: str | None = None, seed: int = 0, say: Any = print
) -> None:
    """Night 1 for real in ``folder``, then nights 2..``nights`` of ``trials`` trials each, written directly. A folder
    that holds a history already (on its own storage) is continued up to ``nights``: a year becomes three."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if (folder / STORAGE_FILE).exists():
        storage = storage_of(folder)
    else:
        (folder / STORAGE_FILE).write_text(storage or "searchlab.journal")
        real_night(folder, storage)
        say(f"night 1 (real): {time.perf_counter() - started:.1f} s")
    writer = Writer(folder, storage, seed)
    written = writer.nights_written()
    if nights > written:
        writer.nights(nights - written, trials, say)
    say(f"{nights} nights of {trials} trials: {time.perf_counter() - started:.1f} s")


def storage_of(folder: Path) -> str:
    """The storage of the history in ``folder``: its journal file's name, or the database's URL."""
    return (folder / STORAGE_FILE).read_text().strip()


def real_night(folder: Path, storage: str | None) -> None:
    command = [*SEARCHLAB, "nightly", STUDY_FILE, "--trials", "3", "--max-epochs", "3", "--workers", "1"]
    if storage:
        command += ["--storage", storage]
    done = subprocess.run(command, cwd=folder, env=clean_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the real first night failed:\n{done.stdout}\n{done.stderr}")


class Writer:
    """Appends synthetic nights to the study and experiment a real night started."""

    def __init__(self, folder: Path, storage: str | None, seed: int) -> None:
        import optuna
        from mlflow import MlflowClient

        from searchlab.storage import DEFAULT_JOURNAL, is_database_url, open_storage
        from searchlab.tracking import MlflowTracker

        MlflowTracker(f"sqlite:///{folder / 'mlflow.db'}")  # its quiet MLflow settings
        self.client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        self.folder, self.rng, self.storage_url = folder, np.random.default_rng(seed), storage
        self.journal = None if storage and is_database_url(storage) else folder / (storage or DEFAULT_JOURNAL)
        if self.journal is not None:  # replayed and appended in memory, written back once
            from optuna.storages.journal import JournalFileBackend

            self.backend = MemoryJournal(list(JournalFileBackend(str(self.journal)).read_logs(0)))
            self.storage = optuna.storages.JournalStorage(self.backend)
        else:
            self.storage = open_storage(storage)
        self.study = optuna.load_study(study_name=STUDY_NAME, storage=self.storage)
        self.study_id = self.study._study_id
        self.templates = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()]
        self.next_number = len(self.study.get_trials(deepcopy=False))
        self.experiment_id = self.study.user_attrs["mlflow_experiment_id"]
        parent = self.client.get_run(self.study.user_attrs["mlflow_parent_run_id"])
        self.parent_params, self.parent_tags = dict(parent.data.params), dict(parent.data.tags)
        template_run = self.client.get_run(self.templates[0].user_attrs["mlflow_run_id"])
        self.run_params, self.run_tags = dict(template_run.data.params), dict(template_run.data.tags)

    def nights_written(self) -> int:
        from searchlab.nights import recorded_nights

        return len(recorded_nights(self.study.user_attrs))

    def nights(self, count: int, trials: int, say: Any) -> None:
        from searchlab.budget import set_budget
        from searchlab.nights import night_key, recorded_nights
        from searchlab.settings import PARENT_RUN_ATTR

        nights = recorded_nights(self.study.user_attrs)
        first_day = datetime.date.today() - datetime.timedelta(days=len(nights) + count)
        for _ in range(count):
            night = len(nights) + 1
            parent_id = self.parent_run(night, trials)
            self.study.set_user_attr(PARENT_RUN_ATTR, parent_id)
            set_budget(self.study, self.next_number, trials)  # as the night's run does
            night_trials = [self.trial(parent_id) for _ in range(trials)]
            if self.journal is None:
                self.insert(night_trials)
            best = min(
                ((trial.number, trial.value) for trial in night_trials if trial.value is not None),
                key=lambda pair: pair[1],
            )
            started = f"{first_day + datetime.timedelta(days=night):%Y-%m-%d} 02:00:00"
            nights.append({**nights[-1], "night": night, "started": started, "parent_run_id": parent_id,
                           "trials": trials, "decision": "held", "best_value": best[1],
                           "best_trial": best[0]})  # fmt: skip
            self.study.set_user_attr(night_key(night), nights[-1])  # as the nightly records it
            if night % 25 == 0:
                say(f"night {night}")
        if self.journal is None:  # as each night leaves the database (and autovacuum, where it is on)
            from searchlab.compaction import refresh_statistics

            say(refresh_statistics(self.storage_url))
        if self.journal is not None:
            temporary = self.journal.with_name(self.journal.name + ".writing")
            with open(temporary, "w") as file:
                file.writelines(json.dumps(log, separators=(",", ":")) + "\n" for log in self.backend.logs)
            os.replace(temporary, self.journal)

    def parent_run(self, night: int, trials: int) -> str:
        from mlflow.entities import Param, RunTag

        from searchlab.settings import CREATE_TOKEN_TAG

        name = f"{STUDY_NAME}-night-{night}"
        tags = {**self.parent_tags, CREATE_TOKEN_TAG: uuid.uuid4().hex, "mlflow.runName": name, "nightly": str(night)}
        run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id
        params = {**self.parent_params, "n_trials": str(trials)}
        self.client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def trial(self, parent_id: str) -> Any:
        """One trial, as a worker records it (on a database: kept for ``insert``); returns it as a FrozenTrial."""
        import optuna
        from mlflow.entities import Metric, Param, RunTag
        from optuna.trial import TrialState

        template = self.templates[int(self.rng.integers(len(self.templates)))]
        params = {name: sample(distribution, self.rng) for name, distribution in template.distributions.items()}
        value = synthetic_loss(params, self.rng)
        epochs = int(self.rng.integers(12, 60))
        curve = [value * (1 + 2.0 * math.exp(-epoch / 6)) for epoch in range(1, epochs + 1)]
        pruned = self.rng.random() < 0.3
        state = TrialState.PRUNED if pruned else TrialState.COMPLETE
        run_id = self.client.create_run(self.experiment_id).info.run_id
        attrs = {**template.user_attrs, "seed": int(self.rng.integers(2**32)), "mlflow_run_id": run_id}
        attrs.update(epochs=epochs, best_epoch=epochs)
        finished = optuna.trial.create_trial(
            state=state,
            value=None if pruned else value,
            params=params,
            distributions=template.distributions,
            user_attrs=attrs,
            intermediate_values=dict(enumerate(curve, start=1)),
        )
        if self.journal is None:
            finished.number = self.next_number
            self.next_number += 1
        else:  # op by op, as a worker appends them
            trial_id = self.storage.create_new_trial(self.study_id)
            for name, distribution in template.distributions.items():
                self.storage.set_trial_param(trial_id, name, distribution.to_internal_repr(params[name]), distribution)
            for key, attr in attrs.items():
                self.storage.set_trial_user_attr(trial_id, key, attr)
            for step, point in enumerate(curve, start=1):
                self.storage.set_trial_intermediate_value(trial_id, step, point)
            self.storage.set_trial_state_values(trial_id, state, finished.values)
            finished.number = self.storage.get_trial_number_from_id(trial_id)
            self.next_number = finished.number + 1
        now = int(time.time() * 1000)
        metrics = [Metric(name, point * (1.1 if name == "train_loss" else 1.0), now, step)
                   for name in CURVES for step, point in enumerate(curve, start=1)]  # fmt: skip
        metrics.append(Metric("best_val_loss", min(curve), now, 0))
        number = finished.number
        tags = {**self.run_tags, "trial_number": str(number), "mlflow.parentRunId": parent_id, "state": state.name}
        tags["mlflow.runName"] = f"trial-{number} best_val_loss={min(curve):.4g}"
        run_params = {**self.run_params, **{name: str(v) for name, v in params.items()}, "seed": str(attrs["seed"])}
        self.client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, v) for k, v in run_params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.set_terminated(run_id, "FINISHED")
        return finished

    def insert(self, trials: list[Any]) -> None:
        """A night's trials into the database in one transaction, as the rows Optuna's RDBStorage writes (its
        own ORM models; its per-trial API makes a query per value: an hour for a year)."""
        from optuna.distributions import distribution_to_json
        from optuna.storages._rdb import models
        from sqlalchemy import orm

        Value, Step = models.TrialValueModel, models.TrialIntermediateValueModel
        with orm.Session(self.storage.engine) as session:
            for trial in trials:
                row = models.TrialModel(number=trial.number, study_id=self.study_id, state=trial.state)
                row.datetime_start = row.datetime_complete = trial.datetime_start
                row.params = [
                    models.TrialParamModel(
                        param_name=name,
                        param_value=trial.distributions[name].to_internal_repr(value),
                        distribution_json=distribution_to_json(trial.distributions[name]),
                    )
                    for name, value in trial.params.items()
                ]
                row.user_attributes = [
                    models.TrialUserAttributeModel(key=key, value_json=json.dumps(value))
                    for key, value in trial.user_attrs.items()
                ]
                row.values = [
                    Value(objective=0, value=value, value_type=Value.TrialValueType.FINITE)
                    for value in trial.values or []
                ]
                row.intermediate_values = [
                    Step(
                        step=step,
                        intermediate_value=value,
                        intermediate_value_type=Step.TrialIntermediateValueType.FINITE,
                    )
                    for step, value in trial.intermediate_values.items()
                ]
                session.add(row)
            session.commit()


class MemoryJournal:
    """An Optuna journal backend in memory (``read_logs``/``append_logs``), written to the file at the end."""

    def __init__(self, logs: list[dict[str, Any]]) -> None:
        self.logs = logs

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)


def sample(distribution: Any, rng: np.random.Generator) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[int(rng.integers(len(distribution.choices)))]
    low, high = distribution.low, distribution.high
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if distribution.log else rng.uniform(low, high)
    if isinstance(distribution, IntDistribution):
        return int(min(high, max(low, round(value))))
    assert isinstance(distribution, FloatDistribution)
    return float(value)


def synthetic_loss(params: dict[str, Any], rng: np.random.Generator) -> float:
    """Lowest near lr 0.03, momentum 0.95, little dropout and weight decay, width ~100; 3 % noise."""
    shape = (
        (math.log10(params.get("lr", 0.03)) - math.log10(0.03)) ** 2
        + 20 * (params.get("momentum", 0.95) - 0.95) ** 2
        + params.get("dropout", 0.0)
        + 0.05 * (math.log10(params.get("weight_decay", 1e-6)) + 6)
        + 0.2 * (math.log10(params.get("width", 100)) - 2) ** 2
    )
    return float(0.035 * (1 + shape) * (1 + 0.03 * rng.standard_normal()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--storage", default=None, help="a journal path (default) or a postgresql:// URL")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_history(args.folder, nights=args.nights, trials=args.trials, storage=args.storage, seed=args.seed)


if __name__ == "__main__":
    main()

"""Replaying a trial: retrain its parameters with its seed and compare the curve with the recorded one."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial

from searchlab.data import load_split
from searchlab.errors import ConfigError
from searchlab.model import sample_params
from searchlab.settings import SEED_ATTR, SETUP_ATTR
from searchlab.study import Study
from searchlab.train import train_trial
from searchlab.transfer import Start
from searchlab.trial import Trial


@dataclass(frozen=True)
class Replay:
    """The recorded and the replayed validation-loss curves, epoch → value."""

    recorded: dict[int, float]
    replayed: dict[int, float]

    @property
    def identical(self) -> bool:
        return bool(self.recorded) and all(self.replayed.get(epoch) == value for epoch, value in self.recorded.items())

    def lines(self) -> list[str]:
        rows = [f"{'epoch':>5}  {'recorded':>12}  {'replayed':>12}  {'difference':>10}"]
        for epoch in sorted(self.recorded):
            old, new = self.recorded[epoch], self.replayed.get(epoch)
            diff = "-" if new is None else f"{new - old:.3g}"
            rows.append(f"{epoch:>5}  {old:>12.8g}  {'-' if new is None else f'{new:>12.8g}':>12}  {diff:>10}")
        verdict = "identical" if self.identical else "different"
        return [*rows, f"replay: {verdict} to the recorded curve ({len(self.recorded)} epochs)"]


def replay_trial(study: Study, trial: FrozenTrial, start: Start | None = None) -> Replay:
    """Retrain ``trial`` on the CPU with its recorded seed, threads and budget (no tracking, no storage writes)."""
    setup = trial.user_attrs.get(SETUP_ATTR)
    if SEED_ATTR not in trial.user_attrs or not setup:
        raise ConfigError(f"trial {trial.number} has no recorded seed and setup: it was not run by searchlab")
    if not trial.intermediate_values:
        raise ConfigError(f"trial {trial.number} recorded no epoch: nothing to replay")
    torch.set_num_threads(setup["threads"])  # the same reduction order as the recorded run
    train_data, val_data = load_split(study, setup["data_seed"])
    fixed = optuna.trial.FixedTrial(trial.params, number=trial.number)
    params = sample_params(study.space, fixed, start)
    replayed: dict[int, float] = {}
    train_trial(
        study,
        Trial(fixed, params, trial.user_attrs[SEED_ATTR]),
        train_data,
        val_data,
        torch.device("cpu"),
        max_epochs=max(trial.intermediate_values),
        patience=setup["patience"],
        start=start,
        on_epoch=lambda epoch, values: replayed.__setitem__(epoch, values["val_loss"]),
    )
    return Replay(dict(trial.intermediate_values), replayed)

"""Replaying a trial: retrain its parameters with its seed and compare the curve with the recorded one.

A packed trial replays alone on its pack's batch order: with no dropout it matches within a float tolerance
(vectorised arithmetic rounds differently); with dropout it cannot (the pack drew every member's masks at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from searchlab.data import load_split
from searchlab.errors import ConfigError
from searchlab.model import new_trial
from searchlab.settings import PACK_ATTR, SEED_ATTR, SETUP_ATTR
from searchlab.study import Study
from searchlab.train import train_trial
from searchlab.transfer import Start

# A packed trial's curve against its replay alone, relative (tests/test_pack.py holds 1e-5 over a few epochs).
PACKED_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Replay:
    """The recorded and the replayed validation-loss curves, epoch → value."""

    recorded: dict[int, float]
    replayed: dict[int, float]
    tolerance: float = 0.0  # relative; 0: bit for bit
    why_not: str = ""  # why a replay cannot reproduce this trial

    @property
    def identical(self) -> bool:
        def same(epoch: int, value: float) -> bool:
            again = self.replayed.get(epoch)
            return again is not None and abs(again - value) <= self.tolerance * abs(value)

        return not self.why_not and bool(self.recorded) and all(same(e, v) for e, v in self.recorded.items())

    def lines(self) -> list[str]:
        rows = [f"{'epoch':>5}  {'recorded':>12}  {'replayed':>12}  {'difference':>10}"]
        for epoch in sorted(self.recorded):
            old, new = self.recorded[epoch], self.replayed.get(epoch)
            diff = "-" if new is None else f"{new - old:.3g}"
            rows.append(f"{epoch:>5}  {old:>12.8g}  {'-' if new is None else f'{new:>12.8g}':>12}  {diff:>10}")
        verdict = "identical" if self.identical else "different"
        if self.identical and self.tolerance:
            verdict = f"identical within {self.tolerance:g} relative (packed: vectorised arithmetic rounds differently)"
        note = [f"replay: {self.why_not}"] if self.why_not else []
        return [*rows, *note, f"replay: {verdict} to the recorded curve ({len(self.recorded)} epochs)"]


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
    replayed: dict[int, float] = {}
    pack: dict[str, Any] = trial.user_attrs.get(PACK_ATTR) or {}
    packed = len(pack.get("members", ())) > 1
    model, _ = train_trial(
        study,
        new_trial(study.space, fixed, trial.user_attrs[SEED_ATTR], start),
        train_data,
        val_data,
        torch.device("cpu"),
        max_epochs=max(trial.intermediate_values),
        patience=setup["patience"],
        start=start,
        on_epoch=lambda epoch, values: replayed.__setitem__(epoch, values["val_loss"]),
        batch_seed=pack.get("batch_seed"),
    )
    if not packed:
        return Replay(dict(trial.intermediate_values), replayed)
    why_not = ""
    if any(isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0 for module in model.modules()):
        why_not = "its pack drew the dropout masks of all its members at once: trained alone, it draws others"
    return Replay(dict(trial.intermediate_values), replayed, tolerance=PACKED_TOLERANCE, why_not=why_not)

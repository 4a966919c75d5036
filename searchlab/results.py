"""Reading a study back: the study a command names, its best trials, a trial's MLflow run, its trials as a table."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from searchlab.errors import ConfigError, format_value
from searchlab.settings import PACK_ATTR, RUN_ID_ATTR, RUN_TOKEN_ATTR, from_environment, storage_for
from searchlab.storage import load_existing_study
from searchlab.study import load_study_file
from searchlab.tracking import run_by_token

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def study_name_for(file: str | None, flag: str | None) -> str | None:
    """The study named by the flag, SEARCHLAB_STUDY_NAME, or FILE's study (in that order); None if none is."""
    name = flag or from_environment(os.environ).get("study_name")
    if name is None and file is not None:
        name = load_study_file(file).name
    return name


def open_results(file: str | None, storage: str | None, study_name: str | None) -> Any:
    """The existing Optuna study named by the flag, SEARCHLAB_STUDY_NAME, or FILE's study (in that order)."""
    return load_existing_study(storage_for(storage), study_name_for(file, study_name))


def best_trials(trials: list[FrozenTrial], n: int) -> list[FrozenTrial]:
    """The ``n`` completed trials with the lowest value, best first (searchlab minimises validation loss)."""
    from optuna.trial import TrialState  # loaded already: the trials come from Optuna

    return sorted((trial for trial in trials if trial.state == TrialState.COMPLETE), key=value_of)[:n]


def value_of(trial: FrozenTrial) -> float:
    """A finished trial's value (its validation loss)."""
    if trial.value is None:
        raise ValueError(f"trial {trial.number} has no value")
    return trial.value


def best_complete(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the lowest value; None when none completed."""
    best = best_trials(trials, 1)
    return best[0] if best else None


def best_trial(study: Any) -> FrozenTrial:
    """The study's best trial as Optuna tells it (in its own direction), or the error saying it has none yet."""
    try:
        return study.best_trial
    except ValueError:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet") from None


def pack_sizes(trials: list[FrozenTrial]) -> list[int]:
    """Members per pack, pack by pack in order, of the trials that trained packed (none: trained alone)."""
    packs = {tuple(t.user_attrs[PACK_ATTR]["members"]) for t in trials if "members" in t.user_attrs.get(PACK_ATTR, {})}
    return [len(members) for members in sorted(packs)]


def describe_packs(sizes: list[int]) -> str:
    """How trials were packed, in a few words."""
    members = ", ".join(map(str, sizes)) if len(sizes) <= 12 else f"{min(sizes)} to {max(sizes)}"
    return (
        f"{sum(sizes)} trials in {len(sizes)} packs, each trained as one vectorised model (members per pack: {members})"
    )


def trial_run_id(client: Any, study_name: str, trial: Any) -> str | None:
    """The MLflow run of an Optuna trial: its RUN_ID_ATTR, or, for a trial that ended before its run could be created
    (the tracking server was down; it was sent later), the run its RUN_TOKEN_ATTR names in the study's experiment."""
    run_id, token = trial.user_attrs.get(RUN_ID_ATTR), trial.user_attrs.get(RUN_TOKEN_ATTR)
    if run_id is not None or token is None:
        return run_id
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        return None
    run = run_by_token(client, experiment.experiment_id, token)
    return None if run is None else run.info.run_id


def format_trials(trials: list[Any]) -> str:
    """A plain-text table of trials, one row each."""
    rows = [("number", "state", "value", RUN_ID_ATTR, "params")]
    for trial in trials:
        params = " ".join(f"{key}={format_value(value)}" for key, value in trial.params.items())
        rows.append(
            (
                str(trial.number),
                trial.state.name,
                format_value(trial.value, none="-"),
                trial.user_attrs.get(RUN_ID_ATTR, "-"),
                params,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def format_best(trial: Any) -> str:
    lines = [
        f"trial      {trial.number}",
        f"val_loss   {trial.value:.6g}",
        f"run id     {trial.user_attrs.get(RUN_ID_ATTR, '-')}",
    ]
    lines += [f"param      {key} = {format_value(value)}" for key, value in trial.params.items()]
    return "\n".join(lines)

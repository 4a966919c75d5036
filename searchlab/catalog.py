"""The names a study file, the SEARCHLAB_* variables and the flags choose from, each listed once: the tasks (and
their losses), Optuna's samplers and Optuna's pruners. Optuna loads when a sampler or pruner is made, not before."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# task → its loss (a torch.nn class, always on raw outputs)
TASK_LOSSES = {"regression": "MSELoss", "binary": "BCEWithLogitsLoss", "multiclass": "CrossEntropyLoss"}


def _tpe(seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _no_pruning(max_epochs: int) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


def _median(max_epochs: int) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def _hyperband(max_epochs: int) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)


def _successive_halving(max_epochs: int) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)


SAMPLERS: dict[str, Callable[[int], Any]] = {"tpe": _tpe, "random": _random}  # name → sampler of a seed
# name → pruner for trials of at most max_epochs epochs (one epoch = one resource unit)
PRUNERS: dict[str, Callable[[int], Any]] = {
    "none": _no_pruning,
    "median": _median,
    "hyperband": _hyperband,
    "sha": _successive_halving,
}


def make_sampler(name: str, seed: int, number: int) -> Any:
    """The seeded sampler that samples trial ``number``: its seed depends on the study seed and the trial number, so
    that trial N samples alike whichever worker asks for it, and a continued study's new trials sample anew."""
    import numpy as np

    # "sampler": not the seed the trial's own initialisation derives from the same two numbers (model.trial_seed)
    return SAMPLERS[name](int(np.random.SeedSequence([seed, number, *b"sampler"]).generate_state(1)[0]))


def make_pruner(name: str, max_epochs: int) -> Any:
    """Optuna's pruner for ``--pruner``, on the per-epoch validation loss."""
    return PRUNERS[name](max_epochs)

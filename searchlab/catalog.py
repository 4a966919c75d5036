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


def make_sampler(name: str, seed: int, n_existing: int, worker: int = 0) -> Any:
    """A seeded sampler. Its seed also depends on the trials already in the study (a continued study does not
    replay the first invocation's samples) and on the worker (parallel workers do not sample alike)."""
    import numpy as np

    return SAMPLERS[name](int(np.random.SeedSequence([seed, n_existing, worker]).generate_state(1)[0]))


def make_pruner(name: str, max_epochs: int) -> Any:
    """Optuna's pruner for ``--pruner``, on the per-epoch validation loss."""
    return PRUNERS[name](max_epochs)

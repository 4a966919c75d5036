"""The Study a study file declares (frozen, checked at construction), and loading a study file by path."""

from __future__ import annotations

import importlib.util
import sys
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchlab.catalog import PRUNERS, SAMPLERS, TASK_LOSSES
from searchlab.errors import ConfigError, describe_error
from searchlab.space import Choice, Distribution, Fixed, as_distribution, default_space, validate_space

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from searchlab.trial import Trial


@dataclass(frozen=True)
class Split:
    """Training and validation data: each an ``(inputs, targets)`` pair of tensors or any ``Dataset``."""

    train: tuple[Any, Any] | Dataset
    val: tuple[Any, Any] | Dataset


@dataclass(frozen=True)
class Study:
    """One hyperparameter study: data, model builder, task, search space, optimizer and budget.

    ``data(seed)`` returns a :class:`Split` (called once per process, with the study seed, so every trial sees
    the same split); ``model(trial)`` returns an ``nn.Module`` whose output is raw (no final Softmax/Sigmoid).
    The optimizer is ``"sgd"`` (with momentum), ``"adam"`` or ``"adamw"``, or a ``Choice`` of them to search.
    """

    name: str
    task: str
    data: Callable[[int], Split]
    model: Callable[[Trial], nn.Module]
    space: Mapping[str, Distribution | Any] = field(default_factory=default_space)
    optimizer: str | Choice = "sgd"
    init: str | Choice = "default"
    start_from: str | None = None
    freeze: tuple[str, ...] = ()
    max_epochs: int = 100
    patience: int = 10
    n_trials: int = 20
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0
    pack: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("Study(name=...) must be a non-empty string")
        check_name("Study(name=...)", self.name)
        if self.task not in TASK_LOSSES:
            raise ConfigError(f"unknown task {self.task!r}: use one of {', '.join(TASK_LOSSES)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {self.pruner!r}: use one of {', '.join(PRUNERS)}")
        for name in ("data", "model"):
            if not callable(getattr(self, name)):
                raise ConfigError(f"Study({name}=...) must be a function, got {type(getattr(self, name)).__name__}")
        for name in ("optimizer", "init"):
            if name in self.space:
                raise ConfigError(f"choose the {name} with Study({name}=...), not in the space")
        if self.start_from is not None and (not isinstance(self.start_from, str) or not self.start_from.strip()):
            raise ConfigError("Study(start_from=...) must be a path, runs:/RUN_ID, models:/NAME@ALIAS or study:NAME")
        if isinstance(self.freeze, str) or not all(isinstance(prefix, str) and prefix for prefix in self.freeze):
            raise ConfigError("Study(freeze=...) must be a tuple of parameter-name prefixes, e.g. ('0.',)")
        object.__setattr__(self, "freeze", tuple(self.freeze))
        if self.freeze and self.start_from is None:
            raise ConfigError(
                "Study(freeze=...) needs Study(start_from=...): without starting weights a frozen layer keeps its "
                "random initialisation"
            )
        for name in ("max_epochs", "patience", "n_trials", "pack"):
            check_positive_int(f"Study({name}=...)", getattr(self, name))
        check_timeout("Study(timeout=...)", self.timeout)
        check_seed("Study(seed=...)", self.seed)
        space = validate_space(
            {**self.space, "optimizer": as_distribution(self.optimizer), "init": as_distribution(self.init)}
        )
        object.__setattr__(self, "space", space)

    @property
    def searched(self) -> list[str]:
        """Names of the parameters the sampler chooses (everything not Fixed)."""
        return [name for name, dist in self.space.items() if not isinstance(dist, Fixed)]

    def run(self, **overrides: Any) -> Any:
        """Run this study as ``searchlab run`` would (``SEARCHLAB_*`` variables and ``overrides`` apply).

        Prints where the results are and returns the run's summary. Run as a script (``python FILE``), bad input
        ends the process with one line and exit code 2, and Ctrl-C with exit code 130, as the CLI does.
        """
        from searchlab.lifecycle import run_declared  # the core's one call up into running: see the README's Layout

        return run_declared(self, overrides)


def check_name(what: str, name: str) -> None:
    """A study name goes into MLflow, file names, unit names and printed commands: a control character (newline,
    tab, escape, DEL, C1) would split or garble them, so it is refused."""
    if any(unicodedata.category(character) == "Cc" for character in name):
        raise ConfigError(f"{what} must not contain control characters (newline, tab, escape...), got {name!r}")


def check_positive_int(what: str, value: Any) -> None:
    check_int(what, value)
    if value < 1:
        raise ConfigError(f"{what} must be at least 1, got {value}")


def check_timeout(what: str, value: Any) -> None:
    """None (no limit) or a positive number of seconds."""
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")


def check_seed(what: str, value: Any) -> None:
    check_int(what, value)
    if value < 0:
        raise ConfigError(f"{what} must be 0 or more, got {value}")


def check_int(what: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}")


def check_study_path(path: str | Path) -> Path:
    """The path of a study file, or the error that says what to fix (at once: nothing is imported)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} not found: check the path (e.g. studies/regression.py)")
    if path.suffix != ".py":
        raise ConfigError(f"study file {str(path)!r} must be a Python file ending in .py")
    return path


def load_study_file(path: str | Path) -> Study:
    """Import a study file and return the one ``Study`` it declares at module level."""
    path = check_study_path(path)
    module_name = f"searchlab_study_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except SyntaxError as error:
        raise ConfigError(f"{path}:{error.lineno}: syntax error: {error.msg}") from None
    except (Exception, SystemExit) as error:
        raise ConfigError(f"{path} failed to import: {describe_error(error)}") from None
    studies = {name: value for name, value in vars(module).items() if isinstance(value, Study)}
    if not studies:
        raise ConfigError(f"{path} declares no study: assign one at module level, e.g. study = sl.Study(...)")
    if len(studies) > 1:
        if "study" in studies:
            return studies["study"]
        raise ConfigError(f"{path} declares {len(studies)} studies ({', '.join(studies)}): name the one to run 'study'")
    return next(iter(studies.values()))


__all__ = ["Split", "Study", "load_study_file"]

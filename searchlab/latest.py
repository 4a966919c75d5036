"""The storage that optuna-dashboard is served: each study shows its latest trials and its best, not a year of them.

optuna-dashboard reads every trial of a study on each poll and sends them all to the page (a study continued nightly
for a year: 18,000 trials, tens of MB of JSON, a minute on PostgreSQL; its maintainers support studies up to 10,000
trials). Here a study's trials are those numbered from where its ``last`` latest began when the dashboard first read
it, then every later one, after the ``best`` best completed trials older than that. The page fetches the trials after
the ones it holds by position, so the list only grows at its end, never shifts. Every other call goes to the storage:
the best trial, trial pages and notes are the study's own.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from searchlab.window import best_completed, count_trials, trials_since

SHOWN_LATEST = 1000  # the dashboard's own heuristics poll every 10 s past 500 trials; 1,000 answer in about a second
SHOWN_BEST = 25  # the window's elite: the good group TPE learns from


class LatestTrials(BaseStorage):
    """``storage`` with each study's trials cut to the latest ``last`` (and those after) and the ``best`` best; every
    other call is the storage's own (see below)."""

    def __init__(self, storage: BaseStorage, last: int = SHOWN_LATEST, best: int = SHOWN_BEST) -> None:
        self.storage, self._last, self._best = storage, last, best
        self._shown: dict[int, tuple[optuna.Study, int, frozenset[int]]] = {}
        self._lock = threading.Lock()  # the dashboard answers on several threads

    def shown_from(self, study_id: int) -> tuple[optuna.Study, int, frozenset[int]]:
        """The study, the first number shown whole, and the older best numbers shown: fixed at the first read."""
        with self._lock:
            if study_id not in self._shown:
                name = self.storage.get_study_name_from_id(study_id)
                study = optuna.load_study(study_name=name, storage=self.storage)
                first = max(0, count_trials(study) - self._last)
                best = frozenset(t.number for t in best_completed(study, self._best) if t.number < first)
                self._shown[study_id] = (study, first, best)
            return self._shown[study_id]

    def hidden(self, study_id: int) -> int:
        """How many of the study's trials are not shown."""
        _, first, best = self.shown_from(study_id)
        return first - len(best)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        study, first, best = self.shown_from(study_id)
        trials = trials_since(study, first, states, also=best)
        return copy.deepcopy(trials) if deepcopy else trials


def _delegate(name: str) -> Callable[..., Any]:
    def call(self: LatestTrials, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.storage, name)(*args, **kwargs)

    call.__name__ = name
    return call


# The rest of Optuna's storage API goes to the storage: the abstract methods, and those with defaults too (which would
# read the cut list: a trial's id from its number, the number of trials).
for _name in [name for name in vars(BaseStorage) if not name.startswith("_") and name != "get_all_trials"]:
    setattr(LatestTrials, _name, _delegate(_name))
LatestTrials.__abstractmethods__ = frozenset()


def latest_trials(storage: BaseStorage, last: int = SHOWN_LATEST) -> LatestTrials:
    """``storage`` as LatestTrials (whose abstract methods, delegated above, mypy cannot see)."""
    return LatestTrials(storage, last)  # type: ignore[abstract]

"""Reading part of a long study: the trials since a number, the best ones, how many there are; and the window of
the history that the sampler and the pruner see.

A study continued every night only grows; Optuna's samplers and pruners read every trial at every ``ask`` and at
every epoch's ``should_prune`` (a query of the whole study on a database), so a trial's cost grows with the history.
Here they see a bounded window instead: the ``RECENT`` latest finished trials, the ``ELITE`` best completed trials of
all time, and the trials still running or waiting. TPE models the good region from its best ``gamma`` trials (at most
25 in Optuna's default: the elite) and the rest from the others, weighting recent ones most; the median pruner
compares a trial's epoch with the recent trials at that epoch. On a database the window is read with queries of its
own (Optuna's schema), never the whole study; a journal is in memory already, and is read in slices.
"""

from __future__ import annotations

import copy
import heapq
import json
from collections.abc import Callable, Container, Set
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from searchlab.storage import database_of

RECENT = 100  # latest finished trials the sampler and pruner see (two nights of 50)
ELITE = 25  # best completed trials of all time they see too: TPE's largest "good" group (its default gamma's cap)
NO_TRIAL_ID = 2**31 - 1  # the largest trial id (a 32-bit column): "none of the later ones" in Optuna's ranged query


def _storage(study: optuna.Study) -> Any:
    """The study's storage, its database unwrapped from Optuna's cache (which reads every trial once)."""
    return database_of(study._storage) or study._storage


def trial_numbered(study: optuna.Study, number: int) -> FrozenTrial:
    """The study's trial ``number``, read alone (a KeyError when it has none)."""
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def count_trials(study: optuna.Study) -> int:
    """How many trials the study holds (one COUNT on a database)."""
    storage = _storage(study)
    if isinstance(storage, RDBStorage):
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(storage.scoped_session) as session:
            query = session.query(models.TrialModel).filter(models.TrialModel.study_id == study._study_id)
            return int(query.count())
    journal = _journal_trial_ids(storage, study._study_id)
    return len(journal if journal is not None else storage.get_all_trials(study._study_id, deepcopy=False))


def _journal_trial_ids(storage: Any, study_id: int) -> list[int] | None:
    """A journal's trial ids of the study in number order, read on from the log; None for other storages. Optuna's
    replayed state, read directly: its ``get_all_trials`` lists every trial at every call (milliseconds for a year
    of nights, several times a trial)."""
    replayed = getattr(storage, "_replay_result", None)
    if not isinstance(storage, optuna.storages.JournalStorage) or replayed is None:
        return None
    with storage._thread_lock:
        storage._sync_with_backend()
        return list(replayed._study_id_to_trial_ids[study_id])


def study_attr(study: optuna.Study, key: str, default: Any = None) -> Any:
    """One user attribute of the study: ``study.user_attrs`` copies them all (a study continued nightly holds a
    record per night), a database returns them all; this reads the one (a query on a database; not copied)."""
    storage = _storage(study)
    if isinstance(storage, RDBStorage):
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(storage.scoped_session) as session:
            row = models.StudyUserAttributeModel.find_by_study_and_key(
                models.StudyModel(study_id=study._study_id), key, session
            )
            return default if row is None else json.loads(row.value_json)
    return storage.get_study_user_attrs(study._study_id).get(key, default)


def count_by_state(study: optuna.Study) -> dict[TrialState, int]:
    """How many trials the study holds in each state (one grouped COUNT on a database)."""
    storage = _storage(study)
    if isinstance(storage, RDBStorage):
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import func

        with _create_scoped_session(storage.scoped_session) as session:
            rows = (
                session.query(models.TrialModel.state, func.count(models.TrialModel.trial_id))
                .filter(models.TrialModel.study_id == study._study_id)
                .group_by(models.TrialModel.state)
            )
            return {state: int(n) for state, n in rows}
    counts: dict[TrialState, int] = {}
    for trial in storage.get_all_trials(study._study_id, deepcopy=False):
        counts[trial.state] = counts.get(trial.state, 0) + 1
    return counts


def trials_since(
    study: optuna.Study, number: int, states: Container[TrialState] | None = None, *, also: Set[int] = frozenset()
) -> list[FrozenTrial]:
    """The trials numbered ``number`` or more (and those numbered in ``also``), oldest first."""
    storage = _storage(study)
    if isinstance(storage, RDBStorage):
        total = count_trials(study)
        found = {storage.get_trial_id_from_study_id_trial_number(study._study_id, n) for n in also if n < total}
        return _rdb_trials(study, states, found, number, total)
    journal: Any = storage
    ids = _journal_trial_ids(journal, study._study_id)
    if ids is not None:  # in memory: the trials of these numbers only
        replayed = journal._replay_result._trials
        wanted = [ids[n] for n in sorted(also) if n < min(number, len(ids))] + ids[number:]
        chosen = [replayed[trial_id] for trial_id in wanted]
    else:
        trials = storage.get_all_trials(study._study_id, deepcopy=False)  # ordered by number
        chosen = [trials[n] for n in sorted(also) if n < min(number, len(trials))] + trials[number:]
    return [t for t in chosen if states is None or t.state in states]


def _rdb_trials(
    study: optuna.Study, states: Container[TrialState] | None, ids: set[int], number: int, total: int
) -> list[FrozenTrial]:
    """On a database: the trials with these ids, and those numbered ``number`` or more (one query)."""
    storage = _storage(study)
    assert isinstance(storage, RDBStorage)
    if number < total:  # trial ids grow with numbers within a study
        after = storage.get_trial_id_from_study_id_trial_number(study._study_id, number) - 1
    elif ids:
        after = NO_TRIAL_ID
    else:
        return []
    return list(storage._get_trials(study._study_id, states, ids, after))


def best_completed(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best completed trials, best first (a sorted query on a database)."""
    storage, minimize = _storage(study), study.direction == StudyDirection.MINIMIZE
    if isinstance(storage, RDBStorage):
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        value = models.TrialValueModel.value
        with _create_scoped_session(storage.scoped_session) as session:
            ids = [
                row[0]
                for row in session.query(models.TrialModel.trial_id)
                .join(models.TrialValueModel)
                .filter(
                    models.TrialModel.study_id == study._study_id,
                    models.TrialModel.state == TrialState.COMPLETE,
                    models.TrialValueModel.objective == 0,
                    models.TrialValueModel.value_type == models.TrialValueModel.TrialValueType.FINITE,
                )
                .order_by(value.asc() if minimize else value.desc(), models.TrialModel.number)
                .limit(k)
            ]
        return sorted(_rdb_trials(study, None, set(ids), 0, 0), key=_sort_key(minimize))
    completed = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.COMPLETE,))
    return heapq.nsmallest(k, completed, key=_sort_key(minimize))


def best_of(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial, or None."""
    return next(iter(best_completed(study, 1)), None)


def _sort_key(minimize: bool) -> Any:
    return (lambda t: (t.value, t.number)) if minimize else (lambda t: (-t.value, t.number))


class HistoryWindow:
    """A study as its sampler and pruner see it: every call goes to the study, but its trials are the window (see the
    module's docstring), as of the last ``refresh``. A refresh reads what changed since the one before: the trials
    from the oldest one that was still running then."""

    def __init__(self, study: optuna.Study, recent: int = RECENT, elite: int = ELITE) -> None:
        self._study, self._recent, self._elite = study, recent, elite
        self._minimize = study.direction == StudyDirection.MINIMIZE
        self._best: list[FrozenTrial] = best_completed(study, elite)
        self._finished: dict[int, FrozenTrial] = {}
        self._read_from = max(0, count_trials(study) - recent)
        self._trials: list[FrozenTrial] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def refresh(self) -> None:
        fresh = trials_since(self._study, self._read_from)
        unfinished = [t for t in fresh if not t.state.is_finished()]
        self._finished.update((t.number, t) for t in fresh if t.state.is_finished())
        if fresh:
            self._read_from = min((t.number for t in unfinished), default=fresh[-1].number + 1)
        for number in sorted(self._finished)[: -self._recent or None]:  # keep the latest ``recent`` only
            del self._finished[number]
        completed = [t for t in self._finished.values() if t.state == TrialState.COMPLETE]
        self._best = heapq.nsmallest(
            self._elite, {t.number: t for t in [*self._best, *completed]}.values(), key=_sort_key(self._minimize)
        )
        chosen = {t.number: t for t in [*self._best, *self._finished.values(), *unfinished]}
        self._trials = [chosen[n] for n in sorted(chosen)]

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=deepcopy, states=states)

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if self._trials is None:
            self.refresh()
        assert self._trials is not None
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class _Windowed:
    """Hands the wrapped sampler or pruner a HistoryWindow of the study it is called with (one per study)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._windows: dict[tuple[int, int], HistoryWindow] = {}

    def _view(self, study: optuna.Study) -> HistoryWindow:
        if isinstance(study, HistoryWindow):
            return study
        key = (id(study._storage), study._study_id)
        if key not in self._windows:
            self._windows[key] = HistoryWindow(study)
        return self._windows[key]


class WindowedSampler(_Windowed, optuna.samplers.BaseSampler):
    """A sampler (e.g. TPE) that learns from the study's history window, not from every trial."""

    def sampler_of(self, trial: FrozenTrial) -> Any:
        """The sampler that samples ``trial``."""
        return self.inner

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.sampler_of(trial).infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self.sampler_of(trial).sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        return self.sampler_of(trial).sample_independent(self._view(study), trial, name, distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        view = self._view(study)
        view.refresh()  # once per trial, as Optuna's own cache of the trials (TPE reads them once per param)
        self.sampler_of(trial).before_trial(view, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.sampler_of(trial).after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


class TrialSeededSampler(WindowedSampler):
    """A WindowedSampler with a sampler of its own for each trial, seeded by the trial's number (``make(number)``):
    with several workers, which worker asks for trial N no longer decides its params, nor, in a pack (whose
    trials are all asked before any samples), the order they were asked in."""

    KEPT = 256  # samplers of the latest trials (a pack's members sample after all of them were asked)

    def __init__(self, make: Callable[[int], Any]) -> None:
        super().__init__(make(0))
        self.make = make
        self._samplers: dict[int, Any] = {}

    def sampler_of(self, trial: FrozenTrial) -> Any:
        if trial.number not in self._samplers:
            if len(self._samplers) >= self.KEPT:
                del self._samplers[next(iter(self._samplers))]
            self._samplers[trial.number] = self.make(trial.number)
        return self._samplers[trial.number]

    def reseed_rng(self) -> None:
        """Nothing: a trial's sampler is seeded by its number, so that it samples alike wherever it runs."""


class WindowedPruner(_Windowed, optuna.pruners.BasePruner):
    """A pruner (median, successive halving) that compares with the study's history window."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        view = self._view(study)
        view.refresh()
        return bool(self.inner.prune(view, trial))


def windowed_pruner(pruner: Any) -> Any:
    """The pruner on the history window; Hyperband as it is: each of its brackets is a study of its own, which it
    reads whole (its cost per epoch grows with the study)."""
    return pruner if isinstance(pruner, optuna.pruners.HyperbandPruner) else WindowedPruner(pruner)

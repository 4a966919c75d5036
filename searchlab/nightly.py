"""One night's sweep: continue the study, re-evaluate the best configurations first (each with its recorded seed),
then promote tonight's best model to the ``champion`` alias only when it beats the champion on tonight's data by a
threshold, and is not the champion's configuration with another seed.

Exit codes, for a scheduler or a CI to alert on: 0 improved or held, 1 the sweep failed (or another night of
the same study was still running), 3 the champion got worse on the new data and nothing replaced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.budget import first_open
from searchlab.compaction import JournalInUse, compact, is_postgresql, refresh_statistics
from searchlab.config import RunConfig
from searchlab.data import load_split
from searchlab.errors import ConfigError, RunFailed, describe_error
from searchlab.lifecycle import Enqueued, run_study
from searchlab.locks import LockHeld, advisory_lock, file_lock, lock_key
from searchlab.nights import Night, decide, night_key, recorded_nights, summary_markdown
from searchlab.registry import current_version, load_registered, recorded_value, register, validation_loss
from searchlab.results import best_complete
from searchlab.settings import PACK_ATTR, REEVALUATES_ATTR, SEED_ATTR
from searchlab.storage import (
    DEFAULT_JOURNAL,
    close_storage,
    is_database_url,
    local_file,
    open_storage,
    opened_storage,
    uncached,
)
from searchlab.study import Study
from searchlab.summary import RunSummary
from searchlab.tracking import MlflowTracker
from searchlab.window import best_completed, trial_numbered, trials_since

CHAMPION_ALIAS = "champion"
NIGHTLY_FOLDER = "nightly"  # the artifact folder of the night's parent run


class NightRunning(RunFailed):
    """Another night of the same study holds the single-instance lock."""


@contextlib.contextmanager
def night_lock(url: str | None, study_name: str) -> Iterator[None]:
    """Hold the study's single-instance lock for the night: a file lock beside a journal or sqlite file, a
    PostgreSQL advisory lock; raises NightRunning at once when another night holds it."""
    url = url or DEFAULT_JOURNAL
    path = local_file(url)
    storage = None
    if url.startswith(("postgresql", "postgres")):
        storage = open_storage(url)
        lock: contextlib.AbstractContextManager[None] = advisory_lock(
            storage.engine, lock_key(f"searchlab-nightly:{study_name}"), wait=False
        )
    elif path is None:  # another database: no cross-host lock here
        lock = contextlib.nullcontext()
    elif not path.parent.is_dir():
        raise ConfigError(f"storage folder {str(path.parent)!r} does not exist: create it or choose another path")
    else:
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
        holder = f"{socket.gethostname()}:{os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        lock = file_lock(path.with_name(f"{path.name}.{safe_name}.nightly-lock"), wait=False, holder=holder)
    with contextlib.ExitStack() as held:
        held.callback(close_storage, storage)
        try:
            held.enter_context(lock)
        except LockHeld as other:
            raise NightRunning(
                f"another nightly of study {study_name!r} is running ({other}): this one exits without running"
            ) from None
        yield


def best_configurations(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The best completed trial of each of the ``k`` best configurations (distinct params), best first (a
    configuration re-evaluated night after night is among the best many times: more are read until ``k`` differ,
    or none is left)."""
    if k == 0:
        return []
    size = 4 * k
    while True:
        best = best_completed(study, size)
        distinct: list[FrozenTrial] = []
        for trial in best:
            if all(trial.params != other.params for other in distinct):
                distinct.append(trial)
        if len(distinct) >= k or len(best) < size:
            return distinct[:k]
        size *= 4


def reevaluation(trial: FrozenTrial) -> Enqueued:
    """A trial to run first tonight: ``trial``'s configuration with its own seed, so that tonight's value differs
    from its recorded one by what tonight's data changed, not by another initialisation."""
    reevaluates: dict[str, Any] = {"trial": trial.number}
    if SEED_ATTR in trial.user_attrs:
        reevaluates["seed"] = trial.user_attrs[SEED_ATTR]
    return dict(trial.params), {REEVALUATES_ATTR: reevaluates}


def importances(trials: list[Any]) -> dict[str, float]:
    """Optuna's parameter importances over these trials (empty when they cannot be computed)."""
    study = optuna.create_study(direction="minimize")
    study.add_trials(trials)
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return {
            name: round(float(value), 4)
            for name, value in optuna.importance.get_param_importances(study, evaluator=evaluator).items()
        }
    except (ValueError, RuntimeError):
        return {}


def run_night(
    study: Study,
    config: RunConfig,
    *,
    study_file: str,
    reevaluate: int = 0,
    threshold: float = 0.01,
    check: bool = True,
) -> tuple[Night, RunSummary | None]:
    """Run one night of ``study`` (``config.n_trials`` trials, the first ``reevaluate`` of them the best earlier
    configurations), compare with the champion, promote or not, and record the night; returns the night and the
    run's summary (None when the sweep failed)."""
    if reevaluate < 0:
        raise ConfigError(f"--reevaluate must be 0 or more, got {reevaluate}")
    if not 0 <= threshold < 1:
        raise ConfigError(f"--threshold must be a fraction in [0, 1), e.g. 0.01 for 1%, got {threshold}")
    with night_lock(config.storage, config.study_name), opened_storage(config.storage) as storage:
        first, again, nights = _earlier_nights(config, storage, reevaluate)
        if again and config.n_trials <= len(again):
            raise ConfigError(
                f"--trials {config.n_trials} leaves no room to search after re-evaluating "
                f"{len(again)} configurations: raise --trials or lower --reevaluate"
            )
        night = Night(len(nights) + 1, time.strftime("%Y-%m-%d %H:%M:%S"), reevaluated=len(again))
        try:
            summary = run_study(
                study,
                config,
                study_file=study_file,
                check=check,
                enqueue=again,
            )
        except RunFailed as error:  # the preflight check too
            night.reason, night.sweep_failed = str(error), True
            summary = None
        try:
            optuna_study = uncached(optuna.load_study(study_name=config.study_name, storage=storage))
        except KeyError:  # the first night failed before its study was created
            return night, summary
        night.parent_run_id = summary.parent_run_id if summary else None
        best = _record_tonight(night, optuna_study, first)
        tracker = MlflowTracker(config.tracking_uri)
        _judge_and_promote(night, best, study, config, study_file, threshold, tracker.client, optuna_study)
        nights.append(dataclasses.asdict(night))
        optuna_study.set_user_attr(night_key(night.night), nights[-1])
        if night.parent_run_id is not None:
            _log_night(tracker, night, config.study_name, nights)
    return night, summary


def _earlier_nights(
    config: RunConfig, storage: Any, reevaluate: int
) -> tuple[int, list[Enqueued], list[dict[str, Any]]]:
    """Where tonight's trials start, the re-evaluations of the ``reevaluate`` best configurations and the nights so
    far (nothing before the first night, which creates the study)."""
    try:
        earlier = uncached(optuna.load_study(study_name=config.study_name, storage=storage))
    except KeyError:
        return 0, [], []
    again = [reevaluation(trial) for trial in best_configurations(earlier, reevaluate)]
    return first_open(earlier), again, recorded_nights(earlier.user_attrs)


def _record_tonight(night: Night, study: optuna.Study, first: int) -> FrozenTrial | None:
    """Tonight's trials (numbered ``first`` on), best trial and importances, into ``night``; returns tonight's best
    trial."""
    tonight = trials_since(study, first)
    night.trials = len(tonight)
    best = best_complete(tonight)
    if best is not None:
        night.best_value, night.best_trial, night.best_params = best.value, best.number, dict(best.params)
        night.importances = importances([trial for trial in tonight if trial.state == TrialState.COMPLETE])
    return best


def _judge_and_promote(
    night: Night,
    best: FrozenTrial | None,
    study: Study,
    config: RunConfig,
    study_file: str,
    threshold: float,
    client: Any,
    optuna_study: optuna.Study,
) -> None:
    """Score the champion on tonight's data, decide, and point the champion alias at tonight's best if it wins."""
    champion = current_version(client, config.study_name, CHAMPION_ALIAS)
    val_data = load_split(study, config.seed)[1] if best is not None else None  # tonight's, for both uses below
    if champion is not None and best is not None:
        night.champion_before = champion.version
        night.champion_recorded = recorded_value(champion.tags)
        try:
            loaded = load_registered(
                f"models:/{config.study_name}@{CHAMPION_ALIAS}", tracking_uri=config.tracking_uri, study_file=study_file
            )
            night.champion_tonight = validation_loss(loaded, val_data)
        except Exception as error:  # e.g. the study's model changed: the champion cannot be compared
            night.reason = (
                f"the champion could not be evaluated ({describe_error(error)}), so tonight's best replaces it"
            )
        champion_trial = _trial_numbered(optuna_study, champion.tags.get("trial_number"))
        if champion_trial is not None:
            night.champion_configuration = same_configuration(best, champion_trial)
    if decide(night, threshold) and best is not None:
        night.champion_after = register(
            client, config.study_name, best, study, study_file, val_data, alias=CHAMPION_ALIAS
        ).version
    else:
        night.champion_after = night.champion_before


def same_configuration(trial: FrozenTrial, champion: FrozenTrial) -> str:
    """Whether ``trial`` retrains the champion trial's configuration: "same seed" (its initialisation and batch
    order too: a re-evaluation), "another seed", or "" (another configuration)."""
    if trial.params != champion.params:
        return ""
    return "same seed" if _training_seeds(trial) == _training_seeds(champion) else "another seed"


def _training_seeds(trial: FrozenTrial) -> tuple[Any, Any]:
    """A trial's seed and the seed of its batch order (its pack's, when it trained in one)."""
    seed = trial.user_attrs.get(SEED_ATTR)
    return seed, (trial.user_attrs.get(PACK_ATTR) or {}).get("batch_seed", seed)


def _trial_numbered(study: optuna.Study, number: Any) -> FrozenTrial | None:
    """The study's trial ``number`` (a model version's ``trial_number`` tag), or None."""
    try:
        return trial_numbered(study, int(number))
    except (KeyError, TypeError, ValueError):
        return None


def _log_night(tracker: Any, night: Night, study_name: str, nights: list[dict[str, Any]]) -> None:
    """The night-over-night summary and tonight's record on the night's parent run, with tags to filter on."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "summary.md").write_text(summary_markdown(study_name, nights))
        (Path(folder) / "night.json").write_text(json.dumps(nights[-1], indent=2, default=str))
        tracker.log_artifacts(night.parent_run_id, folder, NIGHTLY_FOLDER)
    tracker.set_tags(
        night.parent_run_id,
        {
            "nightly": night.night,
            "nightly_decision": night.decision,
            "nightly_exit_code": night.exit_code,
            "champion_version": night.champion_after or "-",
        },
    )
    if night.champion_tonight is not None:
        tracker.log_metrics(night.parent_run_id, {"champion_val_loss_tonight": night.champion_tonight}, step=0)
        tracker.flush(night.parent_run_id)


def compact_after_night(url: str | None) -> str | None:
    """Compact the night's journal, or refresh a PostgreSQL database's statistics, once its run and its workers are
    done; a line saying what became of it. Another process that has the journal open (a dashboard left running)
    keeps it as it is until a night finds it free."""
    if url is not None and is_database_url(url):
        return refresh_statistics(url) if is_postgresql(url) else None
    try:
        return compact(url)
    except JournalInUse as busy:
        return f"journal    not compacted tonight: {busy}; a later night compacts it (or: searchlab compact)"

"""One night's sweep: continue the study, re-evaluate the best configurations first, then promote tonight's best
model to the ``champion`` alias only when it beats the champion on tonight's data by a threshold.

Exit codes, for a scheduler or a CI to alert on: 0 improved or held, 1 the sweep failed (or another night of
the same study was still running), 3 the champion got worse on the new data and nothing replaced it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchlab.errors import ConfigError, RunFailed, describe_error

EXIT_OK, EXIT_FAILED, EXIT_WORSE = 0, 1, 3
CHAMPION_ALIAS = "champion"
NIGHTS_ATTR = "searchlab_nights"  # study user attribute: one record per night
NIGHTLY_FOLDER = "nightly"  # the artifact folder of the night's parent run


class NightRunning(RunFailed):
    """Another night of the same study holds the single-instance lock."""


@contextlib.contextmanager
def night_lock(url: str | None, study_name: str) -> Iterator[None]:
    """Hold the study's single-instance lock for the night: a file lock beside a journal or sqlite file, a
    PostgreSQL advisory lock; raises NightRunning at once when another night holds it."""
    from searchlab.storage import DEFAULT_JOURNAL, local_file, open_storage

    url = url or DEFAULT_JOURNAL
    holder = f"{socket.gethostname()}:{os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if url.startswith(("postgresql", "postgres")):
        from sqlalchemy import text

        key = zlib.crc32(f"searchlab-nightly:{study_name}".encode())
        # autocommit: a session-level lock, with no transaction left open (idle) for the whole night
        with open_storage(url).engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar():
                raise NightRunning(f"another nightly of study {study_name!r} is running (PostgreSQL advisory lock "
                                   f"{key} is held): this one exits without running")
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # a lost session has released the lock already
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    path = local_file(url)
    if path is None:  # another database: no cross-host lock here
        yield
        return
    if not path.parent.is_dir():
        raise ConfigError(f"storage folder {str(path.parent)!r} does not exist: create it or choose another path")
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    lock_path = path.with_name(f"{path.name}.{safe_name}.nightly-lock")  # one per study in a shared storage
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or f"see {lock_path}"
            raise NightRunning(f"another nightly of study {study_name!r} is running ({other}): this one exits "
                               "without running") from None
        handle.truncate(0)
        handle.write(holder)
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def best_configurations(trials: list[Any], k: int) -> list[dict[str, Any]]:
    """The params of the ``k`` best completed trials, distinct, best first."""
    from optuna.trial import TrialState

    chosen: list[dict[str, Any]] = []
    for trial in sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value):
        if len(chosen) == k:
            break
        if trial.params not in chosen:
            chosen.append(dict(trial.params))
    return chosen


def importances(trials: list[Any]) -> dict[str, float]:
    """Optuna's parameter importances over these trials (empty when they cannot be computed)."""
    import optuna

    study = optuna.create_study(direction="minimize")
    study.add_trials(trials)
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return {name: round(float(value), 4) for name, value in
                optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (ValueError, RuntimeError):
        return {}


@dataclass
class Night:
    """What one night did and decided; stored in the study (``NIGHTS_ATTR``) and on the night's parent run."""

    night: int
    started: str
    decision: str = "failed"
    exit_code: int = EXIT_FAILED
    reason: str = ""
    sweep_failed: bool = False  # the run stopped with an error: nothing is promoted, whatever completed
    parent_run_id: str | None = None
    trials: int = 0
    reevaluated: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    champion_before: str | None = None  # the version number
    champion_recorded: float | None = None  # its value when it was promoted
    champion_tonight: float | None = None  # its value on tonight's data
    champion_after: str | None = None
    importances: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        reason = f": {self.reason}" if self.reason else ""
        lines = [f"night      {self.night}: {self.decision} (exit {self.exit_code}){reason}"]
        if self.best_value is not None:
            lines.append(f"tonight    best val_loss {self.best_value:.6g} (trial {self.best_trial}) of {self.trials} "
                         f"trials, {self.reevaluated} re-evaluated")
        if self.champion_before is not None:
            lines.append(f"champion   version {self.champion_before}: {_fmt(self.champion_recorded)} when promoted, "
                         f"{_fmt(self.champion_tonight)} on tonight's data")
        if self.champion_after is not None:
            lines.append(f"champion   now version {self.champion_after}")
        return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def decide(night: Night, threshold: float) -> bool:
    """Set the night's decision and exit code; True when tonight's best is to be promoted."""
    if night.best_value is None or night.sweep_failed:
        night.decision, night.exit_code = "failed", EXIT_FAILED
        night.reason = night.reason or "no trial completed tonight"
        return False
    if night.champion_tonight is None:
        night.decision, night.exit_code = "promoted", EXIT_OK
        night.reason = night.reason or "the first champion"
        return True
    if night.best_value <= night.champion_tonight * (1 - threshold):
        night.decision, night.exit_code = "promoted", EXIT_OK
        night.reason = f"{night.best_value:.6g} beats the champion's {night.champion_tonight:.6g} by more than " \
                       f"{threshold:.0%}"
        return True
    if night.champion_recorded is not None and night.champion_tonight > night.champion_recorded * (1 + threshold):
        night.decision, night.exit_code = "champion worse", EXIT_WORSE
        night.reason = f"the champion scores {night.champion_tonight:.6g} on tonight's data against " \
                       f"{night.champion_recorded:.6g} when promoted, and tonight's best ({night.best_value:.6g}) " \
                       "does not beat it"
        return False
    night.decision, night.exit_code = "held", EXIT_OK
    night.reason = f"tonight's best {night.best_value:.6g} does not beat the champion's {night.champion_tonight:.6g} " \
                   f"by {threshold:.0%}"
    return False


def summary_markdown(study_name: str, nights: list[dict[str, Any]]) -> str:
    """Night over night: the best value per night, what changed in the best params, importance drift."""
    tonight = nights[-1]
    lines = [f"# Nightly sweeps of {study_name}", "", f"Tonight (night {tonight['night']}): **{tonight['decision']}** "
             f"(exit {tonight['exit_code']}). {tonight['reason']}", "", "## Best value per night", "",
             "| night | started | trials | best val_loss | champion on that night's data | decision |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n['night']} | {n['started']} | {n['trials']} | {_fmt(n['best_value'])} | "
              f"{_fmt(n['champion_tonight'])} | {n['decision']} |" for n in nights]
    previous = next((n for n in reversed(nights[:-1]) if n["best_params"]), None)
    if previous is not None and tonight["best_params"]:
        names = sorted(set(previous["best_params"]) | set(tonight["best_params"]))
        changed = [(name, previous["best_params"].get(name), tonight["best_params"].get(name)) for name in names
                   if previous["best_params"].get(name) != tonight["best_params"].get(name)]
        lines += ["", f"## Best params: night {previous['night']} → tonight", ""]
        if changed:
            lines += ["| param | before | tonight |", "|---|---|---|"]
            lines += [f"| {name} | {_value(old)} | {_value(new)} |" for name, old, new in changed]
        else:
            lines.append("Unchanged.")
    drift_from = next((n for n in reversed(nights[:-1]) if n["importances"]), None)
    if drift_from is not None and tonight["importances"]:
        names = sorted(set(drift_from["importances"]) | set(tonight["importances"]),
                       key=lambda name: -tonight["importances"].get(name, 0.0))
        lines += ["", f"## Parameter importance drift: night {drift_from['night']} → tonight", "",
                  "| param | before | tonight | change |", "|---|---|---|---|"]
        for name in names:
            old, new = drift_from["importances"].get(name, 0.0), tonight["importances"].get(name, 0.0)
            lines.append(f"| {name} | {old:.3f} | {new:.3f} | {new - old:+.3f} |")
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run_night(study: Any, config: Any, *, study_file: str, reevaluate: int = 0, threshold: float = 0.01,
              check: bool = True) -> tuple[Night, Any]:
    """Run one night of ``study`` (``config.n_trials`` trials, the first ``reevaluate`` of them the best earlier
    configurations), compare with the champion, promote or not, and record the night; returns the night and the
    run's summary (None when the sweep failed)."""
    import optuna
    from optuna.trial import TrialState

    from searchlab.check import CheckFailed
    from searchlab.execute import load_split, run_study
    from searchlab.registry import current_version, load_registered, register, validation_loss
    from searchlab.storage import open_storage
    from searchlab.tracking import MlflowTracker

    if reevaluate < 0:
        raise ConfigError(f"--reevaluate must be 0 or more, got {reevaluate}")
    if not 0 <= threshold < 1:
        raise ConfigError(f"--threshold must be a fraction in [0, 1), e.g. 0.01 for 1%, got {threshold}")
    with night_lock(config.storage, config.study_name):
        try:
            earlier = optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage))
            before = earlier.get_trials(deepcopy=False)
            nights = list(earlier.user_attrs.get(NIGHTS_ATTR, []))
        except KeyError:  # the first night creates the study
            before, nights = [], []
        again = best_configurations(before, reevaluate)
        if again and config.n_trials <= len(again):
            raise ConfigError(f"--trials {config.n_trials} leaves no room to search after re-evaluating "
                              f"{len(again)} configurations: raise --trials or lower --reevaluate")
        night = Night(len(nights) + 1, time.strftime("%Y-%m-%d %H:%M:%S"), reevaluated=len(again))
        try:
            summary = run_study(study, dataclasses.replace(config, n_trials=config.n_trials - len(again)),
                                study_file=study_file, check=check, enqueue=again)
        except (CheckFailed, RunFailed) as error:
            night.reason, night.sweep_failed = str(error), True
            summary = None
        try:
            optuna_study = optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage))
        except KeyError:  # the first night failed before its study was created
            return night, summary
        numbers = {trial.number for trial in before}
        tonight = [t for t in optuna_study.get_trials(deepcopy=False) if t.number not in numbers]
        complete = [t for t in tonight if t.state == TrialState.COMPLETE]
        night.trials = len(tonight)
        night.parent_run_id = summary.parent_run_id if summary else None
        if complete:
            best = min(complete, key=lambda trial: trial.value)
            night.best_value, night.best_trial, night.best_params = best.value, best.number, dict(best.params)
            night.importances = importances(complete)
        tracker = MlflowTracker(config.tracking_uri)
        client = tracker.client
        champion = current_version(client, config.study_name, CHAMPION_ALIAS)
        val_data = load_split(study, config.seed)[1] if complete else None  # tonight's, for both uses below
        if champion is not None and complete:
            night.champion_before = champion.version
            night.champion_recorded = float(champion.tags["val_loss"]) if "val_loss" in champion.tags else None
            try:
                loaded = load_registered(f"models:/{config.study_name}@{CHAMPION_ALIAS}",
                                         tracking_uri=config.tracking_uri, study_file=study_file)
                night.champion_tonight = validation_loss(loaded, val_data)
            except Exception as error:  # e.g. the study's model changed: the champion cannot be compared
                night.reason = f"the champion could not be evaluated ({describe_error(error)}), so tonight's best " \
                               "replaces it"
        if decide(night, threshold):
            night.champion_after = register(client, config.study_name, best, study, study_file, val_data,
                                            alias=CHAMPION_ALIAS).version
        else:
            night.champion_after = night.champion_before
        nights.append(dataclasses.asdict(night))
        optuna_study.set_user_attr(NIGHTS_ATTR, nights)
        if night.parent_run_id is not None:
            _log_night(tracker, night, config.study_name, nights)
    return night, summary


def _log_night(tracker: Any, night: Night, study_name: str, nights: list[dict[str, Any]]) -> None:
    """The night-over-night summary and the nights' records on the night's parent run, with tags to filter on."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "summary.md").write_text(summary_markdown(study_name, nights))
        (Path(folder) / "nights.json").write_text(json.dumps(nights, indent=2, default=str))
        tracker.log_artifacts(night.parent_run_id, folder, NIGHTLY_FOLDER)
    tracker.set_tags(night.parent_run_id, {"nightly": night.night, "nightly_decision": night.decision,
                                           "nightly_exit_code": night.exit_code,
                                           "champion_version": night.champion_after or "-"})
    if night.champion_tonight is not None:
        tracker.log_metrics(night.parent_run_id, {"champion_val_loss_tonight": night.champion_tonight}, step=0)
        tracker.flush(night.parent_run_id)

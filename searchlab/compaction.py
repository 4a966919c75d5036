"""Keeping a long study's storage quick to open: a journal file compacted, a database's statistics refreshed.

A worker writes a trial as some fifty appends (the trial, each param, its attributes, one value per epoch, its end);
a study continued every night is a journal of tens of megabytes that every process replays when it opens it.
Compacted, each study is its creation and its attributes' last values, and each trial one ``CREATE_TRIAL`` record
holding its params, values, state, dates and attributes, in the original order (the same trial numbers). The
per-epoch values (``trial.report``) are kept for the ``CURVES_KEPT`` latest trials and the ``ELITE`` best ones of
each study: the pruner and the report's learning curves read those; every trial's curves stay in MLflow.

The file stays an Optuna journal: plain Optuna and optuna-dashboard read it. It is rewritten only while no other
process has it open (the lock ``storage.READERS_SUFFIX`` that every searchlab process opening it holds), under the
journal's own lock, into a new file that replaces the old one at once.

On PostgreSQL the reads are queries of their own (searchlab.window), planned from the tables' statistics: autovacuum
refreshes them, but where it is off a year-old study's queries are planned as if it held a few dozen trials.
``refresh_statistics`` runs ANALYZE on Optuna's tables after each night (a fraction of a second).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
from datetime import timezone
from pathlib import Path
from typing import Any

from searchlab.errors import ConfigError, first_line
from searchlab.storage import (
    DEFAULT_JOURNAL,
    READERS_SUFFIX,
    describe,
    forget_journal,
    is_database_url,
    local_file,
    opened_storage,
)
from searchlab.window import ELITE

CURVES_KEPT = 1000  # latest trials of a study that keep their per-epoch values (ten times the pruner's window)
WORKER_ID = "searchlab-compaction"
MB = 1024 * 1024


OPTUNA_TABLES = (
    "studies",
    "study_directions",
    "study_user_attributes",
    "study_system_attributes",
    "trials",
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_heartbeats",
)


class JournalInUse(RuntimeError):
    """Another process has the journal open: it would go on reading the old file."""


def compact_journal(path: str | Path = DEFAULT_JOURNAL, *, curves_kept: int = CURVES_KEPT) -> tuple[int, int]:
    """Rewrite the journal at ``path`` compacted; returns its size in bytes before and after. Raises JournalInUse
    when another process has it open."""
    path = Path(path).resolve()
    forget_journal(str(path))  # this process's own copy, and its place among the readers
    with open(str(path) + READERS_SUFFIX, "a") as readers:
        try:
            fcntl.flock(readers, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalInUse(f"{path} is open in another process (a searchlab dashboard, worker or run)") from None
        with open(path, "ab") as journal:
            fcntl.flock(journal, fcntl.LOCK_EX)  # no searchlab append between the reading and the replacing
            before = os.fstat(journal.fileno()).st_size
            logs = compacted_logs(str(path), curves_kept)
            temporary = path.with_name(path.name + ".compacting")
            with open(temporary, "w") as out:
                out.writelines(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
            with contextlib.suppress(OSError):  # the rename itself, durable
                folder = os.open(path.parent, os.O_RDONLY)
                os.fsync(folder)
                os.close(folder)
        return before, path.stat().st_size


def compacted_logs(path: str, curves_kept: int) -> list[dict[str, Any]]:
    """The journal's studies and trials as the fewest records that replay to them."""
    import optuna
    from optuna.distributions import distribution_to_json
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    storage = optuna.storages.JournalStorage(JournalFileBackend(path))
    logs: list[dict[str, Any]] = []
    for study_id, study in enumerate(storage.get_all_studies()):
        logs.append(_log(0, study_name=study.study_name, directions=[d.value for d in study.directions]))
        logs += [_log(2, study_id=study_id, user_attr={k: v}) for k, v in study.user_attrs.items()]
        logs += [_log(3, study_id=study_id, system_attr={k: v}) for k, v in study.system_attrs.items()]
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
        values = {t.number: sign * t.value for t in finished if t.state == TrialState.COMPLETE and t.value is not None}
        best = heapq.nsmallest(ELITE, values, key=values.__getitem__)
        curves = {t.number for t in finished[-curves_kept:]} | set(best)
        for trial in trials:
            log = _log(
                4,
                study_id=study_id,
                state=trial.state.value,
                value=trial.value if trial.values is None or len(trial.values) == 1 else None,
                values=trial.values if trial.values is not None and len(trial.values) > 1 else None,
                datetime_start=_utc(trial.datetime_start),
                params={k: trial.distributions[k].to_internal_repr(v) for k, v in trial.params.items()},
                distributions={k: distribution_to_json(d) for k, d in trial.distributions.items()},
                user_attrs=trial.user_attrs,
                system_attrs=trial.system_attrs,
            )
            if trial.datetime_complete is not None:
                log["datetime_complete"] = _utc(trial.datetime_complete)
            if trial.number in curves or not trial.state.is_finished():
                log["intermediate_values"] = trial.intermediate_values
            logs.append(log)
    return logs


def _log(op_code: int, **fields: Any) -> dict[str, Any]:
    return {"op_code": op_code, "worker_id": WORKER_ID, **fields}


def _utc(moment: Any) -> str | None:
    """A trial's date as Optuna's journal writes it (replayed dates are local and naive)."""
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def compact(url: str | None) -> str:
    """Compact the journal a storage URL names (default ``searchlab.journal``); a line saying what became of it."""
    path = local_file(url)
    if path is None or is_database_url(url or ""):
        raise ConfigError(f"{describe(url)} is a database: only a journal file is compacted (a database reads no more "
                          "than it needs)")  # fmt: skip
    if not path.is_file():
        raise ConfigError(f"no journal {str(path)!r} here: check --storage")
    before, after = compact_journal(path)
    return f"journal    {path.name} compacted: {before / MB:.1f} MB -> {after / MB:.1f} MB"


def is_postgresql(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def refresh_statistics(url: str) -> str:
    """ANALYZE Optuna's tables in the PostgreSQL database at ``url``; a line saying so. A role that does not own them
    gets PostgreSQL's warning and the tables as they were: nothing fails for it."""
    try:
        with opened_storage(url) as storage, storage.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                f"ANALYZE {', '.join(OPTUNA_TABLES)}"
            )
    except Exception as error:  # the night is done: its statistics wait for the next one
        return f"database   statistics not refreshed tonight: {first_line(error)}"
    return "database   statistics refreshed (ANALYZE of Optuna's tables, for the planner)"

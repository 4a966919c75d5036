"""What a finished run leaves for its users: the study report on its parent run, and the best trial's model in the
MLflow Model Registry (alias ``best``). Either failing is said in the run's summary, and does not fail the run."""

from __future__ import annotations

import optuna

from searchlab.data import Data
from searchlab.errors import describe_error
from searchlab.registry import BEST_ALIAS, register
from searchlab.report import REPORT_FOLDER, log_report
from searchlab.study import Study
from searchlab.tracking import MlflowTracker
from searchlab.window import best_of


def publish(
    study: optuna.Study,
    tracker: MlflowTracker,
    experiment_id: str,
    parent_run_id: str,
    declared: Study,
    study_file: str | None,
    val_data: Data,
    name: str,
    *,
    report: bool = True,
    register_best: bool = True,
) -> list[str]:
    """Write the study report to the parent run (unless not ``report``) and register the best model (alias
    ``best``; unless not ``register_best``); returns summary lines. Either failing is reported in its line and
    does not fail the run."""
    lines = []
    if not report:
        lines.append("report     not written (--no-report): 'searchlab report' writes it")
    else:
        try:
            # no PNG files: report.html holds the plots; 'searchlab report' adds them
            log_report(
                study,
                lambda folder, path: tracker.log_artifacts(parent_run_id, folder, path),
                experiment_id,
                parent_run_id,
                images=False,
            )
            lines.append(
                f"report     runs:/{parent_run_id}/{REPORT_FOLDER} (summary.md, report.html; PNGs: searchlab report)"
            )
        except Exception as error:
            if isinstance(error, ConnectionError):
                tracker.give_up.set()  # the store is unreachable: what follows fails at once, not after a wait
            lines.append(f"report     not written: {describe_error(error)} (try 'searchlab report')")
    best = best_of(study)
    if best is not None and not register_best:
        lines.append(
            "model      not registered (--no-register): the best weights are in its trial's run "
            "(searchlab best --export)"
        )
    elif best is not None:
        try:
            version = register(tracker.client, name, best, declared, study_file, val_data)
            lines.append(
                f"model      models:/{name}@{BEST_ALIAS} (version {version.version}, trial {best.number}; "
                "searchlab best --load)"
            )
        except Exception as error:
            lines.append(f"model      not registered: {describe_error(error)}")
    return lines

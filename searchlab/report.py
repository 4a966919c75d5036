"""A study report: a markdown summary of the best trials and of what was pruned or failed, and Optuna's own plots
(one interactive HTML page, and PNG images on demand), written to a folder or to the parent run.
"""

from __future__ import annotations

import collections
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.errors import first_line

REPORT_FOLDER = "report"  # the artifact folder of the parent run
HTML_PAGE = "report.html"
TOP_TRIALS = 5  # best trials in the summary table and in the learning-curve plot

# file stem → (title, the optuna.visualization function name); each is drawn with plotly, and with matplotlib
PLOTS = {
    "optimization_history": ("Optimization history", "plot_optimization_history"),
    "param_importances": ("Parameter importances", "plot_param_importances"),
    "parallel_coordinate": ("Parallel coordinates", "plot_parallel_coordinate"),
    "slice": ("Slice plots", "plot_slice"),
    "best_learning_curves": (f"Learning curves (val_loss) of the best trials (up to {TOP_TRIALS})",
                             "plot_intermediate_values"),
}


def best_trials(study: optuna.Study, n: int = TOP_TRIALS) -> list[FrozenTrial]:
    """The ``n`` completed trials with the lowest value, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda trial: trial.value)[:n]


def _plot_input(study: optuna.Study, stem: str) -> optuna.Study:
    """The study a plot draws: the best trials only for their learning curves, else the whole study."""
    if stem != "best_learning_curves":
        return study
    best = optuna.create_study(direction="minimize")
    best.add_trials(best_trials(study))
    return best


def write_report(study: optuna.Study, folder: str | Path, *, images: bool = True) -> list[str]:
    """Write the report's files into ``folder``: ``summary.md``, ``report.html`` and, if ``images``, one PNG per
    plot (matplotlib: seconds, so a run leaves them to ``searchlab report``); returns a note for each plot that
    could not be drawn."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    interactive: list[tuple[str, Any]] = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials" and the like: the summary says it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib backend is "experimental"
            for stem, (title, name) in PLOTS.items():
                source = _plot_input(study, stem)
                if images:
                    try:
                        _draw_png(study, source, stem, name, folder)
                    except Exception as error:
                        notes.append(f"{title}: not drawn ({first_line(error)})")
                try:
                    interactive.append((title, _plotly_figure(study, source, stem, name)))
                except Exception as error:
                    notes.append(f"{title} (interactive): not drawn ({first_line(error)})")
    finally:
        optuna.logging.set_verbosity(verbosity)
    if interactive:
        _write_html(study.study_name, interactive, folder / HTML_PAGE)
    (folder / "summary.md").write_text(summary_markdown(study, notes, images=images))
    return notes


def _draw_png(study: optuna.Study, source: optuna.Study, stem: str, name: str, folder: Path) -> None:
    """Save one plot as ``stem.png`` (Optuna's matplotlib plots)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as draw

    try:
        axes = getattr(draw, name)(source)
        if stem == "best_learning_curves":
            _label_curves(axes, best_trials(study))
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure  # slice plots: one axes per param
        figure.savefig(folder / f"{stem}.png", dpi=100, bbox_inches="tight")
    finally:
        plt.close("all")


def _plotly_figure(study: optuna.Study, source: optuna.Study, stem: str, name: str) -> Any:
    """One plot as a plotly figure (Optuna's default plots). Importances by Optuna's default evaluator,
    PED-ANOVA: deterministic, milliseconds (fANOVA with 16 trees took ~1.7 s here)."""
    figure = getattr(optuna.visualization, name)(source)
    if stem == "best_learning_curves":
        for trace, trial in zip(figure.data, best_trials(study), strict=False):
            trace.name = f"Trial{trial.number}"
        figure.update_layout(xaxis_title="epoch", yaxis_title="val_loss")
    return figure


def _label_curves(axes: Any, trials: list[FrozenTrial]) -> None:
    """Name each curve by its trial's number in the study (the copied trials are renumbered from 0)."""
    for line, trial in zip(axes.get_lines(), trials, strict=False):
        line.set_label(f"Trial{trial.number}")
    axes.legend(bbox_to_anchor=(1.05, 1.0), loc="upper left")
    axes.set_xlabel("epoch")
    axes.set_ylabel("val_loss")


def _write_html(study_name: str, figures: list[tuple[str, Any]], path: Path) -> None:
    """One self-contained page (plotly.js embedded once, so it opens offline and inside the MLflow UI)."""
    parts = [f"<h2>{title}</h2>" + figure.to_html(full_html=False, include_plotlyjs=index == 0)
             for index, (title, figure) in enumerate(figures)]
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{study_name}: searchlab report</title>"
                    f"</head><body><h1>Study {study_name}</h1>{''.join(parts)}</body></html>")


def _value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def summary_markdown(study: optuna.Study, notes: list[str] = (), *, images: bool = True) -> str:
    """The best trials with their params and values, the counts and reasons of pruned and failed trials, and the
    plots: ``report.html``, and the PNG images when ``images``, else how to draw them."""
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(trial.state.name for trial in trials)
    lines = [f"# Study {study.study_name}", "",
             f"{len(trials)} trials: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items())), ""]
    top = best_trials(study)
    if top:
        names = sorted({name for trial in top for name in trial.params})
        lines += [f"Best value (val_loss): **{_value(top[0].value)}** (trial {top[0].number})", "",
                  f"## The {len(top)} best trials", "",
                  "| trial | val_loss | best epoch | " + " | ".join(names) + " | MLflow run |",
                  "|" + "---|" * (len(names) + 4)]
        lines += [f"| {trial.number} | {_value(trial.value)} | {trial.user_attrs.get('best_epoch', '-')} | "
                  + " | ".join(_value(trial.params.get(name, "-")) for name in names)
                  + f" | {trial.user_attrs.get('mlflow_run_id', '-')} |" for trial in top]
    else:
        lines.append("No trial completed yet.")
    for state, reason_of in ((TrialState.PRUNED, _pruned_reason), (TrialState.FAIL, _fail_reason)):
        reasons = collections.Counter(reason_of(t) for t in trials if t.state == state)
        if reasons:
            lines += ["", f"## {state.name.capitalize()} trials: {sum(reasons.values())}", "",
                      "| reason | trials |", "|---|---|"]
            lines += [f"| {reason} | {n} |" for reason, n in reasons.most_common()]
    lines += ["", "## Plots", "", f"Interactive, every plot on one page: [{HTML_PAGE}]({HTML_PAGE})", ""]
    if images:
        lines += [f"![{title}]({stem}.png)" for stem, (title, _) in PLOTS.items()]
    else:
        lines.append("PNG images of each plot: `searchlab report FILE` draws them (into the study's latest run, or "
                     "`--out DIR`).")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _pruned_reason(trial: FrozenTrial) -> str:
    epoch = trial.user_attrs.get("pruned_epoch")
    return "pruned" if epoch is None else f"pruned at epoch {epoch}"


def _fail_reason(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get("fail_reason", "its worker died")).replace("|", "/")


def log_report(study: optuna.Study, log_artifacts: Callable[[str, str], None], *, images: bool = True) -> list[str]:
    """Write the report into a temporary folder and hand it to ``log_artifacts(local_folder, artifact_path)``."""
    with tempfile.TemporaryDirectory() as folder:
        notes = write_report(study, folder, images=images)
        log_artifacts(folder, REPORT_FOLDER)
    return notes

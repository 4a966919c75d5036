"""A study report: a markdown summary of the best trials and of what was pruned or failed, and Optuna's own plots
(one interactive HTML page, and PNG images on demand), written to a folder or to the study's parent run.
"""

from __future__ import annotations

import collections
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.endpoints import check_tracking_uri
from searchlab.errors import ConfigError, first_line, format_value
from searchlab.results import best_trials, describe_packs, pack_sizes
from searchlab.settings import FAIL_REASON_ATTR, PARENT_RUN_ATTR, PRUNED_EPOCH_ATTR, RUN_ID_ATTR, tracking_uri_for
from searchlab.storage import mask_password
from searchlab.tracking import MlflowTracker

REPORT_FOLDER = "report"  # the artifact folder of the parent run
HTML_PAGE = "report.html"
TOP_TRIALS = 5  # best trials in the summary table and in the learning-curve plot

# file stem → (title, the optuna.visualization function name); each is drawn with plotly, and with matplotlib
PLOTS = {
    "optimization_history": ("Optimization history", "plot_optimization_history"),
    "param_importances": ("Parameter importances", "plot_param_importances"),
    "parallel_coordinate": ("Parallel coordinates", "plot_parallel_coordinate"),
    "slice": ("Slice plots", "plot_slice"),
    "best_learning_curves": (
        f"Learning curves (val_loss) of the best trials (up to {TOP_TRIALS})",
        "plot_intermediate_values",
    ),
}


def _top(study: optuna.Study) -> list[FrozenTrial]:
    return best_trials(study.get_trials(deepcopy=False), TOP_TRIALS)


def _plot_input(study: optuna.Study, stem: str) -> optuna.Study:
    """The study a plot draws: the best trials only for their learning curves, else the whole study."""
    if stem != "best_learning_curves":
        return study
    best = optuna.create_study(direction="minimize")
    best.add_trials(_top(study))
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
            _label_curves(axes, _top(study))
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure  # slice plots: one axes per param
        figure.savefig(folder / f"{stem}.png", dpi=100, bbox_inches="tight")
    finally:
        plt.close("all")


def _plotly_figure(study: optuna.Study, source: optuna.Study, stem: str, name: str) -> Any:
    """One plot as a plotly figure (Optuna's default plots). Importances by Optuna's default evaluator,
    PED-ANOVA: deterministic and fast (fANOVA's trees take seconds)."""
    figure = getattr(optuna.visualization, name)(source)
    if stem == "best_learning_curves":
        for trace, trial in zip(figure.data, _top(study), strict=False):
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
    parts = [
        f"<h2>{title}</h2>" + figure.to_html(full_html=False, include_plotlyjs=index == 0)
        for index, (title, figure) in enumerate(figures)
    ]
    path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{study_name}: searchlab report</title>"
        f"</head><body><h1>Study {study_name}</h1>{''.join(parts)}</body></html>"
    )


def summary_markdown(study: optuna.Study, notes: Sequence[str] = (), *, images: bool = True) -> str:
    """The best trials with their params and values, the counts and reasons of pruned and failed trials, and the
    plots: ``report.html``, and the PNG images when ``images``, else how to draw them."""
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(trial.state.name for trial in trials)
    lines = [
        f"# Study {study.study_name}",
        "",
        f"{len(trials)} trials: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items())),
        "",
    ]
    packs = pack_sizes(trials)
    if packs:
        lines += [describe_packs(packs) + ".", ""]
    top = _top(study)
    if top:
        names = sorted({name for trial in top for name in trial.params})
        lines += [
            f"Best value (val_loss): **{format_value(top[0].value)}** (trial {top[0].number})",
            "",
            f"## The {len(top)} best trials",
            "",
            "| trial | val_loss | best epoch | " + " | ".join(names) + " | MLflow run |",
            "|" + "---|" * (len(names) + 4),
        ]
        lines += [
            f"| {trial.number} | {format_value(trial.value)} | {trial.user_attrs.get('best_epoch', '-')} | "
            + " | ".join(format_value(trial.params.get(name, "-")) for name in names)
            + f" | {trial.user_attrs.get(RUN_ID_ATTR, '-')} |"
            for trial in top
        ]
    else:
        lines.append("No trial completed yet.")
    for state, reason_of in ((TrialState.PRUNED, _pruned_reason), (TrialState.FAIL, _fail_reason)):
        reasons = collections.Counter(reason_of(t) for t in trials if t.state == state)
        if reasons:
            lines += [
                "",
                f"## {state.name.capitalize()} trials: {sum(reasons.values())}",
                "",
                "| reason | trials |",
                "|---|---|",
            ]
            lines += [f"| {reason} | {n} |" for reason, n in reasons.most_common()]
    lines += ["", "## Plots", "", f"Interactive, every plot on one page: [{HTML_PAGE}]({HTML_PAGE})", ""]
    if images:
        lines += [f"![{title}]({stem}.png)" for stem, (title, _) in PLOTS.items()]
    else:
        lines.append(
            "PNG images of each plot: `searchlab report FILE` draws them (into the study's latest run, or `--out DIR`)."
        )
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _pruned_reason(trial: FrozenTrial) -> str:
    epoch = trial.user_attrs.get(PRUNED_EPOCH_ATTR)
    return "pruned" if epoch is None else f"pruned at epoch {epoch}"


def _fail_reason(trial: FrozenTrial) -> str:
    return str(trial.user_attrs.get(FAIL_REASON_ATTR, "its worker died")).replace("|", "/")


def log_report(study: optuna.Study, log_artifacts: Callable[[str, str], None], *, images: bool = True) -> list[str]:
    """Write the report into a temporary folder and hand it to ``log_artifacts(local_folder, artifact_path)``."""
    with tempfile.TemporaryDirectory() as folder:
        notes = write_report(study, folder, images=images)
        log_artifacts(folder, REPORT_FOLDER)
    return notes


def publish_report(study: optuna.Study, tracking_uri: str | None, out: str | None) -> str:
    """Write the study report to the folder ``out``, or to the study's latest parent run; says where."""
    if out is not None:
        notes = write_report(study, out)
        return "\n".join([f"report     {out}/summary.md", *notes])
    parent_run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent_run_id is None:
        raise ConfigError(
            f"study {study.study_name!r} has no MLflow run yet: run it with 'searchlab run', "
            "or write the report to a folder with --out"
        )
    uri = tracking_uri_for(tracking_uri)
    check_tracking_uri(uri)
    client = MlflowTracker(uri).client
    try:
        client.get_run(parent_run_id)
    except Exception:
        raise ConfigError(
            f"run {parent_run_id} is not in {mask_password(uri)}: pass the --tracking-uri the study ran with"
        ) from None
    notes = log_report(study, lambda folder, path: client.log_artifacts(parent_run_id, folder, path))
    return "\n".join([f"report     runs:/{parent_run_id}/{REPORT_FOLDER} (summary.md, report.html, PNGs)", *notes])

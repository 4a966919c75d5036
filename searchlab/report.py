"""A study report: a markdown summary of the best trials and of what was pruned or failed, and Optuna's own plots
(one HTML page, and PNG images on demand), written to a folder or to the study's parent run.
"""

from __future__ import annotations

import collections
import html
import io
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchlab.endpoints import check_tracking_uri
from searchlab.errors import ConfigError, first_line, format_value
from searchlab.mlflow_ui import artifact_page
from searchlab.results import describe_packs, pack_sizes
from searchlab.settings import (
    FAIL_REASON_ATTR,
    OBJECTIVE_NAME,
    PARENT_RUN_ATTR,
    PRUNED_EPOCH_ATTR,
    RUN_ID_ATTR,
    tracking_uri_for,
)
from searchlab.storage import mask_password
from searchlab.tracking import MlflowTracker
from searchlab.window import best_completed, count_by_state, count_trials, trials_since

REPORT_FOLDER = "report"  # the artifact folder of the parent run
HTML_PAGE = "report.html"
SLICE_COLUMNS = 3  # the slice plot's panels (one per param) to a row
TOP_TRIALS = 5  # best trials in the summary table and in the learning-curve plot
# The latest trials the plots and the reasons tables cover: a study continued every night holds tens of thousands,
# whose plots would weigh megabytes and take minutes (fANOVA); the best trials and the counts cover the whole study.
PLOTTED_TRIALS = 500
FIRST_PLOTTED = "searchlab_first_plotted"  # on an in-memory copy of the latest trials: the number of its trial 0

# file stem → (title, the optuna.visualization function name), drawn by its matplotlib backend
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
    return best_completed(study, TOP_TRIALS)


def _latest(study: optuna.Study) -> tuple[optuna.Study, list[FrozenTrial]]:
    """The study's latest ``PLOTTED_TRIALS`` trials, and an in-memory study of them (numbered from 0 there:
    ``FIRST_PLOTTED`` says from which trial, for the axes). Read once: Optuna's plots read the trials again and again
    (on a database, a query each time)."""
    first = max(0, count_trials(study) - PLOTTED_TRIALS)
    trials = trials_since(study, first)
    latest = _copy(study, trials)
    latest.set_user_attr(FIRST_PLOTTED, first)
    return latest, trials


def _copy(study: optuna.Study, trials: list[FrozenTrial]) -> optuna.Study:
    """An in-memory study of these trials (``add_trials`` numbers them from 0)."""
    copy = optuna.create_study(direction="minimize")
    copy.set_metric_names(study.metric_names or [OBJECTIVE_NAME])
    copy.add_trials(trials)
    return copy


def _number_axis(axes: Any, source: optuna.Study) -> None:
    """The optimization history's trial axis in the study's numbers, where the plot drew a copy's."""
    first = source.user_attrs.get(FIRST_PLOTTED, 0)
    if first:
        from matplotlib.ticker import FuncFormatter

        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x + first:,.0f}"))


def _plot_input(study: optuna.Study, latest: optuna.Study, stem: str) -> optuna.Study:
    """The study a plot draws: the best trials only for their learning curves, else the latest trials."""
    return _copy(study, _top(study)) if stem == "best_learning_curves" else latest


def write_report(
    study: optuna.Study, folder: str | Path, *, images: bool = True, run: tuple[str, str] | None = None
) -> list[str]:
    """Write the report's files into ``folder``: ``summary.md``, ``report.html`` and, if ``images``, one PNG per
    plot; returns a note for each plot that could not be drawn. ``run`` (experiment id, run id): the files go to
    that run's artifacts, and the summary links them where the MLflow UI shows them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    drawn: list[tuple[str, str]] = []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "no complete trials" and the like: the summary says it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib backend is "experimental"
            latest, trials = _latest(study)
            for stem, (title, name) in PLOTS.items():
                source = _plot_input(study, latest, stem)
                try:
                    drawn.append((title, _svg(study, source, stem, name, folder if images else None)))
                except Exception as error:
                    notes.append(f"{title}: not drawn ({first_line(error)})")
    finally:
        optuna.logging.set_verbosity(verbosity)
    _write_html(study.study_name, drawn, notes, folder / HTML_PAGE, _coverage(study))
    (folder / "summary.md").write_text(summary_markdown(study, notes, images=images, run=run, latest=trials))
    return notes


def import_importance_without_fanova() -> None:
    """For a process that only writes a report (`searchlab report`): import Optuna's importance module with
    scikit-learn held back. Optuna imports scikit-learn there, most of the report's import time, only for its fANOVA
    evaluator; the report's importances are PED-ANOVA's (Optuna's default), which need none. fANOVA in such a process
    then says scikit-learn is missing: not for a process that goes on to other work."""
    if "optuna.importance" in sys.modules or "sklearn.ensemble" in sys.modules:
        return
    sys.modules["sklearn.ensemble"] = None  # type: ignore[assignment]  # its import fails at once; Optuna defers it
    try:
        import optuna.importance  # noqa: F401
    finally:
        del sys.modules["sklearn.ensemble"]


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _draw(source: optuna.Study, name: str) -> Any:
    """One of Optuna's matplotlib plots of ``source``, its value named as the study names it."""
    import optuna.visualization.matplotlib as draw

    named = {} if name == "plot_intermediate_values" else {"target_name": OBJECTIVE_NAME}
    return getattr(draw, name)(source, **named)


def _figure(axes: Any) -> Any:
    return (axes.flat[0] if hasattr(axes, "flat") else axes).figure  # slice plots: one axes per param


def _drawn(study: optuna.Study, source: optuna.Study, stem: str, name: str) -> Any:
    """One plot's axes, its curves named and its trial axis numbered as in the study."""
    axes = _draw(source, name)
    if stem == "best_learning_curves":
        _label_curves(axes, _top(study))
    if stem == "optimization_history":
        _number_axis(axes, source)
    return axes


def _svg(study: optuna.Study, source: optuna.Study, stem: str, name: str, png_folder: Path | None) -> str:
    """One plot as inline SVG for a page about 1,000 px wide (text stays text, so the page reads and searches like
    a page); with ``png_folder``, the same figure saved there as ``stem.png``. Drawn once and its bounds found once
    for both (the importances are fitted; ``bbox_inches="tight"`` lays a figure out again for every file)."""
    plt = _matplotlib()
    try:
        with plt.rc_context({"svg.fonttype": "none", "font.size": 9}):
            axes = _drawn(study, source, stem, name)
            figure = _figure(axes)
            if stem == "slice":
                _wrap_panels(axes)
            else:
                figure.set_size_inches(8.6, 4.2)
            bounds = figure.get_tightbbox(figure.canvas.get_renderer()).padded(0.1)  # as "tight" finds them
            out = io.StringIO()
            figure.savefig(out, format="svg", bbox_inches=bounds)
            if png_folder is not None:
                figure.savefig(png_folder / f"{stem}.png", dpi=100, bbox_inches=bounds)
    finally:
        plt.close("all")
    return out.getvalue()[out.getvalue().index("<svg") :]  # no XML prolog inside HTML


def _wrap_panels(axes: Any) -> None:
    """Optuna's slice plot is one row of panels, one per param (six params: a figure 19 inches wide): wrap them,
    ``SLICE_COLUMNS`` to a row, with the colour bar beside them, in one figure the page's width."""
    from matplotlib.ticker import NullFormatter

    panels = list(axes.flat) if hasattr(axes, "flat") else [axes]
    figure = panels[0].figure
    others = [other for other in figure.axes if other not in panels]  # the colour bar
    rows = -(-len(panels) // SLICE_COLUMNS)
    figure.set_size_inches(8.6, 2.3 * rows + 0.5)
    figure.set_layout_engine(None)
    grid = figure.add_gridspec(
        rows, SLICE_COLUMNS + 1, width_ratios=[1] * SLICE_COLUMNS + [0.06], wspace=0.3, hspace=0.5, top=0.9
    )
    ylabel = panels[0].get_ylabel()
    for index, panel in enumerate(panels):
        row, column = divmod(index, SLICE_COLUMNS)
        panel.set_position(grid[row, column].get_position(figure))
        panel.tick_params(labelleft=column == 0)  # Optuna shares the value axis: its labels on the left only
        panel.set_ylabel(ylabel if column == 0 else "")
        if panel.get_xscale() == "log":
            panel.xaxis.set_minor_formatter(NullFormatter())  # a narrow log range labels every minor tick
    for other in others:
        other.set_position(grid[:, SLICE_COLUMNS].get_position(figure))


def _label_curves(axes: Any, trials: list[FrozenTrial]) -> None:
    """Name each curve by its trial's number in the study (the copied trials are renumbered from 0)."""
    for line, trial in zip(axes.get_lines(), trials, strict=False):
        line.set_label(f"trial {trial.number}")
    axes.legend(bbox_to_anchor=(1.02, 1.0), loc="upper left", title="best trials")
    axes.set_xlabel("epoch")
    axes.set_ylabel("val_loss")


def _coverage(study: optuna.Study) -> str:
    """What the plots cover, said where they are."""
    total = count_trials(study)
    if total <= PLOTTED_TRIALS:
        return f"The plots cover all {total} trials."
    return f"The plots cover the latest {PLOTTED_TRIALS:,} of {total:,} trials (the best trials: the whole study)."


def _write_html(study_name: str, plots: list[tuple[str, str]], notes: list[str], path: Path, coverage: str) -> None:
    """One self-contained page without scripts: it opens offline and in the MLflow UI's artifact viewer, and
    weighs kilobytes, not plotly.js's megabytes (interactive plots: `searchlab dashboard`)."""
    name = html.escape(study_name)
    sections = [f"<h2>{html.escape(title)}</h2><div class='plot'>{svg}</div>" for title, svg in plots]
    sections += [f"<p>{html.escape(note)}</p>" for note in notes]
    path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name}: searchlab report</title><style>"
        "body{font-family:sans-serif;max-width:980px;margin:0 auto;padding:0 8px}"
        ".plot svg{max-width:100%;height:auto}"
        f"</style></head><body><h1>Study {name}</h1>"
        f"<p>{html.escape(coverage)} Interactive plots of the same study: <code>searchlab dashboard</code>.</p>"
        f"{''.join(sections)}</body></html>"
    )


def summary_markdown(
    study: optuna.Study,
    notes: Sequence[str] = (),
    *,
    images: bool = True,
    run: tuple[str, str] | None = None,
    latest: list[FrozenTrial] | None = None,
) -> str:
    """The best trials with their params and values, the counts and reasons of pruned and failed trials, and the
    plots: ``report.html``, and the PNG images when ``images``, else how to draw them.

    The UI renders ``summary.md`` inside its own page, where a path relative to the file would lead to the
    server's root, and shows no images: in a ``run``'s artifacts (experiment id, run id), the page and the images
    are linked where the artifact viewer shows them. ``latest``: the study's latest ``PLOTTED_TRIALS`` trials, when
    they have been read."""
    page = HTML_PAGE if run is None else artifact_page("", *run, f"{REPORT_FOLDER}/{HTML_PAGE}")
    total = count_trials(study)
    trials = trials_since(study, max(0, total - PLOTTED_TRIALS)) if latest is None else latest  # packs, reasons
    states = {state.name: n for state, n in count_by_state(study).items()}
    lines = [
        f"# Study {study.study_name}",
        "",
        f"{total} trials: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items())),
        "",
    ]
    packs = pack_sizes(trials)
    if packs:
        lines += [describe_packs(packs) + ".", ""]
    top = _top(study)
    if top:
        names = sorted({name for trial in top for name in trial.params})
        lines += [
            f"Best value ({OBJECTIVE_NAME}): **{format_value(top[0].value)}** (trial {top[0].number})",
            "",
            f"## The {len(top)} best trials",
            "",
            f"| trial | {OBJECTIVE_NAME} | best epoch | " + " | ".join(names) + " | MLflow run |",
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
    of_latest = "" if len(trials) == total else f" (of the latest {len(trials):,})"
    for state, reason_of in ((TrialState.PRUNED, _pruned_reason), (TrialState.FAIL, _fail_reason)):
        reasons = collections.Counter(reason_of(t) for t in trials if t.state == state)
        if reasons:
            lines += [
                "",
                f"## {state.name.capitalize()} trials{of_latest}: {sum(reasons.values())}",
                "",
                "| reason | trials |",
                "|---|---|",
            ]
            lines += [f"| {reason} | {n} |" for reason, n in reasons.most_common()]
    lines += [
        "",
        "## Plots",
        "",
        f"Every plot on one page: [{HTML_PAGE}]({page}), beside this file. {_coverage(study)}",
        "",
    ]
    if images:
        lines += [
            f"![{title}]({stem}.png)"
            if run is None
            else f"- [{title}]({artifact_page('', *run, f'{REPORT_FOLDER}/{stem}.png')})"
            for stem, (title, _) in PLOTS.items()
        ]
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


def log_report(
    study: optuna.Study,
    log_artifacts: Callable[[str, str], None],
    experiment_id: str,
    run_id: str,
    *,
    images: bool = True,
) -> list[str]:
    """Write the report into a temporary folder and hand it to ``log_artifacts(local_folder, artifact_path)``, the
    artifacts of run ``run_id``."""
    with tempfile.TemporaryDirectory() as folder:
        notes = write_report(study, folder, images=images, run=(experiment_id, run_id))
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
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    except Exception:
        raise ConfigError(
            f"run {parent_run_id} is not in {mask_password(uri)}: pass the --tracking-uri the study ran with"
        ) from None
    notes = log_report(
        study, lambda folder, path: client.log_artifacts(parent_run_id, folder, path), experiment_id, parent_run_id
    )
    return "\n".join([f"report     runs:/{parent_run_id}/{REPORT_FOLDER} (summary.md, report.html, PNGs)", *notes])

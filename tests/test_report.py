"""The study report: Optuna's plots and a summary table, on the parent run after every run and by `report`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import write_study
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from searchlab.cli import main
from searchlab.mlflow_ui import artifact_page
from searchlab.report import PLOTS, REPORT_FOLDER, summary_markdown, write_report
from searchlab.settings import PARENT_RUN_ATTR
from searchlab.storage import open_storage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def check_report(folder: Path, study: optuna.Study, *, images: bool = True, run: tuple[str, str] | None = None) -> None:
    """Every plot is a PNG image (if ``images``, else none is and the summary says how to draw them), the HTML
    page holds every plot, without a script, the summary links it and its best value is Optuna's. In a ``run``'s
    artifacts (experiment id, run id), the links lead where the MLflow UI shows the files."""
    summary = (folder / "summary.md").read_text()

    def link(name: str) -> str:
        return name if run is None else artifact_page("", *run, f"{REPORT_FOLDER}/{name}")

    for stem in PLOTS:
        if images:
            assert (folder / f"{stem}.png").read_bytes().startswith(PNG_SIGNATURE), stem
            assert f"]({link(stem + '.png')})" in summary
        else:
            assert not (folder / f"{stem}.png").exists() and f"{stem}.png)" not in summary
    assert ("`searchlab report FILE` draws them" in summary) is not images
    assert f"[report.html]({link('report.html')})" in summary
    html = (folder / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<svg") == len(PLOTS) and "<script" not in html  # opens offline, in any viewer
    assert all(title in html for title, _ in PLOTS.values())
    assert len(html) < 1_000_000  # no plotly.js (4.6 MB) in every run's artifacts
    best = re.search(r"Best value \(best_val_loss\): \*\*(\S+)\*\* \(trial (\d+)\)", summary)
    assert best is not None, summary
    assert float(best.group(1)) == pytest.approx(study.best_value, rel=1e-5)
    assert int(best.group(2)) == study.best_trial.number
    assert f"| {study.best_trial.number} | {best.group(1)} |" in summary  # first row of the best-trials table


def test_every_run_writes_the_report_to_its_parent_run_without_the_slow_pngs(workdir: Path) -> None:
    study_file = write_study(workdir, max_epochs=8, patience=8, extra="pruner='median'")
    result = invoke("run", str(study_file), "--trials", "8")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    parent_run_id = study.user_attrs[PARENT_RUN_ATTR]
    assert (
        f"report     runs:/{parent_run_id}/{REPORT_FOLDER} (summary.md, report.html; PNGs: searchlab report)"
        in result.output
    )
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    folder = Path(client.download_artifacts(parent_run_id, REPORT_FOLDER, str(workdir)))
    check_report(folder, study, images=False, run=(client.get_run(parent_run_id).info.experiment_id, parent_run_id))
    assert client.get_run(parent_run_id).info.status == "FINISHED"
    pruned = [trial for trial in study.trials if trial.state == TrialState.PRUNED]
    if pruned:  # the median pruner usually prunes some of 8 trials; the summary counts them either way
        assert f"## Pruned trials: {len(pruned)}" in (folder / "summary.md").read_text()


def test_no_report_skips_it_and_says_how_to_write_it(workdir: Path, study_file: Path) -> None:
    result = invoke("run", str(study_file), "--trials", "2", "--no-report")
    assert result.exit_code == 0, result.output
    assert "report     not written (--no-report): 'searchlab report' writes it" in result.output
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.list_artifacts(study.user_attrs[PARENT_RUN_ATTR], REPORT_FOLDER) == []
    assert "model      models:/tiny@best" in result.output  # the best model is registered all the same


def test_report_command_writes_a_folder_or_the_latest_parent_run(workdir: Path, study_file: Path) -> None:
    assert invoke("run", str(study_file), "--trials", "3").exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(None))
    result = invoke("report", str(study_file), "--out", "rep")
    assert result.exit_code == 0, result.output
    check_report(workdir / "rep", study)

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parent_run_id = study.user_attrs[PARENT_RUN_ATTR]
    result = invoke("report", str(study_file))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report     runs:/{parent_run_id}/{REPORT_FOLDER} (summary.md, report.html, PNGs)"
    folder = Path(client.download_artifacts(parent_run_id, REPORT_FOLDER, str(workdir / "run")))
    check_report(folder, study, run=(study.user_attrs["mlflow_experiment_id"], parent_run_id))


def test_report_of_an_unknown_study_is_one_line(workdir: Path, study_file: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(study_file)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: no {'searchlab.journal'} here: run 'searchlab run FILE' first, or pass --storage"
    ]


def test_summary_counts_pruned_and_failed_trials_with_their_reasons() -> None:
    study = optuna.create_study(study_name="mixed")
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for number, (value, lr) in enumerate([(0.5, 0.01), (0.2, 0.001), (0.9, 0.05)]):
        study.add_trial(
            create_trial(
                value=value,
                params={"lr": lr},
                distributions=space,
                user_attrs={"best_epoch": number + 1, "mlflow_run_id": f"run{number}"},
            )
        )
    for epoch in (2, 2, 5):
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED, params={"lr": 0.1}, distributions=space, user_attrs={"pruned_epoch": epoch}
            )
        )
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "loss is nan at epoch 3"}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    summary = summary_markdown(study)
    assert "8 trials: 3 complete, 2 fail, 3 pruned" in summary
    assert "Best value (best_val_loss): **0.2** (trial 1)" in summary
    rows = [line for line in summary.splitlines() if re.match(r"\| \d+ \|.*\| run\d \|$", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "0", "2"]  # best first
    assert "| 1 | 0.2 | 2 | 0.001 | run1 |" in summary
    assert "## Pruned trials: 3" in summary and "| pruned at epoch 2 | 2 |" in summary
    assert "| pruned at epoch 5 | 1 |" in summary
    assert "## Fail trials: 2" in summary and "| loss is nan at epoch 3 | 1 |" in summary
    assert "| its worker died | 1 |" in summary


def test_a_study_without_completed_trials_still_gets_its_report(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="none")
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "boom"}))
    assert write_report(study, tmp_path) == []
    for stem in PLOTS:
        assert (tmp_path / f"{stem}.png").read_bytes().startswith(PNG_SIGNATURE)
    summary = (tmp_path / "summary.md").read_text()
    assert "No trial completed yet." in summary and "| boom | 1 |" in summary


def test_a_plot_that_fails_is_noted_and_the_rest_are_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna.visualization.matplotlib as draw

    def broken(study: optuna.Study, **kwargs: object) -> None:
        raise ValueError("cannot slice this")

    monkeypatch.setattr(draw, "plot_slice", broken)
    study = optuna.create_study(study_name="one")
    study.add_trial(
        create_trial(
            value=0.3,
            params={"lr": 0.01},
            distributions={"lr": FloatDistribution(1e-4, 1e-1, log=True)},
            intermediate_values={1: 0.5, 2: 0.3},
        )
    )
    notes = write_report(study, tmp_path)
    assert notes == ["Slice plots: not drawn (cannot slice this)"]
    assert not (tmp_path / "slice.png").exists()
    assert (tmp_path / "optimization_history.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "- Slice plots: not drawn (cannot slice this)" in (tmp_path / "summary.md").read_text()
    assert PLOTS["slice"][0] in (tmp_path / "report.html").read_text()  # the page says so


def test_the_page_lays_its_plots_out_for_a_narrow_frame_and_labels_the_curves(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="narrow")
    space = {name: FloatDistribution(0.0, 1.0) for name in ("a", "b", "c", "d", "e", "f")}
    for number in range(8):
        study.add_trial(
            create_trial(
                value=1.0 / (number + 1),
                params={name: (number * (index + 1) % 7) / 7 for index, name in enumerate(space)},
                distributions=space,
                intermediate_values={1: 2.0 / (number + 1), 2: 1.0 / (number + 1)},
            )
        )
    assert write_report(study, tmp_path, images=False) == []
    check_report(tmp_path, study, images=False)
    html = (tmp_path / "report.html").read_text()
    widths = [float(width) for width in re.findall(r'<svg[^>]* width="([\d.]+)pt"', html)]
    assert len(widths) == len(PLOTS)
    assert max(widths) * 4 / 3 <= 1000  # pt to CSS px: every plot fits a 1,000 px frame at its own size
    slice_plot = html[html.index(PLOTS["slice"][0]) :]
    slice_plot = slice_plot[: slice_plot.index("</svg>")]
    assert all(f">{name}<" in slice_plot for name in space)  # a panel per param, in one figure
    height = float(re.search(r'<svg[^>]* height="([\d.]+)pt"', slice_plot).group(1))
    assert height > 300  # six panels wrapped in rows (one row of six would be ~180 pt high)
    assert all(f">trial {number}<" in html for number in (7, 6, 5, 4, 3))  # the 5 best curves' legend, as text


def test_a_long_study_plots_its_latest_trials_and_counts_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study continued every night: the plots draw the latest trials (the history's axis in their numbers); the
    counts and the best trials cover the whole study, and the page says what the plots cover."""
    monkeypatch.setattr("searchlab.report.PLOTTED_TRIALS", 10)
    study = optuna.create_study(storage=open_storage(str(tmp_path / "searchlab.journal")), study_name="long")
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for number in range(30):
        lr = 10 ** (-4 + 3 * ((number * 7) % 30) / 30)
        study.add_trial(create_trial(params={"lr": lr}, distributions=space, value=abs(lr - 0.01) + number / 1000))
    plotted: list[list[float]] = []
    axes: list[object] = []
    draw = optuna.visualization.matplotlib.plot_optimization_history

    def spy(source: optuna.Study, **kwargs: object) -> object:
        plotted.append([trial.value for trial in source.get_trials(deepcopy=False)])
        axes.append(draw(source, **kwargs))
        return axes[-1]

    monkeypatch.setattr(optuna.visualization.matplotlib, "plot_optimization_history", spy)
    assert write_report(study, tmp_path / "report", images=False) == []  # every plot drawn

    assert plotted == [[trial.value for trial in study.trials[20:]]]
    assert axes[0].xaxis.get_major_formatter()(3, 0) == "23"  # the study's trial numbers
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "30 trials: 30 complete" in summary
    assert f"(trial {study.best_trial.number})" in summary and study.best_trial.number < 20  # the best of all
    assert "The plots cover the latest 10 of 30 trials" in summary
    assert "The plots cover the latest 10 of 30 trials" in (tmp_path / "report" / "report.html").read_text()


def test_the_report_command_imports_importances_without_scikit_learn() -> None:
    """`searchlab report` draws PED-ANOVA's importances without importing scikit-learn (Optuna imports it for
    fANOVA only); scikit-learn still imports afterwards."""
    script = """
import sys
import optuna
from searchlab.report import import_importance_without_fanova
import_importance_without_fanova()
study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2 + trial.suggest_float("y", 0, 1) / 100, 30)
importances = optuna.importance.get_param_importances(study)
assert "sklearn.ensemble" not in sys.modules and set(importances) == {"x", "y"}, importances
from sklearn.ensemble import RandomForestRegressor
print(max(importances, key=importances.get), RandomForestRegressor.__name__)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["x", "RandomForestRegressor"]

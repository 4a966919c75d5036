"""What a person sees in the MLflow UI after a run, in a real browser: the summary's link to the report, the report
inside the artifact viewer, searchlab's charts, the model-training layout, the registered version's schema; and the
records behind them (every trial run has the plotted metric, no internal tag is shown)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SEARCHLAB, clean_env, run_study, start, stop, write_study
from mlflow import MlflowClient

from searchlab.mlflow_ui import CHART_VIEW_TAG, SCATTERED_PARAMS, artifact_page, chart_view, charts_page
from searchlab.report import PLOTS
from searchlab.settings import OBJECTIVE_NAME

STUDY = "shown"
TRIALS = 8


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A study run with the median pruner (some trials pruned), and `searchlab ui` serving its store."""
    folder = tmp_path_factory.mktemp("shown")
    study_file = write_study(folder, name=STUDY, max_epochs=8, patience=8, extra="pruner='median'")
    run_study(folder, study_file, "--trials", str(TRIALS))
    server = start(folder, "ui", "--study-name", STUDY, ready="/health")
    try:
        yield folder, server.url
    finally:
        stop(server)


def client(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def runs(folder: Path) -> tuple[str, Any, list[Any]]:
    """The experiment id, the parent run and the trial runs."""
    experiment = client(folder).get_experiment_by_name(STUDY)
    found = client(folder).search_runs([experiment.experiment_id])
    parent = next(run for run in found if not run.info.run_name.startswith("trial-"))
    return experiment.experiment_id, parent, [run for run in found if run.info.run_name.startswith("trial-")]


def test_every_trial_run_has_the_plotted_value_and_no_internal_tag_shows(shown: tuple[Path, str]) -> None:
    folder, _ = shown
    _, parent, trial_runs = runs(folder)
    states = [run.data.tags["state"] for run in trial_runs]
    assert "PRUNED" in states and "COMPLETE" in states, states  # the median pruner prunes some of 8
    for run in trial_runs:  # pruned ones too: Compare's scatter and contour plots draw every trial
        assert OBJECTIVE_NAME in run.data.metrics, run.info.run_name
        history = client(folder).get_metric_history(run.info.run_id, "val_loss")
        assert run.data.metrics[OBJECTIVE_NAME] == min(point.value for point in history)
    for run in [parent, *trial_runs]:  # the UI shows every tag but MLflow's own (mlflow.*)
        shown_tags = [key for key in run.data.tags if not key.startswith("mlflow.")]
        assert not [key for key in shown_tags if "token" in key.lower()], shown_tags


def test_the_summary_links_the_report_and_the_report_fits_the_viewer(browser: Any, shown: tuple[Path, str]) -> None:
    from selenium.webdriver.common.by import By

    folder, url = shown
    experiment_id, parent, trial_runs = runs(folder)
    summary = artifact_page(url, experiment_id, parent.info.run_id, "report/summary.md")
    browser.get(summary)
    link = browser.find_element(By.LINK_TEXT, "report.html")  # the summary, rendered as markdown in the viewer
    link.click()
    browser.switch_to.window(browser.window_handles[-1])  # the viewer opens links in a new tab
    try:
        assert "/artifacts/report/report.html" in browser.current_url
        frame = browser.find_element(By.CSS_SELECTOR, "iframe")  # the viewer shows an HTML artifact in a frame
        assert frame.size["width"] <= 1000
        browser.switch_to.frame(frame)
        page = browser.find_element(By.TAG_NAME, "body")
        assert f"Study {STUDY}" in page.text and "Slice plots" in page.text
        overflow = browser.execute_script(
            "const e = document.documentElement; return [e.scrollWidth, e.clientWidth,"
            " Math.max(...[...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect().right))];"
        )
        assert overflow[0] <= overflow[1] and overflow[2] <= overflow[1], overflow  # nothing cut off on the right
        legend = browser.execute_script("return [...document.querySelectorAll('svg text')].map(t => t.textContent)")
        best = sorted(
            (run for run in trial_runs if run.data.tags["state"] == "COMPLETE"),
            key=lambda r: r.data.metrics[OBJECTIVE_NAME],
        )
        assert f"trial {best[0].data.tags['trial_number']}" in legend  # the learning curves are labelled
    finally:
        browser.switch_to.default_content()
        browser.close()
        browser.switch_to.window(browser.window_handles[0])


def test_the_charts_page_plots_every_param_against_best_val_loss(browser: Any, shown: tuple[Path, str]) -> None:
    from selenium.webdriver.common.by import By

    folder, url = shown
    experiment_id, parent, _ = runs(folder)
    searched = parent.data.params["searched"].split(",")  # the space's params and the model builder's own
    assert {"lr", "dropout", "width"} <= set(searched)
    browser.get(charts_page(url, experiment_id))
    axes = browser.find_element(By.CSS_SELECTOR, ".parcoords")  # plotly's parallel coordinates, the first chart
    labels = {label.get_attribute("textContent") for label in axes.find_elements(By.CSS_SELECTOR, "text.label")}
    assert labels == {*searched, OBJECTIVE_NAME}, labels
    assert "Model training" in browser.find_element(By.TAG_NAME, "body").text
    assert "Evaluation runs" not in browser.find_element(By.TAG_NAME, "body").text  # not the GenAI layout


def test_the_registered_version_shows_its_input_schema(browser: Any, shown: tuple[Path, str]) -> None:
    from selenium.webdriver.common.by import By

    _, url = shown
    browser.get(f"{url}/#/models/{STUDY}/versions/1?workflowType=machine_learning")
    browser.find_element(By.XPATH, "//*[contains(text(), 'Inputs (1)')]")


def test_the_chart_view_fits_an_experiment_tag_for_many_params() -> None:
    params = [f"a_rather_long_parameter_name_{index:02d}" for index in range(60)]
    view = json.loads(chart_view(params))
    assert len(chart_view(params)) <= 20_000  # MLflow's limit for an experiment tag's value
    charts = view["compareRunCharts"]
    assert charts[0]["type"] == "PARALLEL" and charts[0]["selectedParams"] == params
    assert sum(chart["type"] == "SCATTER" for chart in charts) == SCATTERED_PARAMS
    assert CHART_VIEW_TAG.startswith("mlflow.sharedViewState.")


def test_the_summary_links_each_image_to_the_viewer(browser: Any, shown: tuple[Path, str]) -> None:
    """After `searchlab report FILE` (PNGs too), the summary in the artifact viewer (which shows no images inside a
    markdown file) links each image, and a link opens it."""
    from selenium.webdriver.common.by import By

    folder, url = shown
    drawn = subprocess.run(
        [SEARCHLAB, "report", "tiny_study.py"], cwd=folder, env=clean_env(), capture_output=True, text=True, timeout=300
    )
    assert drawn.returncode == 0, drawn.stderr
    experiment_id, parent, _ = runs(folder)
    browser.get(artifact_page(url, experiment_id, parent.info.run_id, "report/summary.md"))
    for title, _ in PLOTS.values():
        browser.find_element(By.LINK_TEXT, title)
    browser.find_element(By.LINK_TEXT, PLOTS["slice"][0]).click()
    browser.switch_to.window(browser.window_handles[-1])
    try:
        image = browser.find_element(By.CSS_SELECTOR, "img[src^='blob:'], img[src*='slice.png']")
        deadline = time.monotonic() + 30
        while not browser.execute_script("return arguments[0].naturalWidth", image) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 0  # the image, loaded
    finally:
        browser.close()
        browser.switch_to.window(browser.window_handles[0])

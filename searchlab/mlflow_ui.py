"""Pages of the MLflow UI that searchlab links to, in its model-training layout, and the chart view it presets for
a study's experiment.

MLflow 3's UI opens in its GenAI layout unless the page's URL says ``workflowType=machine_learning`` or the browser
has chosen *Model training* once (the UI keeps that choice per browser, not per experiment, so no tag sets it).
The chart view is one of the experiment's shared views: the experiment tag ``mlflow.sharedViewState.<key>`` holds
the view's state as JSON, and a URL with ``viewStateShareKey=<key>`` opens it; MLflow's own *Share* button writes
the same tag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from searchlab.settings import OBJECTIVE_NAME

MODEL_TRAINING = "workflowType=machine_learning"
CHART_VIEW = "searchlab"  # the key of searchlab's chart view among the experiment's shared views
CHART_VIEW_TAG = f"mlflow.sharedViewState.{CHART_VIEW}"
CURVES = ("val_loss", "train_loss")
SCATTERED_PARAMS = 24  # one scatter chart per param, up to this many (an experiment tag holds 20,000 characters)


def _page(base: str, route: str) -> str:
    return f"{_root(base)}#{route}"


def _root(base: str) -> str:
    """The UI's root: ``base`` with one slash, or nothing (a link relative to a page of the UI)."""
    return f"{base.rstrip('/')}/" if base else ""


def experiment_page(base: str, experiment_id: str) -> str:
    """An experiment's runs (``base``: the UI's address; empty, a link inside the UI)."""
    return _page(base, f"/experiments/{experiment_id}?{MODEL_TRAINING}")


def charts_page(base: str, experiment_id: str) -> str:
    """An experiment's runs as searchlab's charts: params against the trials' value, and their curves."""
    return _page(
        base, f"/experiments/{experiment_id}/runs?viewStateShareKey={CHART_VIEW}&{MODEL_TRAINING}&compareRunsMode=CHART"
    )


def artifact_page(base: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact, open in the UI's artifact viewer. The viewer reads the file's path from the address only
    when the page loads, so the link also sets the query before ``#`` (which the UI ignores): the browser loads the
    page anew, where a link that changes only what follows ``#`` would leave the viewer on the file it shows."""
    route = f"/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{MODEL_TRAINING}"
    return f"{_root(base)}?artifact={path}#{route}"


def chart_view(params: Sequence[str]) -> str:
    """The state of searchlab's chart view (as MLflow's UI serializes it): a parallel-coordinates chart of every
    param against ``best_val_loss``, the per-epoch curves, a scatter chart per param and a contour of the first two
    params, over every run, best first."""
    section = "searchlab-charts"

    def chart(kind: str, name: str, **config: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "uuid": f"searchlab-{name}",
            "metricSectionId": section,
            "deleted": False,
            "isGenerated": False,
            "runsCountToCompare": 100,
            **config,
        }

    def axis(key: str, kind: str = "PARAM") -> dict[str, str]:
        return {"key": key, "type": kind}

    value = axis(OBJECTIVE_NAME, "METRIC")
    charts = [
        chart(
            "PARALLEL",
            "parallel",
            selectedParams=list(params),
            selectedMetrics=[OBJECTIVE_NAME],
            showAllRuns=True,
        )
    ]
    charts += [
        chart(
            "LINE",
            curve,
            metricKey=curve,
            selectedMetricKeys=[curve],
            displayName=curve,
            lineSmoothness=0,
            xAxisScaleType="linear",
            scaleType="linear",
            range={},
            xAxisKey="step",
            selectedXAxisMetricKey="",
            yAxisKey="metric",
            yAxisExpressions=[],
            ignoreOutliers=False,
            useGlobalXaxisKey=True,
            useGlobalLineSmoothing=True,
        )
        for curve in CURVES
    ]
    charts += [
        chart("SCATTER", f"scatter-{param}", xaxis=axis(param), yaxis=value)
        for param in list(params)[:SCATTERED_PARAMS]
    ]
    if len(params) >= 2:
        charts.append(chart("CONTOUR", "contour", xaxis=axis(params[0]), yaxis=axis(params[1]), zaxis=value))
    return json.dumps(
        {
            "compareRunCharts": charts,
            "compareRunSections": [
                {"uuid": section, "name": "searchlab", "display": True, "isReordered": False, "deleted": False}
            ],
            "isAccordionReordered": True,  # searchlab's section stays first
            "runsHiddenMode": "SHOW_ALL",  # the default charts only the first 10 runs
            "hideEmptyCharts": False,
            "orderByKey": f"metrics.`{OBJECTIVE_NAME}`",
            "orderByAsc": True,
        },
        separators=(",", ":"),
    )

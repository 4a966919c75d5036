"""What optuna-dashboard is served of a long study: its latest trials and its best, a list that only grows at its end,
through optuna-dashboard's own API; on a journal and on PostgreSQL."""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
from optuna.trial import FrozenTrial, TrialState
from test_window import SPACE, history, numbers, url  # noqa: F401 (url: the storages' fixture)

from searchlab.latest import LatestTrials
from searchlab.window import best_completed


def study_detail(app: Any, study_id: int, after: int = 0) -> dict[str, Any]:
    """GET /api/studies/ID?after=N on optuna-dashboard's WSGI app: what its page polls for."""
    environ: dict[str, Any] = {"PATH_INFO": f"/api/studies/{study_id}", "QUERY_STRING": f"after={after}"}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status: list[str] = []
    body = b"".join(app(environ, lambda code, headers, *_: status.append(code)))
    assert status == ["200 OK"], body
    return json.loads(body)


def test_the_latest_trials_and_the_older_best_are_shown(url: str) -> None:  # noqa: F811
    with history(url, 60) as study:
        shown = LatestTrials(study._storage, last=20, best=3)
        older_best = sorted(n for n in numbers(best_completed(study, 3)) if n < 40)
        assert older_best, "the history's best trials are spread over it"
        assert numbers(shown.get_all_trials(study._study_id)) == [*older_best, *range(40, 60)]
        assert shown.hidden(study._study_id) == 40 - len(older_best)
        assert numbers(shown.get_all_trials(study._study_id, states=(TrialState.PRUNED,))) == [41, 48, 55]
        # everything else is the study's own: counts, the best, a hidden trial by its number
        assert shown.get_n_trials(study._study_id) == 60
        assert shown.get_best_trial(study._study_id).number == study.best_trial.number
        hidden_id = shown.get_trial_id_from_study_id_trial_number(study._study_id, 5)
        assert shown.get_trial(hidden_id).number == 5


def test_the_list_only_grows_at_its_end_as_the_dashboard_polls(url: str) -> None:  # noqa: F811
    with history(url, 60) as study:
        shown = LatestTrials(study._storage, last=20, best=3)
        app = optuna_dashboard.wsgi(shown)
        first = study_detail(app, study._study_id)
        before = [trial["number"] for trial in first["trials"]]
        assert before[-20:] == list(range(40, 60))

        running = study.ask(SPACE)
        study.tell(study.ask(SPACE), 0.0)  # a new best: shown at the end, the older ones stay where they were
        app._inmemory_cache.clear()  # optuna-dashboard's own cache of the trials expires (2 to 10 s)
        again = [t["number"] for t in study_detail(app, study._study_id)["trials"]]
        polled = study_detail(app, study._study_id, after=len(before))
        assert again == [*before, 60, 61]
        assert [t["number"] for t in polled["trials"]] == [60, 61] and polled["best_trials"][0]["number"] == 61
        study.tell(running, 1.0)
        assert [t.state for t in shown.get_all_trials(study._study_id)][-2:] == [TrialState.COMPLETE] * 2


def test_plain_optuna_reads_the_shown_study(url: str) -> None:  # noqa: F811
    with history(url, 30) as study:
        shown = LatestTrials(study._storage, last=10, best=2)
        loaded = optuna.load_study(study_name=study.study_name, storage=shown)  # as the dashboard's plots load it
        trials: list[FrozenTrial] = loaded.trials
        older_best = sorted(n for n in numbers(best_completed(study, 2)) if n < 20)
        assert numbers(trials) == [*older_best, *range(20, 30)]
        assert loaded.best_trial.number == study.best_trial.number

"""What the sampler and pruner see of a long study, read without loading it all: on a journal and on PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_URL
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from searchlab.storage import close_storage, open_storage
from searchlab.window import (
    HistoryWindow,
    WindowedPruner,
    WindowedSampler,
    best_completed,
    count_trials,
    study_attr,
    trials_since,
)

SPACE = {"x": FloatDistribution(-10, 10)}


@contextlib.contextmanager
def history(url: str, trials: int) -> Iterator[optuna.Study]:
    """A study of ``trials`` finished trials (every 7th pruned, every 11th failed), value (x - 3)^2."""
    storage = open_storage(url)
    name = f"window-{uuid.uuid4().hex}"
    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    try:
        for number in range(trials):
            x = ((number * 7919) % 2000) / 100 - 10
            state = TrialState.PRUNED if number % 7 == 6 else TrialState.FAIL if number % 11 == 10 else None
            value = None if state else (x - 3) ** 2
            study.add_trial(
                optuna.trial.create_trial(
                    params={"x": x},
                    distributions=SPACE,
                    value=value,
                    state=state or TrialState.COMPLETE,
                    intermediate_values={1: (x - 3) ** 2 + 1},
                )
            )
        yield study
    finally:
        optuna.delete_study(study_name=name, storage=storage)
        close_storage(storage)


@pytest.fixture(params=["journal", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "searchlab.journal") if request.param == "journal" else POSTGRES_URL


def numbers(trials: list[FrozenTrial]) -> list[int]:
    return [trial.number for trial in trials]


def test_partial_reads_give_what_reading_everything_gives(url: str) -> None:
    with history(url, 60) as study:
        everything = study.get_trials(deepcopy=False)
        assert count_trials(study) == 60
        assert numbers(trials_since(study, 50)) == list(range(50, 60))
        assert numbers(trials_since(study, 50, also={2, 3})) == [2, 3, *range(50, 60)]
        assert numbers(trials_since(study, 50, (TrialState.PRUNED,))) == [55]
        assert trials_since(study, 60) == []
        completed = sorted((t for t in everything if t.state == TrialState.COMPLETE), key=lambda t: (t.value, t.number))
        best = best_completed(study, 5)
        assert numbers(best) == numbers(completed[:5])
        assert best[0].params == study.best_trial.params and best[0].intermediate_values == {1: best[0].value + 1}


def test_the_window_is_the_recent_trials_the_best_ones_and_those_running(url: str) -> None:
    with history(url, 60) as study:
        window = HistoryWindow(study, recent=10, elite=3)
        best = numbers(best_completed(study, 3))
        assert numbers(window.get_trials()) == sorted({*best, *range(50, 60)})
        assert window.study_name == study.study_name  # everything else is the study's

        running = study.ask(SPACE)
        study.tell(study.ask(SPACE), 1e-9)  # the best so far: it joins the elite, the worst elite leaves
        assert numbers(window.get_trials()) == sorted({*best, *range(50, 60)})  # as of the last refresh
        window.refresh()
        seen = numbers(window.get_trials(deepcopy=False))
        assert seen == sorted({*best[:2], *range(51, 62)}) and running.number == 60
        assert numbers(window.get_trials(states=(TrialState.RUNNING,))) == [60]

        study.tell(running, 50.0)  # it finished: the window reads it again from where it was running
        window.refresh()
        assert window.get_trials(deepcopy=False)[-2].state == TrialState.COMPLETE


def test_tpe_and_the_median_pruner_work_through_the_window(url: str) -> None:
    with history(url, 40) as study:
        seen: list[list[int]] = []
        tpe = optuna.samplers.TPESampler(seed=0)
        real = tpe._sample

        def spy(study: optuna.Study, *args: object) -> object:
            seen.append(numbers(study.get_trials(deepcopy=False)))
            return real(study, *args)

        tpe._sample = spy  # type: ignore[method-assign]
        sampler = WindowedSampler(tpe)
        sampler._windows[(id(study._storage), study._study_id)] = HistoryWindow(study, recent=12, elite=4)
        study.sampler, study.pruner = sampler, WindowedPruner(optuna.pruners.MedianPruner(n_startup_trials=3))
        trial = study.ask()
        x = trial.suggest_float("x", -10, 10)
        trial.report(1e6, 1)
        assert trial.should_prune()  # far above the window's median at epoch 1
        study.tell(trial, (x - 3) ** 2)
        assert seen == [sorted({*numbers(best_completed(study, 4)), *range(28, 41)})]  # 40: the trial asked


def test_one_study_attribute_is_read_without_the_others(url: str) -> None:
    with history(url, 1) as study:
        study.set_user_attr("budget", 5)
        for night in range(30):
            study.set_user_attr(f"night:{night}", {"trials": list(range(100))})
        assert study_attr(study, "budget") == 5
        assert study_attr(study, "missing", (0, 0)) == (0, 0)
        assert study_attr(study, "night:3") == {"trials": list(range(100))}

"""The overfit-one-batch check: shipped studies pass, planted bugs fail with the right diagnosis."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_study

from searchlab.check import check_study, first_value, highest_lr
from searchlab.cli import main
from searchlab.data import prepare_split
from searchlab.space import Choice, Fixed, Float, Int
from searchlab.study import load_study_file
from searchlab.tasks import get_task

STUDIES = Path(__file__).resolve().parent.parent / "studies"

MULTICLASS = """
import torch
from torch import nn
import searchlab as sl

def data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(90, 4, generator=g)
    return sl.Split(train=(x[:60], x[:60].argmax(1) % 3), val=(x[60:], x[60:].argmax(1) % 3))

def model(trial):
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=1))

study = sl.Study(name="softmax", task="multiclass", data=data, model=model, max_epochs=3, n_trials=2)
"""

PLANTED = {
    "shape mismatch": ("    return nn.Linear(4, 3)", "outputs shape (8, 3) but targets have shape (8,)"),
    "frozen model": (
        "    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))\n    m.requires_grad_(False)\n    return m",
        "no parameter of the model requires grad",
    ),
    "nan": (
        "    class Nan(nn.Module):\n        def forward(self, x):\n            return x * float('nan')\n"
        "    return nn.Sequential(nn.Linear(4, 1), Nan())",
        "the loss became nan at step 1",
    ),
    "detached output": (
        "    class Detached(nn.Module):\n        def __init__(self):\n            super().__init__()\n"
        "            self.linear = nn.Linear(4, 1)\n        def forward(self, x):\n"
        "            return self.linear(x).detach()\n    return Detached()",
        "no gradient reaches the weights",
    ),
    "dead gradient": (
        "    class Dead(nn.Module):\n        def __init__(self):\n            super().__init__()\n"
        "            self.linear = nn.Linear(4, 1)\n        def forward(self, x):\n"
        "            return self.linear(x) * 0.0\n    return Dead()",
        "every gradient is zero",
    ),
}


def check_file(path: Path) -> object:
    study = load_study_file(path)
    train, _ = prepare_split(study.data(0), get_task(study.task))
    return check_study(study, train)


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_shipped_studies_pass(task: str) -> None:
    result = check_file(STUDIES / f"{task}.py")
    assert result.passed, result.summary
    assert result.summary.startswith("check passed: loss ") and "in 500 steps on 8 examples" in result.summary


@pytest.mark.parametrize("bug", PLANTED, ids=list(PLANTED))
def test_planted_bugs_fail_with_their_diagnosis(workdir: Path, bug: str) -> None:
    body, diagnosis = PLANTED[bug]
    result = check_file(write_study(workdir, body=body))
    assert not result.passed and result.summary.startswith("check failed: ")
    assert diagnosis in result.summary


def test_softmax_before_cross_entropy_is_named(workdir: Path) -> None:
    (workdir / "softmax.py").write_text(MULTICLASS)
    result = check_file(workdir / "softmax.py")
    assert not result.passed and "remove the final nn.Softmax" in result.summary


def test_a_learning_rate_far_too_small_never_moves_the_loss(workdir: Path) -> None:
    result = check_file(write_study(workdir, extra="space=sl.default_space(lr=1e-12)"))
    assert not result.passed and "the loss never moves" in result.summary and "lr 1e-12" in result.summary


def test_first_values_and_highest_lr() -> None:
    assert first_value(Fixed(3)) == 3 and first_value(Choice([64, 32])) == 64
    assert first_value(Float(1e-4, 1e-2, log=True)) == pytest.approx(1e-3)
    assert first_value(Float(0.0, 0.5)) == 0.25 and first_value(Int(16, 64)) == 40
    assert highest_lr(Float(1e-4, 1e-1, log=True)) == 1e-1 and highest_lr(Choice([0.1, 0.3])) == 0.3
    assert highest_lr(None) == 1e-3


def test_check_command_exit_codes(workdir: Path) -> None:
    assert CliRunner().invoke(main, ["check", str(STUDIES / "regression.py")]).exit_code == 0
    failing = write_study(workdir, body=PLANTED["detached output"][0])
    result = CliRunner().invoke(main, ["check", str(failing)])
    assert result.exit_code == 1 and "no gradient reaches the weights" in result.output
    assert CliRunner().invoke(main, ["check", "missing.py"]).exit_code == 2


def test_run_refuses_a_model_that_cannot_learn_unless_told(workdir: Path) -> None:
    path = write_study(workdir, body=PLANTED["detached output"][0])
    result = CliRunner().invoke(main, ["run", str(path), "--trials", "1"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "cannot learn one tiny batch" in result.output and "--no-check" in result.output
    assert sorted(p.name for p in workdir.iterdir() if p.name != "__pycache__") == ["tiny_study.py"]
    skipped = CliRunner().invoke(main, ["run", str(path), "--trials", "1", "--no-check"])
    assert skipped.exit_code == 1 and "trial 0 failed" in skipped.output  # it ran, and no trial completed


@pytest.fixture
def check_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The torch threads each check trains on (and torch's setting given back after the test)."""
    import torch

    import searchlab.check

    seen: list[int] = []
    overfit = searchlab.check._overfit

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return overfit(*args, **kwargs)

    monkeypatch.setattr(searchlab.check, "_overfit", recording)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield seen
    torch.set_num_threads(previous)


def test_the_check_trains_on_the_threads_it_is_given_then_gives_torch_its_setting_back(
    check_threads: list[int],
) -> None:
    import torch

    study = load_study_file(STUDIES / "regression.py")
    train, _ = prepare_split(study.data(0), get_task(study.task))
    assert check_study(study, train, threads=1).passed
    assert check_study(study, train).passed
    assert check_threads == [1, 2] and torch.get_num_threads() == 2


def test_a_run_checks_on_one_workers_threads_not_on_all_of_the_cores(workdir: Path, check_threads: list[int]) -> None:
    # All of the cores would contend with the workers' fork server importing meanwhile: a thread pool that waits
    # for a busy core ran the check 17x slower on a 16-core GPU host with 4 workers.
    result = CliRunner().invoke(main, ["run", str(write_study(workdir)), "--trials", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert check_threads == [1]


OWN_DROPOUT = """    p_drop = trial.suggest_float("p_drop", 0.0, 0.5)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(p_drop), nn.Linear(16, 1))"""


def test_a_model_with_its_own_dropout_knob_passes_and_is_swept(workdir: Path) -> None:
    """Whatever the dropout is named, the check memorises with every dropout module off: the default space's
    `dropout` dropped and the builder's own `p_drop` in its place must not fail the check (nor stop `run`)."""
    path = write_study(workdir, body=OWN_DROPOUT, extra="space=sl.default_space(dropout=None)")
    result = check_file(path)
    assert result.passed, result.summary
    swept = CliRunner().invoke(main, ["run", str(path), "--trials", "2"])
    assert swept.exit_code == 0, swept.output
    assert "2 trials this run (2 complete)" in swept.output

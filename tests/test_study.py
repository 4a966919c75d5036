"""searchlab.study (Study checks, space normalisation, load_study_file) and searchlab.trial (Trial over Optuna)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from conftest import one_line_config_error, write_study

from searchlab.errors import ConfigError
from searchlab.space import Choice, Fixed, Float, Int, default_space
from searchlab.study import Study, load_study_file
from searchlab.trial import Trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def data(seed):
    return None


def model(trial):
    return None


def make_study(**changes) -> Study:
    return Study(**{"name": "s", "task": "regression", "data": data, "model": model, **changes})


# --- Study construction ---


def test_study_defaults():
    study = make_study()
    assert (study.max_epochs, study.patience, study.n_trials, study.timeout, study.sampler, study.seed) == (
        100,
        10,
        20,
        None,
        "tpe",
        0,
    )


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_known_tasks_are_accepted(task: str):
    assert make_study(task=task).task == task


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"task": "ranking"}, "unknown task 'ranking'"),
        ({"sampler": "grid"}, "unknown sampler 'grid'"),
        ({"name": ""}, "name"),
        ({"name": "  "}, "name"),
        ({"name": 3}, "name"),
        ({"name": "two\nlines"}, r"Study\(name=...\) must not contain control characters.*'two\\nlines'"),
        ({"name": "tab\there"}, "control characters"),
        ({"name": "bell\x07"}, "control characters"),
        ({"name": "del\x7f"}, "control characters"),
        ({"name": "c1\x85next"}, "control characters"),
        ({"data": "data.csv"}, r"Study\(data=...\) must be a function, got str"),
        ({"model": None}, r"Study\(model=...\) must be a function, got NoneType"),
        ({"space": {"optimizer": "adam"}}, r"Study\(optimizer=...\)"),
        ({"max_epochs": 0}, r"Study\(max_epochs=...\) must be at least 1"),
        ({"patience": -1}, r"Study\(patience=...\) must be at least 1"),
        ({"n_trials": 0}, r"Study\(n_trials=...\) must be at least 1"),
        ({"max_epochs": 2.0}, r"Study\(max_epochs=...\) must be an integer"),
        ({"n_trials": "5"}, r"Study\(n_trials=...\) must be an integer"),
        ({"max_epochs": True}, r"Study\(max_epochs=...\) must be an integer"),
        ({"patience": True}, r"Study\(patience=...\) must be an integer"),
        ({"n_trials": False}, r"Study\(n_trials=...\) must be an integer"),
        ({"timeout": 0}, r"Study\(timeout=...\) must be a positive number"),
        ({"timeout": -1.5}, r"Study\(timeout=...\) must be a positive number"),
        ({"seed": 1.0}, r"Study\(seed=...\) must be an integer"),
        ({"seed": "0"}, r"Study\(seed=...\) must be an integer"),
        ({"seed": True}, r"Study\(seed=...\) must be an integer"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"optimizer": Choice(["adam", "lbfgs"])}, "unknown optimizer 'lbfgs'"),
    ],
)
def test_invalid_study_raises_one_line_config_error(changes: dict, pattern: str):
    with pytest.raises(ConfigError, match=pattern) as info:
        make_study(**changes)
    assert "\n" not in str(info.value)


def test_non_numeric_timeout_raises_config_error():
    with pytest.raises(ConfigError, match="timeout"):
        make_study(timeout="10")


def test_positive_timeout_is_accepted_and_a_negative_seed_refused():
    assert make_study(timeout=0.5).timeout == 0.5
    with pytest.raises(ConfigError, match=r"seed=\.\.\.\) must be 0 or more"):
        make_study(seed=-3)


def test_plain_values_in_the_space_become_fixed():
    study = make_study(space={"lr": 0.01, "width": Int(4, 8), "act": "relu"})
    assert study.space["lr"] == Fixed(0.01)
    assert study.space["act"] == Fixed("relu")
    assert study.space["width"] == Int(4, 8)


def test_fixed_optimizer_is_added_to_the_space():
    study = make_study(space={"lr": Float(1e-3, 1e-1, log=True)}, optimizer="adam")
    assert study.space == {"lr": Float(1e-3, 1e-1, log=True), "optimizer": Fixed("adam"), "init": Fixed("default")}
    assert study.optimizer == "adam"


def test_default_optimizer_is_fixed_sgd():
    assert make_study().space["optimizer"] == Fixed("sgd")


def test_optimizer_choice_is_searched():
    study = make_study(space={"lr": 0.01}, optimizer=Choice(["sgd", "adamw"]))
    assert study.space["optimizer"] == Choice(["sgd", "adamw"])
    assert study.searched == ["optimizer"]


def test_searched_lists_exactly_the_non_fixed_names():
    study = make_study(space=default_space(momentum=0.9, dropout=None, width=Int(8, 32)))
    assert study.searched == ["lr", "weight_decay", "batch_size", "width"]
    assert set(study.space) == {"lr", "momentum", "weight_decay", "batch_size", "width", "optimizer", "init"}


def test_default_space_searches_the_five_defaults():
    assert make_study().searched == ["lr", "momentum", "dropout", "weight_decay", "batch_size"]


def test_caller_space_is_not_mutated():
    space = {"lr": 0.01}
    make_study(space=space)
    assert space == {"lr": 0.01}


def test_study_is_frozen():
    study = make_study()
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.n_trials = 3  # type: ignore[misc]


# --- load_study_file ---


def test_load_study_file_returns_the_study(workdir: Path):
    study = load_study_file(write_study(workdir, name="loaded", extra="seed=7"))
    assert isinstance(study, Study)
    assert (study.name, study.task, study.max_epochs, study.patience, study.n_trials, study.seed) == (
        "loaded",
        "regression",
        6,
        3,
        3,
        7,
    )
    assert study.data(0).train[0].shape == (120, 4)


def test_load_study_file_accepts_a_string_path(workdir: Path):
    write_study(workdir)
    assert load_study_file("tiny_study.py").name == "tiny"


def test_loading_does_not_run_the_main_block(workdir: Path):
    path = workdir / "guarded.py"
    path.write_text(
        "from pathlib import Path\n"
        "import searchlab as sl\n"
        "study = sl.Study(name='g', task='regression', data=lambda seed: None, model=lambda trial: None)\n"
        "if __name__ == '__main__':\n"
        f"    Path({str(workdir / 'marker')!r}).write_text('ran')\n"
    )
    assert load_study_file(path).name == "g"
    assert not (workdir / "marker").exists()


def test_missing_file_raises_config_error(workdir: Path):
    message = one_line_config_error(load_study_file, workdir / "nope.py")
    assert "nope.py" in message and "not found" in message


def test_folder_is_not_a_study_file(workdir: Path):
    assert "not found" in one_line_config_error(load_study_file, workdir)


def test_non_python_file_raises_config_error(workdir: Path):
    path = workdir / "study.txt"
    path.write_text("study = 1\n")
    message = one_line_config_error(load_study_file, path)
    assert "study.txt" in message and ".py" in message


def test_file_without_a_study_raises_config_error(workdir: Path):
    path = workdir / "empty.py"
    path.write_text("x = 1\n")
    message = one_line_config_error(load_study_file, path)
    assert str(path) in message and "declares no study" in message


TWO_STUDIES = (
    "import searchlab as sl\n"
    "{first} = sl.Study(name='one', task='regression', data=lambda seed: None, model=lambda trial: None)\n"
    "{second} = sl.Study(name='two', task='binary', data=lambda seed: None, model=lambda trial: None)\n"
)


def test_two_studies_the_one_named_study_wins(workdir: Path):
    path = workdir / "two.py"
    path.write_text(TWO_STUDIES.format(first="other", second="study"))
    assert load_study_file(path).name == "two"


def test_two_studies_without_one_named_study_raise_naming_them(workdir: Path):
    path = workdir / "two.py"
    path.write_text(TWO_STUDIES.format(first="first", second="second"))
    message = one_line_config_error(load_study_file, path)
    assert "2 studies" in message and "first" in message and "second" in message and "'study'" in message


def test_syntax_error_message_has_file_and_line(workdir: Path):
    path = workdir / "broken.py"
    path.write_text("import searchlab as sl\n\nstudy = sl.Study(name='x',\n")
    message = one_line_config_error(load_study_file, path)
    assert message.startswith(f"{path}:3: syntax error")


def test_import_error_message_names_the_exception(workdir: Path):
    path = workdir / "raises.py"
    path.write_text("import searchlab as sl\nraise RuntimeError('no data here')\n")
    message = one_line_config_error(load_study_file, path)
    assert str(path) in message and "RuntimeError: no data here" in message


def test_missing_module_import_names_the_exception(workdir: Path):
    path = workdir / "imports.py"
    path.write_text("import not_a_real_module_xyz\n")
    assert "ModuleNotFoundError" in one_line_config_error(load_study_file, path)


def test_multi_line_import_error_gives_one_line_message(workdir: Path):
    path = workdir / "raises.py"
    path.write_text("raise RuntimeError('first line\\nsecond line')\n")
    message = one_line_config_error(load_study_file, path)
    assert "first line" in message


def test_study_config_error_is_prefixed_with_the_path(workdir: Path):
    path = write_study(workdir, task="ranking")
    message = one_line_config_error(load_study_file, path)
    assert message == f"{path}: unknown task 'ranking': use one of regression, binary, multiclass"


def test_bad_space_in_study_file_is_prefixed_with_the_path(workdir: Path):
    path = write_study(workdir, extra="space={'lr': -1.0}")
    message = one_line_config_error(load_study_file, path)
    assert message.startswith(f"{path}: lr=-1.0 is out of bounds")


# --- Trial ---


def test_trial_suggestions_go_through_optuna_and_are_recorded():
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optuna_trial = optuna_study.ask()
    trial = Trial(optuna_trial, {"lr": 0.01}, seed=5)
    width = trial.suggest_int("width", 4, 16)
    scale = trial.suggest_float("scale", 1e-3, 1.0, log=True)
    act = trial.suggest_categorical("act", ("relu", "tanh"))
    assert 4 <= width <= 16 and isinstance(width, int)
    assert 1e-3 <= scale <= 1.0
    assert act in ("relu", "tanh")
    assert trial.params == {"lr": 0.01, "width": width, "scale": scale, "act": act}
    assert optuna_trial.params == {"width": width, "scale": scale, "act": act}
    assert isinstance(optuna_trial.distributions["scale"], optuna.distributions.FloatDistribution)
    assert optuna_trial.distributions["scale"].log


def test_trial_exposes_number_and_seed():
    optuna_study = optuna.create_study()
    optuna_study.ask()
    trial = Trial(optuna_study.ask(), {}, seed=11)
    assert trial.number == 1 and trial.seed == 11


def test_trial_repeats_a_value_already_suggested():
    trial = Trial(optuna.create_study().ask(), {}, seed=0)
    assert trial.suggest_int("width", 4, 16) == trial.suggest_int("width", 4, 16)


def test_trial_over_fixed_trial_replays_values():
    fixed = optuna.trial.FixedTrial({"width": 12, "scale": 0.25, "act": "tanh"}, number=4)
    trial = Trial(fixed, {}, seed=2)
    assert trial.suggest_int("width", 4, 16) == 12
    assert trial.suggest_float("scale", 0.1, 1.0) == 0.25
    assert trial.suggest_categorical("act", ["relu", "tanh"]) == "tanh"
    assert trial.params == {"width": 12, "scale": 0.25, "act": "tanh"}
    assert trial.number == 4 and trial.seed == 2

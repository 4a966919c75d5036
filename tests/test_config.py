"""searchlab.config: study file < SEARCHLAB_* environment < flags, parse errors and checks of the merged values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from searchlab.config import RunConfig, resolve_config
from searchlab.errors import ConfigError
from searchlab.settings import ENVIRONMENT
from searchlab.study import Study


def make_study(**changes) -> Study:
    settings = {
        "name": "file-name",
        "task": "regression",
        "data": lambda seed: None,
        "model": lambda trial: None,
        "max_epochs": 7,
        "patience": 3,
        "n_trials": 5,
        "timeout": 60.0,
        "sampler": "tpe",
        "seed": 1,
    }
    return Study(**{**settings, **changes})


# field → (value as written in the environment, parsed value, flag value)
VALUES = {
    "study_name": ("env-name", "env-name", "flag-name"),
    "n_trials": ("11", 11, 13),
    "timeout": ("2.5", 2.5, 9.0),
    "sampler": ("random", "random", "tpe"),
    "pruner": ("median", "median", "hyperband"),
    "seed": ("42", 42, 43),
    "storage": ("env.journal", "env.journal", "flag.journal"),
    "tracking_uri": ("file:///env", "file:///env", "file:///flag"),
    "max_epochs": ("21", 21, 22),
    "workers": ("auto", "auto", "3"),
    "devices": ("cpu", "cpu", "auto"),
    "trials_per_device": ("2", 2, 4),
    "pack": ("4", 4, 8),
    "retries": ("0", 0, 3),
    "heartbeat": ("2", 2, 5),
    "report": ("off", False, True),
    "register": ("no", False, True),
    "threads": ("3", 3, 4),
    "tracking_wait": ("5", 5.0, 7.5),
    "checkpoint_every": ("0", 0.0, 30.0),
}


def test_values_cover_every_environment_field():
    assert set(VALUES) == set(ENVIRONMENT)


def test_study_file_values_apply_without_environment_or_flags(workdir: Path):
    config = resolve_config(make_study(), env={})
    assert config == RunConfig(
        study_name="file-name",
        n_trials=5,
        timeout=60.0,
        sampler="tpe",
        pruner="none",
        seed=1,
        storage=None,
        tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
        max_epochs=7,
        patience=3,
    )


def test_default_tracking_uri_is_mlflow_db_in_the_working_directory(workdir: Path):
    assert resolve_config(make_study(), env={}).tracking_uri == f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@pytest.mark.parametrize("field", list(ENVIRONMENT))
def test_environment_overrides_the_study_file(workdir: Path, field: str):
    variable = ENVIRONMENT[field][0]
    text, parsed, _ = VALUES[field]
    config = resolve_config(make_study(), env={variable: text})
    assert getattr(config, field) == parsed


@pytest.mark.parametrize("field", list(ENVIRONMENT))
def test_flags_override_the_environment(workdir: Path, field: str):
    variable = ENVIRONMENT[field][0]
    text, _, flag = VALUES[field]
    config = resolve_config(make_study(), flags={field: flag}, env={variable: text})
    assert getattr(config, field) == flag


@pytest.mark.parametrize("field", list(ENVIRONMENT))
def test_none_flags_do_not_override(workdir: Path, field: str):
    variable = ENVIRONMENT[field][0]
    text, parsed, _ = VALUES[field]
    config = resolve_config(make_study(), flags={field: None}, env={variable: text})
    assert getattr(config, field) == parsed


def test_none_flags_keep_the_study_file_values(workdir: Path):
    flags = dict.fromkeys([*ENVIRONMENT, "patience"])
    assert resolve_config(make_study(), flags=flags, env={}) == resolve_config(make_study(), env={})


def test_patience_flag_overrides_the_study_file(workdir: Path):
    assert resolve_config(make_study(), flags={"patience": 9}, env={}).patience == 9


def test_blank_environment_values_are_ignored(workdir: Path):
    config = resolve_config(make_study(), env={"SEARCHLAB_TRIALS": "  ", "SEARCHLAB_STUDY_NAME": ""})
    assert config.n_trials == 5 and config.study_name == "file-name"


def test_mlflow_tracking_uri_is_the_fallback(workdir: Path):
    config = resolve_config(make_study(), env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert config.tracking_uri == "http://mlflow:5000"


def test_searchlab_tracking_uri_beats_mlflow_tracking_uri(workdir: Path):
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "SEARCHLAB_TRACKING_URI": "file:///mine"}
    assert resolve_config(make_study(), env=env).tracking_uri == "file:///mine"


def test_tracking_flag_beats_mlflow_tracking_uri(workdir: Path):
    config = resolve_config(
        make_study(), flags={"tracking_uri": "file:///flag"}, env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    )
    assert config.tracking_uri == "file:///flag"


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("SEARCHLAB_TRIALS", "abc"),
        ("SEARCHLAB_TRIALS", "2.5"),
        ("SEARCHLAB_SEED", "x"),
        ("SEARCHLAB_MAX_EPOCHS", "ten"),
        ("SEARCHLAB_TIMEOUT", "-1"),
        ("SEARCHLAB_TIMEOUT", "0"),
        ("SEARCHLAB_TIMEOUT", "soon"),
        ("SEARCHLAB_TIMEOUT", "nan"),
    ],
)
def test_unparsable_environment_value_names_the_variable(workdir: Path, variable: str, text: str):
    with pytest.raises(ConfigError) as info:
        resolve_config(make_study(), env={variable: text})
    message = str(info.value)
    assert variable in message and repr(text) in message
    assert "\n" not in message


def test_timeout_parse_error_says_positive_number(workdir: Path):
    with pytest.raises(ConfigError, match=r"SEARCHLAB_TIMEOUT='-1' must be a positive number"):
        resolve_config(make_study(), env={"SEARCHLAB_TIMEOUT": "-1"})


def test_trials_parse_error_says_integer(workdir: Path):
    with pytest.raises(ConfigError, match=r"SEARCHLAB_TRIALS='abc' must be an integer"):
        resolve_config(make_study(), env={"SEARCHLAB_TRIALS": "abc"})


@pytest.mark.parametrize(
    ("flags", "env", "pattern"),
    [
        ({"n_trials": 0}, {}, "n_trials"),
        ({}, {"SEARCHLAB_TRIALS": "0"}, "n_trials"),
        ({"max_epochs": -3}, {}, "max_epochs"),
        ({"patience": 0}, {}, "patience"),
        ({"sampler": "grid"}, {}, "unknown sampler 'grid'"),
        ({}, {"SEARCHLAB_SAMPLER": "cmaes"}, "unknown sampler 'cmaes'"),
        ({"study_name": "   "}, {}, "study name must not be empty"),
        ({"study_name": "we'ird\n$(id)"}, {}, "study name must not contain control characters"),
        ({}, {"SEARCHLAB_STUDY_NAME": "esc\x1b[31m"}, "study name must not contain control characters"),
        ({"timeout": 0}, {}, "timeout"),
        ({"timeout": -5.0}, {}, "timeout"),
        ({"seed": 1.5}, {}, "seed"),
        ({"n_trials": True}, {}, "n_trials"),
    ],
)
def test_invalid_merged_values_raise_config_error(workdir: Path, flags, env, pattern: str):
    with pytest.raises(ConfigError, match=pattern) as info:
        resolve_config(make_study(), flags=flags, env=env)
    assert "\n" not in str(info.value)


def test_unknown_flag_names_raise_config_error(workdir: Path):
    with pytest.raises(ConfigError, match=r"unknown setting.*trails") as info:
        resolve_config(make_study(), flags={"trails": 3}, env={})
    assert "n_trials" in str(info.value)  # the message lists the valid names


def test_unknown_flag_is_refused_even_when_none(workdir: Path):
    with pytest.raises(ConfigError, match="bogus"):
        resolve_config(make_study(), flags={"bogus": None}, env={})


def test_non_numeric_timeout_flag_raises_config_error(workdir: Path):
    with pytest.raises(ConfigError, match="timeout"):
        resolve_config(make_study(), flags={"timeout": "10"}, env={})


def test_run_config_is_frozen(workdir: Path):
    config = resolve_config(make_study(), env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_trials = 99  # type: ignore[misc]

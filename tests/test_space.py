"""searchlab.space: the default space, its changes, range checks, bounds and sampling through Optuna."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from searchlab.errors import ConfigError
from searchlab.space import DEFAULT_SPACE, Choice, Fixed, Float, Int, default_space, suggest, validate_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(dist, n: int, seed: int = 0, name: str = "lr") -> np.ndarray:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return np.array([suggest(study.ask(), name, dist) for _ in range(n)])


def decade_shares(values: np.ndarray) -> list[float]:
    return [float(np.mean((values >= 10.0**e) & (values < 10.0 ** (e + 1)))) for e in (-4, -3, -2)]


# --- the default space and its changes ---


def test_default_space_is_exactly_the_documented_five_entries():
    assert default_space() == {
        "lr": Float(1e-4, 1e-1, log=True),
        "momentum": Float(0.85, 0.99),
        "dropout": Float(0.0, 0.5),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "batch_size": Choice([32, 64, 128]),
    }
    assert list(default_space()) == ["lr", "momentum", "dropout", "weight_decay", "batch_size"]


def test_default_space_log_flags():
    space = default_space()
    assert space["lr"].log and space["weight_decay"].log
    assert not space["momentum"].log and not space["dropout"].log


def test_default_space_returns_a_fresh_dict():
    space = default_space()
    space["lr"] = Fixed(0.5)
    del space["dropout"]
    assert DEFAULT_SPACE["lr"] == Float(1e-4, 1e-1, log=True)
    assert "dropout" in default_space()


def test_default_space_narrows_and_widens():
    space = default_space(lr=Float(1e-3, 1e-2, log=True), momentum=Float(0.5, 0.999))
    assert space["lr"] == Float(1e-3, 1e-2, log=True)
    assert space["momentum"] == Float(0.5, 0.999)
    assert space["dropout"] == Float(0.0, 0.5)


def test_default_space_plain_value_becomes_fixed():
    space = default_space(momentum=0.9, batch_size=256)
    assert space["momentum"] == Fixed(0.9)
    assert space["batch_size"] == Fixed(256)


def test_default_space_none_drops_an_entry():
    space = default_space(dropout=None, weight_decay=None)
    assert set(space) == {"lr", "momentum", "batch_size"}


def test_default_space_dropping_an_absent_name_is_harmless():
    assert default_space(not_there=None) == default_space()


def test_default_space_adds_new_entries():
    space = default_space(width=Int(16, 256, log=True), act=Choice(["relu", "gelu"]))
    assert space["width"] == Int(16, 256, log=True)
    assert space["act"] == Choice(["relu", "gelu"])
    assert len(space) == 7


# --- range checks ---


@pytest.mark.parametrize(
    "make",
    [
        lambda: Float(0.1, 0.1),
        lambda: Float(0.5, 0.1),
        lambda: Int(10, 3),
        lambda: Float(0.0, 1.0, log=True),
        lambda: Float(-1.0, 1.0, log=True),
        lambda: Int(0, 8, log=True),
        lambda: Float(0.0, math.inf),
        lambda: Float(-math.inf, 1.0),
        lambda: Float(math.nan, 1.0),
        lambda: Choice([]),
        lambda: Choice([32, 64, 32]),
        lambda: Choice(["sgd", "sgd"]),
    ],
    ids=[
        "float-equal",
        "float-inverted",
        "int-inverted",
        "log-from-zero",
        "log-negative",
        "int-log-from-zero",
        "inf-high",
        "inf-low",
        "nan-low",
        "empty-choice",
        "duplicate-ints",
        "duplicate-strings",
    ],
)
def test_invalid_distribution_raises_one_line_config_error(make):
    with pytest.raises(ConfigError) as error:
        make()
    message = str(error.value)
    assert message and "\n" not in message


def test_inverted_range_message_names_the_range():
    with pytest.raises(ConfigError, match=r"\[0\.5, 0\.1\]"):
        Float(0.5, 0.1)


def test_log_range_message_says_above_zero():
    with pytest.raises(ConfigError, match="above 0"):
        Float(0.0, 1.0, log=True)


def test_choice_keeps_order_as_tuple():
    assert Choice([128, 32, 64]).choices == (128, 32, 64)


# --- validate_space bounds ---


def test_validate_space_accepts_default_space_and_wraps_plain_values():
    checked = validate_space({**default_space(), "optimizer": "adam", "width": 64})
    assert checked["optimizer"] == Fixed("adam")
    assert checked["width"] == Fixed(64)
    assert checked["lr"] == Float(1e-4, 1e-1, log=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dropout", 1.0),
        ("dropout", Float(0.0, 1.0)),
        ("dropout", -0.1),
        ("momentum", 1.5),
        ("momentum", Float(0.5, 1.5)),
        ("lr", 0),
        ("lr", -1e-3),
        ("lr", math.nan),
        ("weight_decay", -1e-4),
        ("batch_size", 0),
        ("batch_size", 1.5),
        ("batch_size", Choice([32, 0])),
        ("batch_size", True),
        ("lr", "fast"),
    ],
)
def test_validate_space_rejects_out_of_bounds(name, value):
    with pytest.raises(ConfigError, match=f"^{name}=.* is out of bounds") as error:
        validate_space({name: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"), [("dropout", 0.0), ("momentum", 1.0), ("momentum", 0.0), ("batch_size", 1), ("lr", 1.0)]
)
def test_validate_space_accepts_values_on_closed_bounds(name, value):
    assert validate_space({name: value})[name] == Fixed(value)


@pytest.mark.parametrize("optimizer", ["rmsprop", Choice(["sgd", "lion"]), "SGD"])
def test_validate_space_rejects_unknown_optimizer(optimizer):
    with pytest.raises(ConfigError, match="unknown optimizer"):
        validate_space({"optimizer": optimizer})


def test_validate_space_accepts_choice_of_known_optimizers():
    checked = validate_space({"optimizer": Choice(["sgd", "adam", "adamw"])})
    assert checked["optimizer"] == Choice(["sgd", "adam", "adamw"])


def test_validate_space_rejects_non_identifier_names():
    with pytest.raises(ConfigError, match="parameter name"):
        validate_space({"learning-rate": 0.1})


@pytest.mark.parametrize("name", ["lr", "weight_decay"])
def test_validate_space_rejects_infinite_fixed_value(name):
    with pytest.raises(ConfigError):
        validate_space({name: math.inf})


# --- suggest through Optuna ---


def test_suggest_fixed_returns_value_without_touching_trial():
    assert suggest(None, "momentum", Fixed(0.9)) == 0.9


def test_suggest_samples_within_range_and_from_choices():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(50):
        trial = study.ask()
        assert 0.85 <= suggest(trial, "momentum", Float(0.85, 0.99)) <= 0.99
        width = suggest(trial, "width", Int(16, 256, log=True))
        assert isinstance(width, int) and 16 <= width <= 256
        assert suggest(trial, "batch_size", Choice([32, 64, 128])) in (32, 64, 128)


def test_log_float_gives_each_decade_a_fair_share():
    values = sample(Float(1e-4, 1e-1, log=True), 3000, seed=0)
    assert values.min() >= 1e-4 and values.max() <= 1e-1
    for share in decade_shares(values):
        assert abs(share - 1 / 3) < 0.05


def test_linear_float_starves_the_lowest_decade():
    shares = decade_shares(sample(Float(1e-4, 1e-1), 3000, seed=0))
    assert shares[0] < 0.02
    assert shares[2] > 0.85


def test_random_sampler_same_seed_reproduces_sequence():
    dist = Float(1e-4, 1e-1, log=True)
    first = sample(dist, 30, seed=7)
    assert np.array_equal(first, sample(dist, 30, seed=7))
    assert not np.array_equal(first, sample(dist, 30, seed=8))

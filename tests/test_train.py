"""searchlab.train: EarlyStopping, evaluate, and fit with early stopping, weight restoring and the NaN guard."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from searchlab.data import TensorPair, make_batches
from searchlab.tasks import get_task
from searchlab.train import EarlyStopping, FitResult, evaluate, fit

CPU = torch.device("cpu")
REGRESSION = get_task("regression")


def batches(inputs, targets, batch_size=16, shuffle=False, seed=0):
    return make_batches(TensorPair(inputs, targets), batch_size, shuffle=shuffle, seed=seed, device=CPU)


def linear_problem(n=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 1, generator=gen)
    x = torch.randn(n, 5, generator=gen)
    y = (x @ w).squeeze(1) + 0.05 * torch.randn(n, generator=gen)
    return x, y


class Recorder(nn.Module):
    """A linear model that records grad mode and training mode at each forward."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 1)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), self.training))
        return self.linear(x)


class Switchable(nn.Module):
    """A linear model whose outputs become non-finite once ``broken`` is set (in training, or in eval only)."""

    def __init__(self, value=math.inf, eval_only=False):
        super().__init__()
        self.linear = nn.Linear(5, 1)
        self.value, self.eval_only, self.broken = value, eval_only, False

    def forward(self, x):
        out = self.linear(x)
        if self.broken and (not self.eval_only or not self.training):
            out = out + self.value
        return out


# --- EarlyStopping ---


def test_early_stopping_starts_empty():
    stopper = EarlyStopping(3)
    assert stopper.best == math.inf
    assert stopper.best_epoch is None
    assert not stopper.should_stop


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(2)
    assert stopper.update(1.0, 1) is True
    assert stopper.update(1.0, 2) is False  # equal is not an improvement
    assert stopper.bad_epochs == 1 and not stopper.should_stop
    assert stopper.update(0.5, 3) is True
    assert stopper.bad_epochs == 0 and stopper.best_epoch == 3
    assert stopper.update(0.6, 4) is False
    assert not stopper.should_stop
    assert stopper.update(0.7, 5) is False
    assert stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.5, 3)


def test_early_stopping_patience_one_stops_after_first_bad_epoch():
    stopper = EarlyStopping(1)
    stopper.update(2.0, 1)
    assert not stopper.should_stop
    stopper.update(3.0, 2)
    assert stopper.should_stop


# --- evaluate ---


def test_evaluate_runs_in_eval_mode_under_no_grad_and_restores_train_mode():
    torch.manual_seed(0)
    model = Recorder()
    x, y = linear_problem(40)
    model.train()
    evaluate(model, batches(x, y, batch_size=16), REGRESSION, REGRESSION.loss_fn())
    assert model.calls == [(False, False)] * 3
    assert model.training
    assert torch.is_grad_enabled()


def test_evaluate_restores_train_mode_even_when_forward_fails():
    model = Recorder()
    with pytest.raises(RuntimeError):
        evaluate(model, batches(torch.zeros(4, 3), torch.zeros(4)), REGRESSION, REGRESSION.loss_fn())
    assert model.training


def test_evaluate_loss_and_metrics_cover_the_whole_set_with_partial_batch():
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    x, y = linear_problem(10)
    values = evaluate(model, batches(x, y, batch_size=4), REGRESSION, REGRESSION.loss_fn())
    with torch.no_grad():
        mse = float(((model(x).squeeze(1) - y) ** 2).mean())
    assert values["val_loss"] == pytest.approx(mse, rel=1e-5)
    assert values["val_mse"] == pytest.approx(mse, rel=1e-5)
    assert set(values) == {"val_loss", "val_mse", "val_mae", "val_r2"}


# --- fit ---


def test_fit_reduces_validation_loss_on_linear_regression():
    torch.manual_seed(0)
    x, y = linear_problem(256)
    model = nn.Linear(5, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    result = fit(
        model,
        optimizer,
        batches(x[:192], y[:192], shuffle=True),
        batches(x[192:], y[192:]),
        REGRESSION,
        max_epochs=15,
        patience=15,
    )
    assert isinstance(result, FitResult)
    assert result.stop_reason == "reached max_epochs=15"
    assert result.epochs == len(result.history) == 15
    assert result.history[-1]["val_loss"] < 0.05 * result.history[0]["val_loss"]
    assert result.best_val_loss == min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == result.best_val_loss
    assert result.history[-1]["val_r2"] > 0.99


def overfit_noise():
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = torch.randn(64, 5, generator=gen), torch.randn(64, generator=gen)
    x_val, y_val = torch.randn(64, 5, generator=gen), torch.randn(64, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return model, optimizer, batches(x_train, y_train, shuffle=True), batches(x_val, y_val)


def test_fit_stops_early_when_validation_loss_rises():
    model, optimizer, train, val = overfit_noise()
    result = fit(model, optimizer, train, val, REGRESSION, max_epochs=200, patience=4)
    assert result.epochs < 200
    assert len(result.history) == result.epochs == result.best_epoch + 4
    assert result.stop_reason == f"early stopping: no improvement for 4 epochs after epoch {result.best_epoch}"
    assert all(h["val_loss"] >= result.best_val_loss for h in result.history[result.best_epoch :])


def test_fit_restores_weights_of_the_best_epoch():
    model, optimizer, train, val = overfit_noise()
    result = fit(model, optimizer, train, val, REGRESSION, max_epochs=200, patience=4)
    assert result.history[-1]["val_loss"] > result.best_val_loss  # the last epoch was worse
    again = evaluate(model, val, REGRESSION, REGRESSION.loss_fn())
    assert again["val_loss"] == pytest.approx(result.best_val_loss, rel=1e-5, abs=1e-7)


def test_fit_stops_on_exploding_sgd_without_nan_in_history():
    torch.manual_seed(0)
    x, y = linear_problem(128)
    model = nn.Linear(5, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e10)
    result = fit(model, optimizer, batches(x, y), batches(x, y), REGRESSION, max_epochs=20, patience=20)
    assert "non-finite" in result.stop_reason
    assert result.stop_reason.endswith(f"at epoch {result.epochs}")
    assert result.epochs == len(result.history) + 1 < 20
    assert all(math.isfinite(v) for h in result.history for v in h.values())


def test_fit_non_finite_training_loss_stops_at_that_epoch_and_restores_best():
    torch.manual_seed(0)
    x, y = linear_problem(64)
    model = Switchable()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def break_after_two(epoch, values):
        if epoch == 2:
            model.broken = True

    result = fit(
        model, optimizer, batches(x, y), batches(x, y), REGRESSION, max_epochs=10, patience=10, on_epoch=break_after_two
    )
    assert result.stop_reason.startswith("non-finite training loss (")
    assert result.stop_reason.endswith(") at epoch 3")
    assert result.epochs == 3 and len(result.history) == 2
    assert result.best_epoch == 2
    model.broken = False
    again = evaluate(model, batches(x, y), REGRESSION, REGRESSION.loss_fn())
    assert again["val_loss"] == pytest.approx(result.best_val_loss, rel=1e-5)


def test_fit_non_finite_validation_loss_stops_at_that_epoch():
    torch.manual_seed(0)
    x, y = linear_problem(64)
    model = Switchable(value=math.nan, eval_only=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def break_after_one(epoch, values):
        model.broken = True

    result = fit(
        model, optimizer, batches(x, y), batches(x, y), REGRESSION, max_epochs=10, patience=10, on_epoch=break_after_one
    )
    assert result.stop_reason == "non-finite validation loss (nan) at epoch 2"
    assert result.epochs == 2
    assert len(result.history) == 1 and result.best_epoch == 1


def test_fit_non_finite_first_epoch_has_no_best_epoch():
    torch.manual_seed(0)
    x, y = linear_problem(32)
    model = Switchable()
    model.broken = True
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    result = fit(model, optimizer, batches(x, y), batches(x, y), REGRESSION, max_epochs=5, patience=5)
    assert result.best_epoch is None
    assert result.history == []
    assert "non-finite" in result.stop_reason and "epoch 1" in result.stop_reason


def test_fit_calls_on_epoch_once_per_finite_epoch_with_values():
    torch.manual_seed(0)
    x, y = linear_problem(64)
    model = nn.Linear(5, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: list[tuple[int, dict[str, float]]] = []
    result = fit(
        model,
        optimizer,
        batches(x[:48], y[:48]),
        batches(x[48:], y[48:]),
        REGRESSION,
        max_epochs=4,
        patience=10,
        on_epoch=lambda epoch, values: seen.append((epoch, dict(values))),
    )
    assert [epoch for epoch, _ in seen] == [1, 2, 3, 4]
    for (_, values), recorded in zip(seen, result.history, strict=True):
        assert values == recorded
        assert {"train_loss", "val_loss", "val_mse", "val_mae", "val_r2"} <= set(values)


def test_fit_callback_exception_propagates():
    torch.manual_seed(0)
    x, y = linear_problem(32)
    model = nn.Linear(5, 1)

    class Pruned(Exception):
        pass

    def prune(epoch, values):
        raise Pruned

    with pytest.raises(Pruned):
        fit(
            model,
            torch.optim.SGD(model.parameters(), lr=0.01),
            batches(x, y),
            batches(x, y),
            REGRESSION,
            max_epochs=3,
            patience=3,
            on_epoch=prune,
        )


def test_fit_multiclass_reports_accuracy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 2, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # classes 0, 1, 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    task = get_task("multiclass")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    result = fit(model, optimizer, batches(x, y, shuffle=True), batches(x, y), task, max_epochs=15, patience=15)
    assert result.history[-1]["val_accuracy"] > 0.85


def test_train_trial_evaluates_in_large_batches_whatever_the_training_batch_size():
    import optuna

    import searchlab as sl
    from searchlab.model import sample_params
    from searchlab.train import train_trial
    from searchlab.trial import Trial

    seen: dict[bool, set[int]] = {True: set(), False: set()}  # training mode -> batch lengths

    class Recording(nn.Linear):
        def forward(self, inputs):
            seen[self.training].add(len(inputs))
            return super().forward(inputs)

    x = torch.randn(1_000, 3)
    study = sl.Study(
        name="eval-batches",
        task="regression",
        data=lambda seed: sl.Split(train=(x[:600], x[:600, 0]), val=(x[600:], x[600:, 0])),
        model=lambda trial: Recording(3, 1),
        space={"lr": sl.Fixed(0.01), "batch_size": sl.Fixed(32)},
    )
    fixed = optuna.trial.FixedTrial({})
    train_data, val_data = TensorPair(x[:600], x[:600, 0]), TensorPair(x[600:], x[600:, 0])
    train_trial(
        study, Trial(fixed, sample_params(study.space, fixed), 0), train_data, val_data, CPU, max_epochs=2, patience=2
    )
    assert seen[True] == {32, 600 % 32}
    assert seen[False] == {400}  # the whole validation set at once

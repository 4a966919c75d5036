"""searchlab.tasks: losses, head and output checks, target alignment and preparation, metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from searchlab.errors import ConfigError
from searchlab.tasks import ModelError, get_task

REGRESSION, BINARY, MULTICLASS = get_task("regression"), get_task("binary"), get_task("multiclass")


@pytest.mark.parametrize(
    ("name", "loss_class"),
    [("regression", nn.MSELoss), ("binary", nn.BCEWithLogitsLoss), ("multiclass", nn.CrossEntropyLoss)],
)
def test_get_task_gives_loss_on_raw_outputs(name, loss_class):
    task = get_task(name)
    assert task.name == name
    assert type(task.loss_fn()) is loss_class
    assert task.loss_name == loss_class.__name__


def test_get_task_unknown_name_raises_config_error():
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        get_task("ranking")


def test_model_error_is_a_config_error():
    assert issubclass(ModelError, ConfigError)


# --- check_head ---


@pytest.mark.parametrize(
    ("head", "task"),
    [(nn.Softmax(dim=1), MULTICLASS), (nn.LogSoftmax(dim=1), MULTICLASS), (nn.Sigmoid(), BINARY)],
)
def test_check_head_refuses_squashing_last_layer(head, task):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), head)
    name = type(head).__name__
    with pytest.raises(ModelError) as error:
        task.check_head(model)
    message = str(error.value)
    assert f"nn.{name}" in message
    assert f"remove the final nn.{name}" in message
    assert task.loss_name in message


def test_check_head_refuses_squashing_layer_in_nested_sequential():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 3), nn.Softmax(1)))
    with pytest.raises(ModelError, match=r"nn\.Softmax"):
        MULTICLASS.check_head(model)


@pytest.mark.parametrize("task", [REGRESSION, BINARY, MULTICLASS])
def test_check_head_accepts_linear_last_layer(task):
    task.check_head(nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 3)))


def test_check_head_accepts_nested_sequential_ending_in_linear():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.Softmax(1)), nn.Sequential(nn.ReLU(), nn.Linear(8, 3)))
    MULTICLASS.check_head(model)


# --- check_outputs ---


def test_check_outputs_catches_softmaxed_rows():
    probabilities = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)).softmax(dim=1)
    with pytest.raises(ModelError, match="remove the softmax"):
        MULTICLASS.check_outputs(probabilities)


def test_check_outputs_accepts_raw_logits():
    MULTICLASS.check_outputs(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))


def test_check_outputs_accepts_nonnegative_logits_not_summing_to_one():
    MULTICLASS.check_outputs(torch.rand(8, 4, generator=torch.Generator().manual_seed(0)) + 0.5)


def test_check_outputs_only_applies_to_multiclass():
    probabilities = torch.full((8, 2), 0.5)
    BINARY.check_outputs(probabilities)
    REGRESSION.check_outputs(probabilities)


# --- align ---


@pytest.mark.parametrize("task", [REGRESSION, BINARY])
def test_align_flat_targets_against_single_output_column(task):
    aligned = task.align(torch.zeros(5, 1), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]))
    assert aligned.shape == (5, 1)
    assert aligned.flatten().tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]


def test_align_keeps_matching_shapes():
    targets = torch.randn(5, 3)
    assert REGRESSION.align(torch.zeros(5, 3), targets) is targets


def test_align_refuses_silent_broadcast_of_flat_targets_against_many_outputs():
    outputs, targets = torch.zeros(3, 3), torch.arange(3.0)  # (3, 3) - (3,) broadcasts silently in MSELoss
    with pytest.raises(ModelError, match=r"outputs shape \(3, 3\) but targets have shape \(3,\)"):
        REGRESSION.align(outputs, targets)


def test_align_avoids_n_by_n_broadcast_in_the_loss():
    outputs, targets = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 5.0])
    loss = REGRESSION.loss_fn()(outputs, REGRESSION.align(outputs, targets))
    assert float(loss) == pytest.approx(4.0 / 3.0)  # pairwise errors 0, 0, 2; an (3, 3) broadcast would differ


@pytest.mark.parametrize(
    ("task", "outputs", "targets"),
    [
        (REGRESSION, torch.zeros(6, 1), torch.zeros(6, 2)),
        (REGRESSION, torch.zeros(6), torch.zeros(6, 1)),
        (BINARY, torch.zeros(6, 2), torch.zeros(6)),
        (REGRESSION, torch.zeros(6, 1), torch.zeros(5)),
    ],
)
def test_align_mismatched_shapes_raise_model_error(task, outputs, targets):
    with pytest.raises(ModelError, match="end the model with"):
        task.align(outputs, targets)


def test_align_casts_integer_labels_to_output_dtype():
    aligned = BINARY.align(torch.zeros(3, 1), torch.tensor([0, 1, 1]))
    assert aligned.dtype == torch.float32
    assert aligned.shape == (3, 1)


@pytest.mark.parametrize("outputs", [torch.zeros(4, 1), torch.zeros(4), torch.zeros(4, 3, 2)])
def test_align_multiclass_refuses_outputs_without_a_logit_per_class(outputs):
    with pytest.raises(ModelError, match=r"nn\.Linear\(width, n_classes\)"):
        MULTICLASS.align(outputs, torch.zeros(4, dtype=torch.long))


def test_align_multiclass_casts_float_class_indices_to_long():
    aligned = MULTICLASS.align(torch.zeros(3, 4), torch.tensor([0.0, 3.0, 2.0]))
    assert aligned.dtype == torch.long
    assert aligned.tolist() == [0, 3, 2]


def test_align_multiclass_squeezes_column_targets():
    aligned = MULTICLASS.align(torch.zeros(3, 4), torch.tensor([[1], [0], [3]]))
    assert aligned.shape == (3,)
    assert aligned.tolist() == [1, 0, 3]


def test_align_multiclass_refuses_one_hot_targets():
    with pytest.raises(ModelError, match="one class index per example"):
        MULTICLASS.align(torch.zeros(3, 4), torch.eye(4)[:3].long())


def test_align_multiclass_int32_targets_work_with_the_loss():
    outputs = torch.randn(3, 4)
    targets = MULTICLASS.align(outputs, torch.tensor([0, 3, 2], dtype=torch.int32))
    MULTICLASS.loss_fn()(outputs, targets)


# --- prepare_targets ---


@pytest.mark.parametrize("targets", [torch.tensor([0.0, 2.0, 1.0]), torch.tensor([0.0, 0.5, 1.0])])
def test_prepare_targets_binary_rejects_values_other_than_zero_or_one(targets):
    with pytest.raises(ConfigError, match="binary targets must be 0 or 1"):
        BINARY.prepare_targets(targets)


def test_prepare_targets_binary_converts_integer_labels_to_float():
    prepared = BINARY.prepare_targets(torch.tensor([0, 1, 1, 0]))
    assert prepared.dtype == torch.float32
    assert prepared.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_prepare_targets_regression_converts_to_float32():
    prepared = REGRESSION.prepare_targets(torch.tensor([1.5, -2.0], dtype=torch.float64))
    assert prepared.dtype == torch.float32


def test_prepare_targets_multiclass_rejects_fractions():
    with pytest.raises(ConfigError, match="not fractions"):
        MULTICLASS.prepare_targets(torch.tensor([0.0, 1.5, 2.0]))


def test_prepare_targets_multiclass_rejects_negative_indices():
    with pytest.raises(ConfigError, match="class indices"):
        MULTICLASS.prepare_targets(torch.tensor([0, -1, 2]))


def test_prepare_targets_multiclass_casts_whole_floats_to_long():
    prepared = MULTICLASS.prepare_targets(torch.tensor([0.0, 2.0, 1.0]))
    assert prepared.dtype == torch.long
    assert prepared.tolist() == [0, 2, 1]


def test_prepare_targets_multiclass_squeezes_column():
    prepared = MULTICLASS.prepare_targets(torch.tensor([[2], [0], [1]]))
    assert prepared.shape == (3,)
    assert prepared.tolist() == [2, 0, 1]


def test_prepare_targets_multiclass_rejects_two_dimensional_targets():
    with pytest.raises(ConfigError, match="1-D tensor"):
        MULTICLASS.prepare_targets(torch.zeros(3, 4, dtype=torch.long))


def test_prepare_targets_multiclass_int32_becomes_long():
    assert MULTICLASS.prepare_targets(torch.tensor([0, 2, 1], dtype=torch.int32)).dtype == torch.long


# --- metrics ---


@pytest.mark.parametrize(
    ("task", "names"),
    [(REGRESSION, {"mse", "mae", "r2"}), (BINARY, {"accuracy", "auroc", "f1"}), (MULTICLASS, {"accuracy", "f1"})],
)
def test_metric_names_per_task(task, names):
    assert set(task.metrics(3).keys()) == names


def _accumulated(task, outputs, targets, n_outputs, split):
    metrics = task.metrics(n_outputs)
    for out, tgt in ((outputs[:split], targets[:split]), (outputs[split:], targets[split:])):
        metrics.update(*task.metric_inputs(out, task.align(out, tgt)))
    return {name: float(value) for name, value in metrics.compute().items()}


def _whole(task, outputs, targets, n_outputs):
    metrics = task.metrics(n_outputs)
    metrics.update(*task.metric_inputs(outputs, task.align(outputs, targets)))
    return {name: float(value) for name, value in metrics.compute().items()}


def test_regression_metrics_accumulate_over_batches():
    gen = torch.Generator().manual_seed(0)
    outputs, targets = torch.randn(20, 1, generator=gen), torch.randn(20, generator=gen)
    values = _accumulated(REGRESSION, outputs, targets, 1, split=7)
    errors = outputs.flatten() - targets
    assert values["mse"] == pytest.approx(float((errors**2).mean()), rel=1e-5)
    assert values["mae"] == pytest.approx(float(errors.abs().mean()), rel=1e-5)
    r2 = 1 - float((errors**2).sum()) / float(((targets - targets.mean()) ** 2).sum())
    assert values["r2"] == pytest.approx(r2, rel=1e-4)


def test_mse_of_two_batches_differs_from_mean_of_batch_mses_when_sizes_differ():
    outputs, targets = torch.zeros(4, 1), torch.tensor([0.0, 0.0, 0.0, 4.0])
    values = _accumulated(REGRESSION, outputs, targets, 1, split=3)
    assert values["mse"] == pytest.approx(4.0)  # the mean of per-batch MSEs would be 8.0


def test_binary_metrics_accumulate_over_batches():
    gen = torch.Generator().manual_seed(1)
    outputs, targets = torch.randn(30, 1, generator=gen), torch.randint(0, 2, (30,), generator=gen).float()
    assert _accumulated(BINARY, outputs, targets, 1, split=11) == pytest.approx(_whole(BINARY, outputs, targets, 1))
    accuracy = float(((outputs.flatten() > 0).float() == targets).float().mean())
    assert _whole(BINARY, outputs, targets, 1)["accuracy"] == pytest.approx(accuracy)


def test_multiclass_metrics_accumulate_over_batches():
    gen = torch.Generator().manual_seed(2)
    outputs, targets = torch.randn(30, 4, generator=gen), torch.randint(0, 4, (30,), generator=gen)
    values = _accumulated(MULTICLASS, outputs, targets, 4, split=13)
    assert values == pytest.approx(_whole(MULTICLASS, outputs, targets, 4))
    assert values["accuracy"] == pytest.approx(float((outputs.argmax(1) == targets).float().mean()))

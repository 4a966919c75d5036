"""searchlab.pack: K trials trained as one vectorised model give each member the curve it gets trained alone.

Tolerance: the packed arithmetic (batched matmuls, reductions over a stacked dimension) rounds differently from
the unpacked one, so curves agree to a relative 1e-5 over the epochs here, not bit for bit.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from searchlab.data import TensorPair, make_batches
from searchlab.model import build_optimizer
from searchlab.pack import Member, Pack, check_packable, fit_pack, signature
from searchlab.pack_chain import chain_of
from searchlab.pack_optim import PackError
from searchlab.tasks import get_task
from searchlab.train import FitResult, evaluate, fit

CPU = torch.device("cpu")
REGRESSION = get_task("regression")
RELATIVE = 1e-5
PARAMS = [
    {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    {"lr": 0.003, "momentum": 0.95, "weight_decay": 0.0},
    {"lr": 0.02, "momentum": 0.85, "weight_decay": 1e-3},
    {"lr": 0.001, "momentum": 0.99, "weight_decay": 1e-2},
]


def split(n: int = 600) -> tuple[TensorPair, TensorPair]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x[:, :3].sum(1) + 0.1 * torch.randn(n, generator=g)
    cut = n * 4 // 5
    return TensorPair(x[:cut], y[:cut]), TensorPair(x[cut:], y[cut:])


class Custom(nn.Module):
    """Not a chain of layers: the pack runs it through vmap."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.first, self.drop, self.second = nn.Linear(8, 32), nn.Dropout(dropout), nn.Linear(32, 1)

    def forward(self, x):
        return self.second(self.drop(torch.relu(self.first(x))) + 0.5)


KINDS = ("chain", "nested", "vmap")


def net(seed: int, dropout: float = 0.0, kind: str = "chain") -> nn.Module:
    torch.manual_seed(seed)
    if kind == "vmap":
        return Custom(dropout)
    if kind == "nested":
        inner = nn.Sequential(nn.LayerNorm(32), nn.GELU(), nn.Dropout(dropout))
        return nn.Sequential(nn.Flatten(), nn.Linear(8, 32), inner, nn.Linear(32, 1, bias=False))
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )


def batches(data: TensorPair, *, train: bool, size: int = 32):
    return make_batches(data, size if train else len(data), shuffle=train, seed=7, device=CPU)


def alone(params: dict, seed: int, *, epochs: int = 4, optimizer: str = "sgd", kind: str = "chain") -> FitResult:
    train, val = split()
    model = net(seed, kind=kind)
    opt = build_optimizer(model, {**params, "optimizer": optimizer})
    return fit(
        model,
        opt,
        batches(train, train=True),
        batches(val, train=False),
        REGRESSION,
        max_epochs=epochs,
        patience=epochs,
    )


def packed(
    members_params: list[dict],
    seeds: list[int],
    *,
    epochs: int = 4,
    optimizer: str = "sgd",
    kind: str = "chain",
    **more,
):
    """Train one pack; returns each member's outcome (FitResult or exception) and its model."""
    train, val = split()
    outcomes: dict[int, object] = {}
    dropouts = more.get("dropouts", [0.0] * len(seeds))
    models = [net(seed, dropouts[i], kind) for i, seed in enumerate(seeds)]
    on_epochs = more.get("on_epochs", [None] * len(seeds))
    members = [
        Member(
            model,
            build_optimizer(model, {**params, "optimizer": optimizer}),
            on_epoch=on_epochs[index],
            on_end=lambda outcome, index=index: outcomes.__setitem__(index, outcome),
        )
        for index, (model, params) in enumerate(zip(models, members_params, strict=True))
    ]
    fit_pack(
        members, batches(train, train=True), batches(val, train=False), REGRESSION, max_epochs=epochs, patience=epochs
    )
    return outcomes, models


def same_curves(expected: FitResult, got: FitResult) -> None:
    assert len(got.history) == len(expected.history)
    for want, have in zip(expected.history, got.history, strict=True):
        assert set(have) == set(want)
        for key, value in want.items():
            # r2 = 1 - mse / variance: near 0 its relative error is many times the mse's; compared absolutely
            tolerance = {"abs": 1e-5} if key == "val_r2" else {"rel": RELATIVE, "abs": 1e-7}
            assert have[key] == pytest.approx(value, **tolerance), key
    assert got.best_epoch == expected.best_epoch
    assert got.stop_reason == expected.stop_reason


class Residual(nn.Sequential):
    """A Sequential with a forward of its own: not a plain chain."""

    def forward(self, x):
        return super().forward(x) + x


def test_chains_of_layers_run_batched_and_other_models_through_vmap():
    assert [name for name, _ in chain_of(net(0, kind="nested"))] == ["0", "1", "2.0", "2.1", "2.2", "3"]
    assert chain_of(net(0, kind="vmap")) is None
    assert chain_of(nn.Sequential(nn.Linear(8, 4), nn.Conv1d(1, 1, 1))) is None
    assert chain_of(Residual(nn.Linear(8, 8))) is None
    assert chain_of(nn.Sequential(Residual(nn.Linear(8, 8)))) is None
    hooked = net(0)
    hooked[1].register_forward_hook(lambda module, inputs, output: output * 2)
    assert chain_of(hooked) is None


def test_a_subclassed_sequential_trains_as_its_own_forward_says():
    def residual(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(Residual(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 1))

    train, val = split()
    expected = []
    for seed, params in enumerate(PARAMS[:2]):
        model = residual(seed)
        opt = build_optimizer(model, params)
        expected.append(
            fit(model, opt, batches(train, train=True), batches(val, train=False), REGRESSION, max_epochs=3, patience=3)
        )
    outcomes: dict[int, object] = {}
    members = []
    for seed, params in enumerate(PARAMS[:2]):
        model = residual(seed)
        end = lambda outcome, seed=seed: outcomes.__setitem__(seed, outcome)  # noqa: E731
        members.append(Member(model, build_optimizer(model, params), on_end=end))
    fit_pack(members, batches(train, train=True), batches(val, train=False), REGRESSION, max_epochs=3, patience=3)
    for seed in (0, 1):
        same_curves(expected[seed], outcomes[seed])


class Scaled(nn.Module):
    """A module whose forward reads a plain attribute a builder may set per trial."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.layer, self.scale = nn.Linear(8, 1), scale

    def forward(self, x):
        return self.layer(x) * self.scale


@pytest.mark.parametrize("kind", KINDS)
def test_a_pack_of_one_gives_the_unpacked_curve(kind):
    outcomes, _ = packed(PARAMS[:1], [0], kind=kind)
    same_curves(alone(PARAMS[0], 0, kind=kind), outcomes[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_each_member_of_a_pack_gives_the_curve_it_gets_trained_alone(optimizer, kind):
    params = PARAMS if optimizer == "sgd" else [{**p, "lr": p["lr"] / 10} for p in PARAMS]
    outcomes, _ = packed(params, [0, 1, 2, 3], optimizer=optimizer, kind=kind)
    for index, member_params in enumerate(params):
        same_curves(alone(member_params, index, optimizer=optimizer, kind=kind), outcomes[index])


def test_a_pruned_member_leaves_the_pack_and_the_others_go_on_unchanged():
    def prune_at_two(epoch, values):
        if epoch == 2:
            raise optuna.TrialPruned("pruned at epoch 2")

    outcomes, _ = packed(PARAMS[:3], [0, 1, 2], on_epochs=[None, prune_at_two, None])
    assert isinstance(outcomes[1], optuna.TrialPruned)
    for index in (0, 2):
        same_curves(alone(PARAMS[index], index), outcomes[index])


def test_a_diverging_member_stops_on_its_own_and_reports_no_nan():
    exploding = {"lr": 1e6, "momentum": 0.9, "weight_decay": 0.0}
    outcomes, _ = packed([PARAMS[0], exploding], [0, 1], epochs=6)
    stopped = outcomes[1]
    assert isinstance(stopped, FitResult)
    assert stopped.stop_reason.startswith("non-finite")
    assert all(math.isfinite(value) for epoch in stopped.history for value in epoch.values())
    same_curves(alone(PARAMS[0], 0, epochs=6), outcomes[0])


def test_each_member_gets_its_best_epochs_weights_back():
    noisy = {"lr": 0.3, "momentum": 0.9, "weight_decay": 0.0}  # its validation loss goes up and down
    outcomes, models = packed([PARAMS[0], noisy], [0, 1], epochs=8)
    _, val = split()
    for index, model in enumerate(models):
        result = outcomes[index]
        assert isinstance(result, FitResult) and result.best_epoch is not None
        reevaluated = evaluate(model, batches(val, train=False), REGRESSION, REGRESSION.loss_fn())["val_loss"]
        assert reevaluated == pytest.approx(result.best_val_loss, rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_members_drop_at_their_own_rate_with_their_own_masks(kind):
    same = [PARAMS[0], PARAMS[0], PARAMS[0]]
    outcomes, _ = packed(same, [0, 0, 0], dropouts=[0.0, 0.5, 0.5], kind=kind)
    curves = [[epoch["train_loss"] for epoch in outcomes[i].history] for i in range(3)]
    same_curves(alone(PARAMS[0], 0, kind=kind), outcomes[0])  # dropout 0 is the unpacked loop, whatever the others drop
    assert curves[1] != curves[0], "dropout 0.5 must change the training curve"
    assert curves[1] != curves[2], "two members with one rate still draw their own masks"


def test_a_norm_layer_with_running_statistics_is_refused_naming_it():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 1))
    with pytest.raises(PackError, match=r"BatchNorm1d at '1' updates running statistics.*GroupNorm.*--pack 1"):
        check_packable(model)
    check_packable(nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 1)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (nn.Linear(8, 1), nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 1))),
        (Scaled(1.0), Scaled(2.0)),  # same weights, but a forward that reads another value
    ],
)
def test_members_built_differently_cannot_share_a_pack(a, b):
    assert signature(a) != signature(b)
    members = [Member(m, build_optimizer(m, PARAMS[0])) for m in (a, b)]
    with pytest.raises(PackError, match="built differently"):
        Pack(members, REGRESSION)


def test_members_that_differ_only_in_their_dropout_rate_share_a_pack():
    assert signature(net(0, 0.1)) == signature(net(1, 0.4))


def test_frozen_weights_stay_as_they_were():
    models = [net(seed) for seed in (0, 1)]
    for model in models:
        model[0].weight.requires_grad_(False)
    before = [(model[0].weight.detach().clone(), model[3].weight.detach().clone()) for model in models]
    train, val = split()
    members = [Member(m, build_optimizer(m, PARAMS[0])) for m in models]
    fit_pack(members, batches(train, train=True), batches(val, train=False), REGRESSION, max_epochs=2, patience=2)
    for model, (frozen, learning) in zip(models, before, strict=True):
        assert torch.equal(model[0].weight, frozen)
        assert not torch.equal(model[3].weight, learning)

"""searchlab.pack_optim: one vectorised step is torch.optim's step for each member of a pack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from searchlab.model import build_optimizer
from searchlab.pack_optim import Hyper, PackError, VectorisedOptimizer

PARAMS = [
    {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    {"lr": 0.003, "momentum": 0.95, "weight_decay": 0.0},
    {"lr": 1e-4, "momentum": 0.85, "weight_decay": 1e-3},  # lr x weight decay ~1e-7: float32 rounding shows
]


def models(n: int) -> list[nn.Module]:
    built = []
    for seed in range(n):
        torch.manual_seed(seed)
        built.append(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1)))
    return built


def step_both(members, optimizers, stacked, vectorised, grads) -> None:
    """One step of each member's torch.optim optimizer and of the vectorised one, on the same gradients."""
    for index, (model, opt) in enumerate(zip(members, optimizers, strict=True)):
        for name, parameter in model.named_parameters():
            parameter.grad = grads[name][index].clone()
        opt.step()
    for name, tensor in stacked.items():
        tensor.grad = grads[name].clone()
    vectorised.step(stacked)


def assert_same_weights(members, stacked) -> None:
    for index, model in enumerate(members):
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(stacked[name][index], parameter.detach(), rtol=1e-6, atol=1e-7)


def compare_steps(params: list[dict], optimizer: str, *, steps: int = 3, zero_grads: bool = False) -> None:
    """Step each member's torch.optim optimizer and the vectorised one on the same gradients; compare weights."""
    members = models(len(params))
    optimizers = [build_optimizer(m, {**p, "optimizer": optimizer}) for m, p in zip(members, params, strict=True)]
    stacked = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in members]).requires_grad_()
        for name, _ in members[0].named_parameters()
    }
    vectorised = VectorisedOptimizer(Hyper.of(optimizers))
    for _ in range(steps):  # momentum buffers and Adam's moments carry over steps
        grads = {
            name: torch.zeros_like(tensor) if zero_grads else torch.randn_like(tensor)
            for name, tensor in stacked.items()
        }
        step_both(members, optimizers, stacked, vectorised, grads)
    assert_same_weights(members, stacked)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_one_vectorised_step_is_torch_optims_step_for_each_member(optimizer):
    compare_steps(PARAMS, optimizer)


def test_sgd_without_momentum_keeps_no_buffer_as_torch_does():
    compare_steps([{**p, "momentum": 0.0} for p in PARAMS], "sgd")


def test_adamws_decay_rounds_as_torchs_even_where_lr_times_decay_is_tiny():
    members = models(len(PARAMS))
    optimizers = [build_optimizer(m, {**p, "optimizer": "adamw"}) for m, p in zip(members, PARAMS, strict=True)]
    stacked = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in members]).requires_grad_()
               for name, _ in members[0].named_parameters()}  # fmt: skip
    vectorised = VectorisedOptimizer(Hyper.of(optimizers))
    for model, opt in zip(members, optimizers, strict=True):  # no gradient: the step is the decay alone
        for parameter in model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        opt.step()
    for tensor in stacked.values():
        tensor.grad = torch.zeros_like(tensor)
    vectorised.step(stacked)
    for index, model in enumerate(members):
        for name, parameter in model.named_parameters():
            assert torch.equal(stacked[name][index], parameter.detach()), name


def test_optimizer_options_a_pack_does_not_vectorise_are_refused():
    model = models(1)[0]
    with pytest.raises(PackError, match="nesterov"):
        Hyper.of([torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)])
    with pytest.raises(PackError, match="SGD, Adam and AdamW only"):
        Hyper.of([torch.optim.RMSprop(model.parameters(), lr=0.1)])
    with pytest.raises(PackError, match="one optimizer kind"):
        Hyper.of([torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.Adam(model.parameters(), lr=0.1)])


def test_dropping_members_keeps_the_others_state_aligned():
    members = models(3)
    optimizers = [build_optimizer(m, {**p, "optimizer": "adam"}) for m, p in zip(members, PARAMS, strict=True)]
    stacked = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in members]).requires_grad_()
               for name, _ in members[0].named_parameters()}  # fmt: skip
    vectorised = VectorisedOptimizer(Hyper.of(optimizers))
    for step in range(4):
        if step == 2:  # member 1 stops: its rows go, from the weights and from the optimizer
            rows = torch.tensor([0, 2])
            stacked = {name: tensor.detach()[rows].requires_grad_() for name, tensor in stacked.items()}
            vectorised.keep(rows)
            members, optimizers = [members[0], members[2]], [optimizers[0], optimizers[2]]
        grads = {name: torch.randn_like(tensor) for name, tensor in stacked.items()}
        step_both(members, optimizers, stacked, vectorised, grads)
    assert_same_weights(members, stacked)

"""A pack's forward without vmap, for the models most sweeps tune: chains of linear layers, norms, dropout and
elementwise activations (an ``nn.Sequential``, nested or not).

Each layer runs on every member at once: a linear layer is one batched matmul over the stacked weights
(``baddbmm``; its weight is held transposed, members x in x out, the layout that needs no copy of it on each
step), an activation runs on the stacked activations as it is, a dropout draws each member's mask at its
own rate. This skips what vmap and functional_call cost on every call, a large share of a small model's step.
Any other model runs through vmap (searchlab.pack).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional

# Modules without weights that act on each element alone: the same on stacked activations as on one member's.
ELEMENTWISE = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Tanhshrink, nn.LogSigmoid,
)  # fmt: skip
LAYERS = (nn.Linear, nn.Dropout, nn.LayerNorm, nn.Flatten)

Chain = Sequence[tuple[str, nn.Module]]


def chain_of(model: nn.Module, prefix: str = "") -> Chain | None:
    """The model's layers in order, named as in its state_dict, when it is a plain nn.Sequential (no subclass with
    a forward of its own, no hooks) of layers this module runs batched; None otherwise."""
    if type(model) is not nn.Sequential or _hooked(model):
        return None
    layers: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if _hooked(child):
            return None
        if type(child) is nn.Sequential:
            inner = chain_of(child, f"{prefix}{name}.")
            if inner is None:
                return None
            layers.extend(inner)
        elif type(child) in LAYERS or type(child) in ELEMENTWISE:
            layers.append((f"{prefix}{name}", child))
        else:
            return None
    return layers


def _hooked(module: nn.Module) -> bool:
    """Whether hooks change what the module's forward does (run_chain would skip them)."""
    return any(
        getattr(module, hooks, None)
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    )


def transposed_weights(chain: Chain) -> set[str]:
    """The linear layers' weights, which run_chain takes transposed (members x in x out)."""
    return {f"{name}.weight" for name, layer in chain if isinstance(layer, nn.Linear)}


def dropout_scale(rate: Tensor) -> Tensor:
    """What a kept activation is multiplied by at dropout ``rate``: 1 / (1 - rate), and 0 at rate 1."""
    return torch.where(rate < 1, 1 / (1 - rate), torch.zeros_like(rate))


def _members_view(values: Tensor, like: Tensor) -> Tensor:
    """A per-member tensor (members first, then its own shape) broadcast against ``like``'s trailing dims."""
    return values.view(values.shape[0], *([1] * (like.dim() - values.dim())), *values.shape[1:])


def run_chain(
    chain: Chain,
    tensors: dict[str, Tensor],
    inputs: Tensor,
    members: int,
    *,
    training: bool,
    dropping: dict[str, tuple[Tensor, Tensor]],
) -> Tensor:
    """Every member's outputs for one batch of ``inputs`` (shared by the members), members first. ``tensors``
    holds the stacked weights and buffers by state_dict name (linear weights transposed); ``dropping``, for each
    dropout some member drops at, every member's rate and 1 / (1 - rate) (at rate 0 a mask keeps everything: none
    is drawn)."""
    h = inputs.unsqueeze(0).expand(members, *inputs.shape).contiguous()  # each member's own (in-place layers)
    for name, layer in chain:
        if isinstance(layer, nn.Linear):
            weight, bias = tensors[name + ".weight"], tensors.get(name + ".bias")
            flat = h.reshape(members, -1, h.shape[-1])
            out = torch.bmm(flat, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), flat, weight)
            h = out.view(members, *h.shape[1:-1], weight.shape[2])
        elif isinstance(layer, nn.Dropout):
            if training and name in dropping:
                rate, scale = (_members_view(values, h) for values in dropping[name])
                h = h * torch.rand_like(h).ge_(rate).mul_(scale)  # one mask: kept (1/(1-rate)) or dropped (0)
        elif isinstance(layer, nn.LayerNorm):
            h = functional.layer_norm(h, layer.normalized_shape, None, None, layer.eps)
            if name + ".weight" in tensors:
                h = h * _members_view(tensors[name + ".weight"], h)
            if name + ".bias" in tensors:
                h = h + _members_view(tensors[name + ".bias"], h)
        elif isinstance(layer, nn.Flatten):
            start = layer.start_dim + 1 if layer.start_dim >= 0 else layer.start_dim
            end = layer.end_dim + 1 if layer.end_dim >= 0 else layer.end_dim
            h = h.flatten(start, end)
        else:
            h = layer(h)
    return h

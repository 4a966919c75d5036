"""The preflight checks: a model that fails on a validation batch, or cannot overfit one tiny batch, has a bug, not
a tuning problem.

``preflight_model`` runs a few validation examples through the model a trial would build; ``preflight_pack`` trains
two such models as a pack for one step (when trials run packed). ``check_study`` builds
the study's model with the space's first values (regularisation off), trains it on a few examples with the highest
learning rate the search would try, and says whether the loss falls near zero; when it does not, it names the usual
cause: wrong output shape, wrong head for the loss, no gradient, a loss that never moves, NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from searchlab.data import Data, first_examples
from searchlab.errors import ConfigError, describe_error
from searchlab.model import DROPPED_DEFAULTS, build_model, build_optimizer, inherited_params, new_trial
from searchlab.pack import Member, Pack, PackError
from searchlab.space import Choice, Distribution, Fixed, Float, Int
from searchlab.study import Study
from searchlab.tasks import ModelError, Task, get_task
from searchlab.transfer import Start
from searchlab.trial import Trial

EXAMPLES, STEPS = 8, 500
NEAR_ZERO = 0.05  # of the first loss


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    summary: str  # one line: what was measured, and the diagnosis when it failed


def first_value(dist: Distribution) -> Any:
    """The value a check uses: Fixed as is, the first choice, the middle of a range (geometric on a log scale)."""
    if isinstance(dist, Fixed):
        return dist.value
    if isinstance(dist, Choice):
        return dist.choices[0]
    middle = math.sqrt(dist.low * dist.high) if dist.log else (dist.low + dist.high) / 2
    return round(middle) if isinstance(dist, Int) else middle


def highest_lr(dist: Distribution | None) -> float:
    if dist is None:
        return DROPPED_DEFAULTS["lr"]
    if isinstance(dist, Fixed):
        return float(dist.value)
    if isinstance(dist, Choice):
        return float(max(dist.choices))
    return float(dist.high)


class DefaultsTrial:
    """Stands in for an Optuna trial: a builder's own knobs take the middle of their range or the first choice."""

    number = 0

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return first_value(Float(low, high, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return first_value(Int(low, high, log=log))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return choices[0]


def preflight_model(study: Study, task: Task, val_data: Data, start: Start | None = None) -> list[str]:
    """Build the model from a throwaway in-memory trial and run a few validation examples through it, so that
    a failing builder, a wrong head or a wrong output shape fails before anything is written; returns the names it
    searched: the space's and the builder's own (``width``)."""
    import optuna

    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    try:
        model = build_model(study, new_trial(study.space, probe, 0, start), task, start)
        inputs, targets = first_examples(val_data, 8)
        model.eval()
        with torch.no_grad():
            outputs = model(inputs)
        task.align(outputs, targets)
        task.check_outputs(outputs)
        return list(probe.distributions)
    except ModelError:
        raise
    except Exception as error:
        raise ConfigError(f"the study's model failed on a validation batch: {describe_error(error)}") from None


def preflight_pack(study: Study, task: Task, train_data: Data, start: Start | None = None) -> None:
    """Train two models a pack's trial would build for one step on a few examples, as a pack, so that a model a
    pack cannot vectorise (running statistics, data-dependent control flow, in-place weight updates, modules vmap
    cannot handle) is refused, with what to change, before anything is written."""
    import optuna

    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        trial = new_trial(study.space, probe, seed, start)
        model = build_model(study, trial, task, start)
        members.append(Member(model, build_optimizer(model, trial.params)))
    examples = [first_examples(train_data, EXAMPLES)]
    try:
        pack = Pack(members, task)
        pack.train_epoch(examples)
        pack.evaluate(examples)
    except ModelError:
        raise
    except Exception as error:
        cause = describe_error(error)
        if "data-dependent control flow" in cause:
            cause = "its forward() branches on a tensor's value (data-dependent control flow), which vmap cannot batch"
        raise PackError(f"the study's model cannot train as a pack of trials: {cause}: use --pack 1") from None


def check_study(
    study: Study,
    train_data: Data,
    *,
    examples: int = EXAMPLES,
    steps: int = STEPS,
    seed: int = 0,
    start: Start | None = None,
    threads: int | None = None,
) -> CheckResult:
    """Try to overfit ``examples`` training examples in ``steps`` full-batch steps (from ``start``'s weights), on
    ``threads`` torch threads (default: as set; torch's setting is restored after)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _overfit(study, train_data, examples=examples, steps=steps, seed=seed, start=start)
    finally:
        torch.set_num_threads(previous)


def _overfit(
    study: Study, train_data: Data, *, examples: int, steps: int, seed: int, start: Start | None
) -> CheckResult:
    task = get_task(study.task)
    inherited = inherited_params(study.space, start)
    params = {**inherited, **{name: first_value(dist) for name, dist in study.space.items()}}
    params.update({name: 0.0 for name in ("dropout", "weight_decay") if name in params})  # memorise, no regularising
    params["lr"] = highest_lr(study.space.get("lr"))
    setting = f"{params.get('optimizer', DROPPED_DEFAULTS['optimizer'])}, lr {params['lr']:g}"
    torch.manual_seed(seed)
    try:
        model = build_model(study, Trial(DefaultsTrial(), dict(params), seed, inherited), task, start)
        optimizer = build_optimizer(model, params)
    except ModelError as error:
        return CheckResult(False, f"check failed: {error}")
    except Exception as error:
        return CheckResult(False, f"check failed: the study's model() failed: {describe_error(error)}")
    inputs, targets = first_examples(train_data, examples)
    losses = _train_steps(model, optimizer, task, inputs, targets, steps, setting)
    return losses if isinstance(losses, CheckResult) else _verdict(losses, f"{len(inputs)} examples ({setting})")


def _train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: Task,
    inputs: Tensor,
    targets: Tensor,
    steps: int,
    setting: str,
) -> list[float] | CheckResult:
    """Full-batch steps on the examples: the loss of each, or the failed check that stopped them."""
    loss_fn = task.loss_fn()
    model.train()
    for module in model.modules():  # memorise: no dropout, whatever knob sized it (BatchNorm still trains)
        if isinstance(module, nn.modules.dropout._DropoutNd | nn.MultiheadAttention):
            module.eval()
    losses: list[float] = []
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        try:
            outputs = model(inputs)
            aligned = task.align(outputs, targets)
            if step == 1:
                task.check_outputs(outputs)
            loss = loss_fn(outputs, aligned)
        except ModelError as error:
            return CheckResult(False, f"check failed: {error}")
        except Exception as error:
            return CheckResult(False, f"check failed: the model failed on a batch: {describe_error(error)}")
        if not math.isfinite(loss.item()):
            return CheckResult(
                False,
                f"check failed: the loss became {loss.item()} at step {step} ({setting}): "
                "a learning rate too high, or an unstable operation (log of 0, division by 0)",
            )
        if not loss.requires_grad:
            return CheckResult(
                False,
                "check failed: no gradient reaches the weights: the output does not depend on "
                "them (a detached tensor, .item()/.numpy() inside forward, or frozen layers)",
            )
        loss.backward()
        if step == 1 and not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()):
            return CheckResult(
                False,
                "check failed: no gradient reaches the weights (every gradient is zero): "
                "check forward() for detached tensors and dead activations",
            )
        optimizer.step()
        losses.append(loss.item())
    return losses


def _verdict(losses: list[float], what: str) -> CheckResult:
    """Whether the loss fell near zero over the steps; when it did not, the likely cause."""
    first, last = losses[0], losses[-1]
    measured = f"loss {first:.4g} -> {last:.4g} in {len(losses)} steps on {what}"
    if last <= NEAR_ZERO * first or last < 1e-4:
        return CheckResult(True, f"check passed: {measured}")
    if abs(first - last) <= 0.01 * abs(first):
        return CheckResult(
            False,
            f"check failed: the loss never moves, {measured}: the learning rate is far too "
            "small, or the layers that matter are frozen",
        )
    return CheckResult(
        False,
        f"check failed: the loss falls but not near zero, {measured}: a model too small to "
        "memorise a few examples, or inputs that do not determine the targets",
    )

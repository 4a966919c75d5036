"""A trial's checkpoint: everything its training needs to go on exactly where it stood after an epoch.

The weights, the optimizer's state, the early-stopping state and best weights so far, the curve, the random states
(torch's global generator, which dropout draws from, and the batches' own), and the trial's seed. Made of plain
containers and CPU tensors, so that it loads with ``torch.load(weights_only=True)``. On the CPU, a trial resumed
from it ends with the curve and weights of the same trial never stopped, bit for bit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from searchlab.train import Training

FORMAT = 1
FOLDER = "checkpoints"  # the artifact folder of a trial's MLflow run that holds its latest checkpoint
NAME = re.compile(r"epoch-(\d+)\.pt")
MAX_SHARE = 0.01  # of a trial's time that its checkpoints may take (benchmarks/resume.py: what one costs)


def file_name(epoch: int) -> str:
    return f"epoch-{epoch:05d}.pt"


def epoch_of(name: str) -> int | None:
    """The epoch a checkpoint file's name says (None: not a checkpoint)."""
    match = NAME.fullmatch(Path(name).name)
    return int(match.group(1)) if match else None


def _to_cpu(value: Any) -> Any:
    """A copy of ``value`` whose tensors are on the CPU and share nothing with the training's."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value


def _device(training: Training) -> torch.device:
    return next((tensor.device for tensor in training.model.state_dict().values()), torch.device("cpu"))


def snapshot(training: Training, seed: int) -> dict[str, Any]:
    """The training's checkpoint now (between epochs), copied off the device."""
    state = training.state
    stopper = state.stopper
    device = _device(training)
    return {
        "format": FORMAT,
        "seed": seed,
        "epoch": state.epoch,
        "model": _to_cpu(training.model.state_dict()),
        "optimizer": _to_cpu(training.optimizer.state_dict()),
        "best_state": _to_cpu(state.best_state),
        "stopper": {"best": stopper.best, "best_epoch": stopper.best_epoch, "bad_epochs": stopper.bad_epochs},
        "history": [dict(values) for values in state.history],
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "train_batches": training.train.generator.get_state(),
            "val_batches": training.val.generator.get_state(),
        },
    }


def mismatch(checkpoint: Mapping[str, Any], training: Training, seed: int) -> str | None:
    """Why ``checkpoint`` cannot resume ``training`` (another seed, other layers); None when it can."""
    if checkpoint.get("format") != FORMAT:
        return f"checkpoint format {checkpoint.get('format')!r}, not {FORMAT}"
    if checkpoint["seed"] != seed:
        return f"its seed {checkpoint['seed']} is not the trial's {seed}"
    wanted = {name: tuple(tensor.shape) for name, tensor in training.model.state_dict().items()}
    saved = {name: tuple(tensor.shape) for name, tensor in checkpoint["model"].items()}
    if wanted != saved:
        return "its layers are not the model's (the study's model changed)"
    return None


def restore(training: Training, checkpoint: Mapping[str, Any]) -> None:
    """Put the training back where ``checkpoint`` left it (check ``mismatch`` first)."""
    model, state, device = training.model, training.state, _device(training)
    model.load_state_dict(checkpoint["model"])
    training.optimizer.load_state_dict(checkpoint["optimizer"])  # moves its state to the params' device
    best = checkpoint["best_state"]
    state.best_state = None if best is None else {name: tensor.to(device) for name, tensor in best.items()}
    saved = checkpoint["stopper"]
    state.stopper.best = float(saved["best"])
    state.stopper.best_epoch, state.stopper.bad_epochs = saved["best_epoch"], saved["bad_epochs"]
    state.history = [dict(values) for values in checkpoint["history"]]
    state.epoch = checkpoint["epoch"]
    rng = checkpoint["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    training.train.generator.set_state(rng["train_batches"])
    training.val.generator.set_state(rng["val_batches"])


def save(checkpoint: Mapping[str, Any], folder: Path) -> Path:
    """Write ``checkpoint`` into ``folder`` under its epoch's file name."""
    path = folder / file_name(checkpoint["epoch"])
    torch.save(dict(checkpoint), path)
    return path


def load(path: Path) -> dict[str, Any]:
    """A checkpoint file, read with ``weights_only=True`` (plain containers and tensors only)."""
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        raise ValueError(f"{path.name} is not a searchlab checkpoint")
    return checkpoint


class Schedule:
    """When a trial saves a checkpoint: at the end of an epoch, once ``every`` seconds have passed since its start
    or its last checkpoint (0: every epoch), and, unless ``every`` is 0, never so often that checkpoints take more
    than ``MAX_SHARE`` of the trial's time: ``cost``, what the last one took (its copy on the training thread, its
    upload on the sender's), sets a longer interval for a large model."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.cost = 0.0
        self.last = time.monotonic()

    @property
    def interval(self) -> float:
        return self.every if self.every == 0 else max(self.every, self.cost / MAX_SHARE)

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True

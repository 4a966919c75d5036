"""Batches: in-memory tensors indexed directly (the fast path); any other Dataset through a DataLoader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from searchlab.errors import ConfigError, describe_error
from searchlab.study import Split, Study
from searchlab.tasks import Task, get_task


@dataclass(frozen=True)
class TensorPair:
    """Inputs and targets held in memory, checked and converted once."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.inputs)


Data = TensorPair | Dataset


def load_split(study: Study, seed: int) -> tuple[Data, Data]:
    """The study's training and validation data, checked and prepared for its task; a data() that raises is a
    study-file error."""
    try:
        split = study.data(seed)
    except Exception as error:
        raise ConfigError(f"the study's data({seed}) failed: {describe_error(error)}") from None
    return prepare_split(split, get_task(study.task))


def prepare_split(split: Any, task: Task) -> tuple[Data, Data]:
    """Check what a study's ``data()`` returned and convert tensor pairs for the task."""
    if not isinstance(split, Split):
        raise ConfigError(f"the study's data() must return sl.Split(train=..., val=...), got {type(split).__name__}")
    return _prepare(split.train, "train", task), _prepare(split.val, "val", task)


def _prepare(part: Any, name: str, task: Task) -> Data:
    if isinstance(part, Dataset):
        return part
    if not (isinstance(part, tuple | list) and len(part) == 2):
        raise ConfigError(f"Split.{name} must be an (inputs, targets) pair of tensors or a torch Dataset")
    inputs, targets = (torch.as_tensor(part[0]), torch.as_tensor(part[1]))
    if len(inputs) == 0:
        raise ConfigError(f"Split.{name} is empty: it needs at least one example")
    if len(inputs) != len(targets):
        raise ConfigError(f"Split.{name} has {len(inputs)} inputs but {len(targets)} targets: they must match")
    if inputs.is_floating_point():
        inputs = inputs.float()
    try:
        targets = task.prepare_targets(targets)
    except ConfigError as error:
        raise ConfigError(f"Split.{name}: {error}") from None
    return TensorPair(inputs, targets)


class TensorBatches:
    """Mini-batches by indexing tensors that already sit on the device; a new order each pass when shuffled."""

    def __init__(self, data: TensorPair, batch_size: int, *, shuffle: bool, generator: torch.Generator) -> None:
        self.data, self.batch_size, self.shuffle, self.generator = data, batch_size, shuffle, generator

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        inputs, targets, size = self.data.inputs, self.data.targets, self.batch_size
        if not self.shuffle:
            for start in range(0, len(inputs), size):
                yield inputs[start : start + size], targets[start : start + size]
            return
        order = torch.randperm(len(inputs), generator=self.generator).to(inputs.device)
        for start in range(0, len(inputs), size):
            index = order[start : start + size]
            yield inputs[index], targets[index]


class LoaderBatches:
    """Mini-batches of any Dataset through a DataLoader, moved to the device batch by batch."""

    def __init__(
        self, dataset: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator, device: torch.device
    ) -> None:
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
        self.device, self.generator = device, generator

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for inputs, targets in self.loader:
            yield inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)


Batches = TensorBatches | LoaderBatches

# Inputs per evaluation batch: evaluation keeps no graph, so far larger batches than training's fit; a small
# validation set is evaluated as one batch (per-batch kernel launches and metric updates dominate otherwise).
EVAL_BATCH_BYTES = 8 * 2**20


def eval_batch_size(data: Data, train_batch_size: int, *, members: int = 1) -> int:
    """Rows per evaluation batch: the whole set when its inputs fit in ``EVAL_BATCH_BYTES``, else as many rows as
    fit, never fewer than the training batch (the model is known to take that many at once). A pack of ``members``
    holds that many activations per row: its batches are that many times smaller."""
    try:
        example = data.inputs[0] if isinstance(data, TensorPair) else torch.as_tensor(data[0][0])
        rows = len(data)  # type: ignore[arg-type]
    except (TypeError, IndexError, NotImplementedError):  # a dataset without len() or indexing
        return train_batch_size
    row_bytes = max(1, example.numel() * example.element_size() * members)
    return max(train_batch_size, min(rows, EVAL_BATCH_BYTES // row_bytes))


def make_batches(data: Data, batch_size: int, *, shuffle: bool, seed: int, device: torch.device) -> Batches:
    """Batches for training (``shuffle=True``) or evaluation, seeded so a trial replays exactly."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(data, TensorPair):
        on_device = TensorPair(data.inputs.to(device), data.targets.to(device))
        return TensorBatches(on_device, batch_size, shuffle=shuffle, generator=generator)
    return LoaderBatches(data, batch_size, shuffle=shuffle, generator=generator, device=device)


def first_examples(data: Data, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples (for a quick check of the model against the data)."""
    if isinstance(data, TensorPair):
        return data.inputs[:n], data.targets[:n]
    inputs, targets = next(iter(DataLoader(data, batch_size=n)))
    return inputs, targets

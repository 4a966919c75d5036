"""searchlab.data: checking and converting splits, in-memory batches, DataLoader batches, first examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from searchlab.data import (
    EVAL_BATCH_BYTES,
    LoaderBatches,
    TensorBatches,
    TensorPair,
    eval_batch_size,
    first_examples,
    make_batches,
    prepare_split,
)
from searchlab.errors import ConfigError
from searchlab.study import Split
from searchlab.tasks import get_task

CPU = torch.device("cpu")
REGRESSION, BINARY, MULTICLASS = get_task("regression"), get_task("binary"), get_task("multiclass")


def numbered(n: int) -> TensorPair:
    """Inputs whose only column is the example's index, and targets equal to it: batches show their indices."""
    return TensorPair(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))


def tensor_batches(n=10, batch_size=4, shuffle=True, seed=0) -> TensorBatches:
    return TensorBatches(numbered(n), batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def one_pass(batches) -> list[int]:
    return [int(i) for inputs, _ in batches for i in inputs[:, 0]]


class Squares(Dataset):
    """A map-style Dataset that is not a TensorDataset: (i, i**2) as float tensors."""

    def __len__(self):
        return 11

    def __getitem__(self, index):
        return torch.tensor([float(index)]), torch.tensor(float(index) ** 2)


# --- prepare_split ---


def test_prepare_split_converts_numpy_arrays():
    x, y = np.random.default_rng(0).normal(size=(6, 3)), np.arange(6) % 2
    train, val = prepare_split(Split(train=(x, y), val=(x[:2], y[:2])), BINARY)
    assert isinstance(train, TensorPair) and isinstance(val, TensorPair)
    assert train.inputs.dtype == torch.float32 and train.inputs.shape == (6, 3)
    assert torch.allclose(train.inputs, torch.from_numpy(x).float())
    assert train.targets.dtype == torch.float32
    assert train.targets.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert len(train) == 6 and len(val) == 2


def test_prepare_split_converts_tensors_and_lists_for_multiclass():
    train, val = prepare_split(
        Split(train=(torch.randn(4, 2), [0.0, 2.0, 1.0, 2.0]), val=([[0.0, 1.0]], [[1]])), MULTICLASS
    )
    assert train.targets.dtype == torch.long and train.targets.tolist() == [0, 2, 1, 2]
    assert val.inputs.dtype == torch.float32
    assert val.targets.tolist() == [1]


def test_prepare_split_keeps_integer_inputs():
    train, _ = prepare_split(
        Split(train=(torch.tensor([[1, 2], [3, 4]]), [0.5, 1.5]), val=([[1, 2]], [0.0])), REGRESSION
    )
    assert train.inputs.dtype == torch.int64


def test_prepare_split_passes_datasets_through():
    dataset = Squares()
    train, val = prepare_split(Split(train=dataset, val=TensorDataset(torch.zeros(2, 1), torch.zeros(2))), REGRESSION)
    assert train is dataset
    assert isinstance(val, TensorDataset)


def test_prepare_split_rejects_length_mismatch():
    with pytest.raises(ConfigError, match=r"Split\.train has 3 inputs but 2 targets"):
        prepare_split(Split(train=(np.zeros((3, 2)), np.zeros(2)), val=(np.zeros((1, 2)), np.zeros(1))), REGRESSION)


def test_prepare_split_rejects_empty_split():
    with pytest.raises(ConfigError, match=r"Split\.val is empty"):
        prepare_split(Split(train=(np.zeros((3, 2)), np.zeros(3)), val=(np.zeros((0, 2)), np.zeros(0))), REGRESSION)


@pytest.mark.parametrize("split", [(np.zeros((2, 1)), np.zeros(2)), {"train": None, "val": None}, None])
def test_prepare_split_rejects_anything_but_a_split(split):
    with pytest.raises(ConfigError, match=r"must return sl\.Split"):
        prepare_split(split, REGRESSION)


def test_prepare_split_rejects_part_that_is_not_a_pair():
    with pytest.raises(ConfigError, match=r"Split\.train must be an \(inputs, targets\) pair"):
        prepare_split(Split(train=(np.zeros((2, 1)),), val=(np.zeros((2, 1)), np.zeros(2))), REGRESSION)


def test_prepare_split_names_the_part_with_bad_targets():
    split = Split(train=(np.zeros((2, 1)), np.array([0, 1])), val=(np.zeros((2, 1)), np.array([0, 3])))
    with pytest.raises(ConfigError, match=r"^Split\.val: binary targets must be 0 or 1"):
        prepare_split(split, BINARY)


# --- TensorBatches ---


def test_tensor_batches_shuffled_pass_visits_every_index_once():
    batches = tensor_batches(n=10, batch_size=4)
    for _ in range(3):
        assert sorted(one_pass(batches)) == list(range(10))


def test_tensor_batches_shuffle_keeps_inputs_and_targets_together():
    for inputs, targets in tensor_batches(n=10, batch_size=4):
        assert inputs[:, 0].long().tolist() == targets.tolist()


def test_tensor_batches_new_order_on_next_pass():
    batches = tensor_batches(n=20, batch_size=4)
    first, second = one_pass(batches), one_pass(batches)
    assert first != second
    assert first != list(range(20))


def test_tensor_batches_same_seed_same_orders():
    a, b = tensor_batches(n=20, seed=3), tensor_batches(n=20, seed=3)
    assert [one_pass(a), one_pass(a)] == [one_pass(b), one_pass(b)]
    assert one_pass(tensor_batches(n=20, seed=4)) != one_pass(tensor_batches(n=20, seed=3))


def test_tensor_batches_without_shuffle_keep_order():
    batches = tensor_batches(n=10, batch_size=4, shuffle=False)
    assert one_pass(batches) == list(range(10))
    assert one_pass(batches) == list(range(10))


@pytest.mark.parametrize("shuffle", [False, True])
def test_tensor_batches_last_partial_batch_and_len(shuffle):
    batches = tensor_batches(n=10, batch_size=4, shuffle=shuffle)
    assert len(batches) == 3
    assert [len(inputs) for inputs, _ in batches] == [4, 4, 2]


@pytest.mark.parametrize(("n", "batch_size", "expected"), [(8, 4, 2), (9, 4, 3), (1, 64, 1), (64, 64, 1)])
def test_tensor_batches_len_is_number_of_batches(n, batch_size, expected):
    batches = tensor_batches(n=n, batch_size=batch_size, shuffle=False)
    assert len(batches) == expected == len(list(batches))


def test_make_batches_uses_tensor_batches_for_tensor_pairs_and_replays_seed():
    a = make_batches(numbered(12), 5, shuffle=True, seed=11, device=CPU)
    b = make_batches(numbered(12), 5, shuffle=True, seed=11, device=CPU)
    assert isinstance(a, TensorBatches)
    assert one_pass(a) == one_pass(b)


# --- LoaderBatches ---


def test_dataset_goes_through_loader_batches_with_same_examples():
    batches = make_batches(Squares(), 4, shuffle=False, seed=0, device=CPU)
    assert isinstance(batches, LoaderBatches)
    assert len(batches) == 3
    pairs = [(float(x), float(y)) for inputs, targets in batches for x, y in zip(inputs[:, 0], targets, strict=True)]
    assert pairs == [(float(i), float(i) ** 2) for i in range(11)]
    assert [len(inputs) for inputs, _ in batches] == [4, 4, 3]


def test_loader_batches_shuffle_visits_all_and_replays_seed():
    a = make_batches(Squares(), 4, shuffle=True, seed=5, device=CPU)
    b = make_batches(Squares(), 4, shuffle=True, seed=5, device=CPU)
    first = one_pass(a)
    assert sorted(first) == list(range(11))
    assert first == one_pass(b)
    assert one_pass(a) != first


def test_loader_and_tensor_batches_agree_without_shuffle():
    pair = numbered(9)
    loader = LoaderBatches(
        TensorDataset(pair.inputs, pair.targets),
        4,
        shuffle=False,
        generator=torch.Generator().manual_seed(0),
        device=CPU,
    )
    tensors = make_batches(pair, 4, shuffle=False, seed=0, device=CPU)
    for (xa, ya), (xb, yb) in zip(loader, tensors, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --- evaluation batches ---


def test_a_validation_set_that_fits_is_evaluated_as_one_batch():
    assert eval_batch_size(numbered(5_000), 32) == 5_000
    assert eval_batch_size(Squares(), 4) == 11


def test_a_large_validation_set_is_evaluated_in_batches_bounded_by_memory():
    rows = EVAL_BATCH_BYTES // (256 * 4)  # float32 rows of 256 features
    big = TensorPair(torch.zeros(3 * rows, 256), torch.zeros(3 * rows))
    assert eval_batch_size(big, 32) == rows
    huge_rows = TensorPair(torch.zeros(4, EVAL_BATCH_BYTES // 4), torch.zeros(4))  # one row fills the bound
    assert eval_batch_size(huge_rows, 2) == 2  # never below the training batch


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.zeros(1), torch.zeros(())


def test_a_dataset_without_length_or_indexing_is_evaluated_at_the_training_batch_size():
    assert eval_batch_size(Stream(), 16) == 16


# --- first_examples ---


def test_first_examples_of_tensor_pair():
    inputs, targets = first_examples(numbered(10), 3)
    assert inputs[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert targets.tolist() == [0, 1, 2]


def test_first_examples_of_dataset():
    inputs, targets = first_examples(Squares(), 3)
    assert inputs.shape == (3, 1)
    assert inputs[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert targets.tolist() == [0.0, 1.0, 4.0]


def test_first_examples_more_than_available():
    inputs, targets = first_examples(numbered(2), 5)
    assert len(inputs) == len(targets) == 2


def test_prepare_split_multiclass_int32_numpy_targets_become_long():
    y = np.array([0, 2, 1, 2], dtype=np.int32)
    train, _ = prepare_split(Split(train=(np.zeros((4, 2)), y), val=(np.zeros((4, 2)), y)), MULTICLASS)
    assert train.targets.dtype == torch.long

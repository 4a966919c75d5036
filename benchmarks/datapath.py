"""The data path and the epoch, in this (fresh) process: in-memory batches against DataLoader(TensorDataset), and
the share of an epoch spent outside forward/backward/step.

Run by benchmarks/suite.py; by hand: python benchmarks/datapath.py --repeats 3 --out data.json

On the study's own data (default: benchmarks/studies/diabetes.py), a model built from the space's first values, for each
batch size (the variants alternate within every repeat; medians over repeats):

- ``batches``: one pass over the training batches and nothing else, from ``data.make_batches`` on the in-memory
  tensors (``memory``) and on a ``TensorDataset`` of the same tensors (``loader``: searchlab's DataLoader path).
- ``epoch``: what ``train.fit`` spends per epoch (train_epoch + evaluate + best-state copy), both data paths.
- ``core``: zero_grad → forward → loss → backward → step over the same batches, pre-made: the work an epoch
  cannot avoid. ``1 - core / epoch`` is the share spent elsewhere (batching, validation and its metrics,
  bookkeeping); ``parts`` splits that: training pass, validation pass, building the metrics, the state copy.
- ``threads``: the in-memory epoch with 1 torch thread (what a CPU worker uses) and with every core (torch's
  own default), since tiny models can be slower on more threads.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from typing import Any

from _common import DEFAULT_STUDY, alternate, write_json


def per_epoch(function: Any, epochs: int) -> float:
    """Milliseconds per call, over ``epochs`` calls after one warm-up call."""
    function()
    started = time.perf_counter()
    for _ in range(epochs):
        function()
    return 1000 * (time.perf_counter() - started) / epochs


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch._dynamo  # the first torch.optim optimizer imports it (seconds, once per process)
    from torch.utils.data import TensorDataset

    from searchlab.check import DefaultsTrial, first_value
    from searchlab.data import load_split, make_batches
    from searchlab.devices import assign_slots
    from searchlab.model import build_model, build_optimizer
    from searchlab.study import load_study_file
    from searchlab.tasks import get_task
    from searchlab.trial import Trial

    core_threads = os.cpu_count() or 1  # torch's default, against a CPU worker's one thread
    torch.set_num_threads(assign_slots(["cpu"], 1)[0].threads)
    study = load_study_file(args.study)
    task = get_task(study.task)
    train_data, val_data = load_split(study, study.seed)
    device = torch.device("cpu")
    datasets = {
        "memory": (train_data, val_data),
        "loader": (
            TensorDataset(train_data.inputs, train_data.targets),
            TensorDataset(val_data.inputs, val_data.targets),
        ),
    }
    params = {name: first_value(dist) for name, dist in study.space.items()}

    def setup(batch_size: int, source: str) -> tuple[Any, Any, Any, Any]:
        torch.manual_seed(0)
        model = build_model(study, Trial(DefaultsTrial(), dict(params), 0), task)
        optimizer = build_optimizer(model, params)
        train, val = datasets[source]
        return (
            model,
            optimizer,
            make_batches(train, batch_size, shuffle=True, seed=0, device=device),
            make_batches(val, batch_size, shuffle=False, seed=0, device=device),
        )

    results: dict[str, Any] = {
        "examples": {"train": len(train_data), "val": len(val_data)},
        "core_threads": core_threads,
        "epochs_per_timing": args.epochs,
        "batch_sizes": {},
    }
    for batch_size in args.batch_sizes:
        runs: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            for name, value in one_repeat(setup, task, batch_size, repeat, core_threads, args.epochs).items():
                runs.setdefault(name, []).append(value)
        medians = {name: statistics.median(values) for name, values in runs.items()}
        results["batch_sizes"][str(batch_size)] = {
            "ms": {
                name: {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}
                for name, v in runs.items()
            },
            "loader_over_memory_batches": medians["batches loader"] / medians["batches memory"],
            "loader_over_memory_epoch": medians["epoch loader"] / medians["epoch memory"],
            "share_outside_core": 1 - medians["core"] / medians["epoch memory"],
        }
    return results


def one_repeat(setup: Any, task: Any, batch_size: int, repeat: int, core_threads: int, epochs: int) -> dict[str, float]:
    """Every timing of one repeat at one batch size, in ms per epoch (the data paths and thread counts in
    alternating order)."""
    import torch

    from searchlab.train import evaluate, fit, train_epoch

    timings: dict[str, float] = {}
    for source in alternate(["memory", "loader"], repeat):
        model, optimizer, train, val = setup(batch_size, source)
        timings[f"batches {source}"] = per_epoch(functools.partial(count_batches, train), epochs)
        timings[f"epoch {source}"] = 1000 * timed_fit(fit, model, optimizer, train, val, task, epochs)
    model, optimizer, train, val = setup(batch_size, "memory")
    loss_fn = task.loss_fn()
    timings["core"] = per_epoch(functools.partial(core, model, optimizer, list(train), task, loss_fn), epochs)
    timings["part: train_epoch"] = per_epoch(
        functools.partial(train_epoch, model, train, task, loss_fn, optimizer), epochs
    )
    timings["part: evaluate"] = per_epoch(functools.partial(evaluate, model, val, task, loss_fn), epochs)
    timings["part: metrics built"] = per_epoch(functools.partial(task.metrics, 1), epochs)
    timings["part: best-state copy"] = per_epoch(functools.partial(copy_state, model), epochs)
    for threads in alternate([1, core_threads], repeat):
        torch.set_num_threads(threads)
        model, optimizer, train, val = setup(batch_size, "memory")
        timings[f"epoch memory, {threads} thread(s)"] = 1000 * timed_fit(
            fit, model, optimizer, train, val, task, epochs
        )
    torch.set_num_threads(core_threads)
    return timings


def count_batches(batches: Any) -> int:
    return sum(1 for _ in batches)


def core(model: Any, optimizer: Any, batches: list[Any], task: Any, loss_fn: Any) -> None:
    """The unavoidable work of a training pass: zero_grad, forward, loss, backward, step per batch."""
    model.train()
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        outputs = model(inputs)
        loss = loss_fn(outputs, task.align(outputs, targets))
        loss.backward()
        optimizer.step()


def copy_state(model: Any) -> dict[str, Any]:
    """What fit does on every new best epoch."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def timed_fit(fit: Any, model: Any, optimizer: Any, train: Any, val: Any, task: Any, epochs: int) -> float:
    """Seconds per epoch of ``train.fit`` (early stopping off), after one warm-up epoch."""
    fit(model, optimizer, train, val, task, max_epochs=1, patience=1)
    started = time.perf_counter()
    fit(model, optimizer, train, val, task, max_epochs=epochs, patience=epochs)
    return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=DEFAULT_STUDY)
    parser.add_argument("--batch-sizes", type=lambda text: [int(b) for b in text.split(",")], default=[32, 64, 128])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    write_json(args.out, measure(args))


if __name__ == "__main__":
    main()

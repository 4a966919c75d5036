"""A CPU-bound benchmark study: a fixed amount of training per trial (no early stopping), synthetic data.

The shape of the shipped studies (a small MLP on tabular data, small batches), where torch's intra-op threads
help little and trials in parallel processes are how the cores get used.

Run: searchlab run benchmarks/studies/cpu_bound.py --workers 2
"""

import torch
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4000, 32, generator=g)
    y = torch.sin(x[:, :8]).sum(1) + 0.1 * torch.randn(4000, generator=g)
    return sl.Split(train=(x[:3200], y[:3200]), val=(x[3200:], y[3200:]))


def model(trial: sl.Trial) -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 1),
    )


study = sl.Study(
    name="cpu-bound",
    task="regression",
    data=data,
    model=model,
    space=sl.default_space(lr=sl.Float(1e-4, 1e-2, log=True), batch_size=32),
    max_epochs=20,
    patience=20,
    n_trials=12,
)

if __name__ == "__main__":
    study.run()

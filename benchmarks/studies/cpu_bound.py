"""A CPU-bound benchmark study: a fixed amount of training per trial (no early stopping), synthetic data.

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
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Dropout(trial.params["dropout"]),
                         nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))


study = sl.Study(name="cpu-bound", task="regression", data=data, model=model,
                 space=sl.default_space(lr=sl.Float(1e-4, 1e-2, log=True), batch_size=64),
                 max_epochs=8, patience=8, n_trials=12)

if __name__ == "__main__":
    study.run()

"""A GPU benchmark study: a fixed amount of training per trial (no early stopping), synthetic data on the GPU.

A small MLP with small batches, as most searches train: one trial launches kernels faster than it fills the GPU,
so several trials packed on one GPU (``--trials-per-device``) can use what one leaves idle.

Run: searchlab run benchmarks/studies/gpu_bound.py --devices cuda --workers 2 --trials-per-device 2
"""

import torch
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24000, 64, generator=g)
    y = torch.sin(x[:, :16]).sum(1) + 0.1 * torch.randn(24000, generator=g)
    return sl.Split(train=(x[:20000], y[:20000]), val=(x[20000:], y[20000:]))


def model(trial: sl.Trial) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 512),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 1),
    )


study = sl.Study(
    name="gpu-bound",
    task="regression",
    data=data,
    model=model,
    space=sl.default_space(lr=sl.Float(1e-4, 1e-2, log=True), batch_size=128),
    max_epochs=20,
    patience=20,
    n_trials=24,
)

if __name__ == "__main__":
    study.run()

"""The overhead benchmark's regression workload at one shape: what packed trials are measured on.

regression_workload.py searches the width (64-256) and the batch size (32/64/128), which change a trial's cost by
up to 4x; a pack fixes both for its members, so over a few dozen trials unpacked and packed runs would train
different shapes. Here both are fixed at the middle (width 128, batch 64): every variant trains the same shapes and
only what a pack searches per member (lr, momentum, weight decay, dropout) is sampled.

Run: searchlab run benchmarks/studies/packing_workload.py --pack 8
"""

import torch
from sklearn.datasets import make_friedman1
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    """regression_workload.py's: Friedman #1, 12,800 training and 3,200 validation rows."""
    x, y = make_friedman1(n_samples=16_000, n_features=16, noise=0.5, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    return sl.Split(train=(x[:12_800], y[:12_800]), val=(x[12_800:], y[12_800:]))


def model(trial: sl.Trial) -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 128),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 1),
    )


study = sl.Study(
    name="packing-workload",
    task="regression",
    data=data,
    model=model,
    space={**sl.default_space(), "batch_size": sl.Fixed(64)},
    max_epochs=10,
    patience=10,
    n_trials=32,
)

if __name__ == "__main__":
    study.run()

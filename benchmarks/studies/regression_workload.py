"""The regression workload the overhead benchmark's targets are sized for: a trial that trains for about a second.

Issue 7 calibrates its targets on a regression workload where a naive script (one synchronous MLflow call per
metric per epoch, ~15-45 ms each) costs ~1.5x the bare loop. This study is sized to that ratio: Friedman #1
regression from scikit-learn's generator (no download), 12,800 training and 3,200 validation rows, an MLP of two
hidden layers; a trial of 10 epochs trains ~0.9 s on the 2-core benchmark machine, and the naive script took
1.55x the bare loop there. (With the 6,000 training rows it had before, the naive script took 2.0-2.1x: trials
half as long as the issue's, which doubled every per-trial cost's share.) benchmarks/studies/diabetes.py (442
rows) trains a trial in ~50-120 ms, where any framework's per-trial cost dominates: the suite's ``small`` benchmark.

Run: searchlab run benchmarks/studies/regression_workload.py
"""

import torch
from sklearn.datasets import make_friedman1
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    x, y = make_friedman1(n_samples=16_000, n_features=16, noise=0.5, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    return sl.Split(train=(x[:12_800], y[:12_800]), val=(x[12_800:], y[12_800:]))


def model(trial: sl.Trial) -> nn.Module:
    width = trial.suggest_int("width", 64, 256, log=True)
    return nn.Sequential(
        nn.Linear(16, width),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 1),
    )


study = sl.Study(
    name="regression-workload",
    task="regression",
    data=data,
    model=model,
    space=sl.default_space(),
    max_epochs=10,
    patience=10,
    n_trials=20,
)

if __name__ == "__main__":
    study.run()

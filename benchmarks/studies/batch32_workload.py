"""A second overhead workload, shaped unlike the one the suite was tuned on: batch 32 and a large validation set.

Another harness measured searchlab at 1.18-1.22x the bare loop on this shape (20,000 training and 5,000
validation rows of a 16-feature regression, a 16-64-64-1 MLP, batch 32, 10 epochs: ~2.4 s per trial on the
2-core machine) while regression_workload.py showed 1.03x: validation ran at the training batch size, 157 small
batches per evaluation, a cost the bare loop of that harness did not pay. The suite's ``batch32`` benchmark runs
the overhead variants on this study so that such a cost cannot hide again.

Run: searchlab run benchmarks/studies/batch32_workload.py
"""

import torch
from sklearn.datasets import make_friedman1
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    x, y = make_friedman1(n_samples=25_000, n_features=16, noise=0.5, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    return sl.Split(train=(x[:20_000], y[:20_000]), val=(x[20_000:], y[20_000:]))


def model(trial: sl.Trial) -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 64),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 1),
    )


study = sl.Study(
    name="batch32-workload",
    task="regression",
    data=data,
    model=model,
    space={**sl.default_space(), "batch_size": sl.Fixed(32)},
    max_epochs=10,
    patience=10,
    n_trials=20,
)

if __name__ == "__main__":
    study.run()

"""The kill-and-resume workload of benchmarks/resume.py: long trials of fixed length, whose epochs take ~0.5 s.

A 16-feature Friedman #1 regression from scikit-learn's generator (no download), 20,000 training and 5,000
validation rows, a 16-64-64-1 MLP at batch 32: an epoch trains in about half a second on one thread of the 2-core
benchmark machine, so that a checkpoint interval of a few seconds is a few epochs. 40 epochs, no early stopping
(patience = max_epochs), and a learning rate and momentum narrowed so that no trial diverges: every trial trains
exactly 40 epochs, whichever params the sampler draws, and the epochs a run trains count only what kills cost.

Run: searchlab run benchmarks/studies/resume_workload.py --workers 2
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
    name="resume-workload",
    task="regression",
    data=data,
    model=model,
    space=sl.default_space(lr=sl.Float(1e-3, 3e-2, log=True), momentum=sl.Float(0.8, 0.95), batch_size=32),
    max_epochs=40,
    patience=40,
    n_trials=12,
)

if __name__ == "__main__":
    study.run()

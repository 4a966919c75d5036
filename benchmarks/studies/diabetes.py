"""Tune an MLP that predicts diabetes progression (scikit-learn's bundled diabetes data set, 442 patients): the
shipped studies/regression.py until 2026-12-07, kept as the small-trial workload of the overhead, start-up and
data-path benchmarks (trials of ~50-120 ms, where searchlab's own per-trial costs show) so that their figures stay
comparable. As a demo it did not search: with ~110 validation rows the noise in the validation loss is larger
than what the hyperparameters change, and the best value stops improving after a handful of trials.

Run: searchlab run benchmarks/studies/diabetes.py
"""

import torch
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    """Features and target standardised with the training split's statistics (no leakage into validation)."""
    x, y = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=seed)
    x_mean, x_std, y_mean, y_std = x_train.mean(0), x_train.std(0), y_train.mean(), y_train.std()

    def tensors(x, y):
        return torch.tensor((x - x_mean) / x_std, dtype=torch.float32), torch.tensor((y - y_mean) / y_std)

    return sl.Split(train=tensors(x_train, y_train), val=tensors(x_val, y_val))


def model(trial: sl.Trial) -> nn.Module:
    """One hidden layer; its width is a model-specific knob searched beside the default space."""
    width = trial.suggest_int("width", 16, 128, log=True)
    return nn.Sequential(
        nn.Linear(10, width),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(width, 1),  # regression: one linear unit, no activation
    )


study = sl.Study(
    name="regression",
    task="regression",
    data=data,
    model=model,
    space=sl.default_space(),
    optimizer="sgd",
    max_epochs=100,
    patience=10,
    n_trials=50,
)

if __name__ == "__main__":
    study.run()

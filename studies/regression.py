"""Tune an MLP that draws the lower half of a handwritten digit from its upper half (scikit-learn's bundled digits,
1,797 images of 8x8 pixels): a regression onto 32 pixel intensities.

Why this data: the validation split holds 450 images x 32 pixels, so its loss moves little between two trainings of
one configuration, while the learning rate, momentum and width move it by a factor of two or more: a search has
something to find. (The diabetes study shipped before, with ~110 validation rows, was mostly noise; it lives on in
benchmarks/studies/diabetes.py.)

Run: searchlab run studies/regression.py      (or: python studies/regression.py)
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    """Upper 4 rows of pixels in, lower 4 rows out, both scaled to [0, 1] (pixels range 0..16)."""
    images = load_digits().images / 16.0
    x, y = images[:, :4].reshape(len(images), 32), images[:, 4:].reshape(len(images), 32)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=seed)

    def tensors(x, y):
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)

    return sl.Split(train=tensors(x_train, y_train), val=tensors(x_val, y_val))


def model(trial: sl.Trial) -> nn.Module:
    """One hidden layer; its width is a model-specific knob searched beside the default space."""
    width = trial.suggest_int("width", 16, 256, log=True)
    return nn.Sequential(
        nn.Linear(32, width),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(width, 32),  # regression: one linear unit per pixel, no activation
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

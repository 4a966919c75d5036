"""Tune a classifier of handwritten digits, 8x8 pixels, 10 classes (scikit-learn's bundled digits data set).

Run: searchlab run studies/multiclass.py      (or: python studies/multiclass.py)
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    """Pixels scaled to [0, 1]; labels are class indices 0..9, stratified split."""
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.25, stratify=y, random_state=seed)

    def tensors(x, y):
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)

    return sl.Split(train=tensors(x_train, y_train), val=tensors(x_val, y_val))


def model(trial: sl.Trial) -> nn.Module:
    width = trial.suggest_int("width", 32, 256, log=True)
    activation = trial.suggest_categorical("activation", ["relu", "leaky_relu"])
    act = nn.ReLU if activation == "relu" else nn.LeakyReLU
    return nn.Sequential(
        nn.Linear(64, width),
        act(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(width, 10),  # multiclass: one raw logit per class; CrossEntropyLoss applies the softmax
    )


study = sl.Study(
    name="multiclass",
    task="multiclass",
    data=data,
    model=model,
    space=sl.default_space(lr=sl.Float(1e-3, 1e-1, log=True)),  # narrowed: tiny rates crawl on this set
    optimizer="sgd",
    max_epochs=60,
    patience=8,
    n_trials=20,
)

if __name__ == "__main__":
    study.run()

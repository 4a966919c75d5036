"""Tune a classifier of breast tumours as malignant or benign (scikit-learn's bundled Wisconsin data set).

Run: searchlab run studies/binary.py      (or: python studies/binary.py)
"""

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    """30 features standardised with the training split's statistics; labels 0/1, stratified split."""
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    mean, std = x_train.mean(0), x_train.std(0)

    def tensors(x, y):
        return torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)

    return sl.Split(train=tensors(x_train, y_train), val=tensors(x_val, y_val))


def model(trial: sl.Trial) -> nn.Module:
    width = trial.suggest_int("width", 8, 64, log=True)
    return nn.Sequential(
        nn.Linear(30, width),
        nn.ReLU(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(width, 1),  # binary: one raw logit; BCEWithLogitsLoss applies the sigmoid
    )


study = sl.Study(
    name="binary",
    task="binary",
    data=data,
    model=model,
    space=sl.default_space(),
    optimizer=sl.Choice(["sgd", "adamw"]),  # the optimizer may itself be searched
    max_epochs=60,
    patience=8,
    n_trials=20,
)

if __name__ == "__main__":
    study.run()

"""Transfer learning: reuse the best digits classifier of studies/multiclass.py for a new question, odd or even,
with a tenth of the labels. Its first layer (the pixel features) is frozen, the new one-logit head starts fresh,
and the rest is fine-tuned with a small learning rate.

Run:  searchlab run studies/multiclass.py   (once: the weights to start from)
      searchlab run studies/finetune.py
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import searchlab as sl


def data(seed: int) -> sl.Split:
    """The multiclass study's split (same seed, same validation digits), labelled odd (1) or even (0); only a
    tenth of its training digits keep their labels."""
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x / 16.0, y, test_size=0.25, stratify=y, random_state=seed)
    x_few, _, y_few, _ = train_test_split(x_train, y_train, train_size=0.1, stratify=y_train, random_state=seed)

    def tensors(x, y):
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y % 2, dtype=torch.float32)

    return sl.Split(train=tensors(x_few, y_few), val=tensors(x_val, y_val))


def model(trial: sl.Trial) -> nn.Module:
    """The multiclass study's layers; width and activation come with the weights (trial.params)."""
    act = nn.ReLU if trial.params["activation"] == "relu" else nn.LeakyReLU
    width = trial.params["width"]
    return nn.Sequential(
        nn.Linear(64, width),  # "0.": loaded and frozen
        act(),
        nn.Dropout(trial.params["dropout"]),
        nn.Linear(width, 1),  # a new head: one logit (its shape differs, so it is not loaded)
    )


study = sl.Study(
    name="finetune",
    task="binary",
    data=data,
    model=model,
    start_from="study:multiclass",  # the best trial of that study, from the same storage and MLflow store
    freeze=("0.",),
    space=sl.default_space(lr=sl.Float(1e-4, 1e-2, log=True)),  # small steps: adjust, do not destroy
    init="kaiming",  # for the fresh head; loaded layers keep their weights
    max_epochs=60,
    patience=8,
    n_trials=10,
)

if __name__ == "__main__":
    study.run()

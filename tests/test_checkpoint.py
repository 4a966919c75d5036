"""searchlab.checkpoint: a fit stopped after any epoch and resumed from its checkpoint file ends bit for bit as the
same fit never stopped (weights, curve, best epoch), with dropout and shuffled batches, in memory or from a Dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from searchlab import checkpoint
from searchlab.data import TensorPair, make_batches
from searchlab.model import build_optimizer
from searchlab.tasks import get_task
from searchlab.train import EarlyStopping, FitState, Training, fit

CPU = torch.device("cpu")
REGRESSION = get_task("regression")
PARAMS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "optimizer": "sgd"}
SEED = 1234


def problem() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen)
    return x, (x @ torch.randn(5, generator=gen)) + 0.1 * torch.randn(200, generator=gen)


def training(dataset: bool = False, patience: int = 3) -> Training:
    """A fresh trial's training, built as train_trial builds one: seeded, then model, optimizer and batches."""
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    x, y = problem()
    train = TensorDataset(x[:160], y[:160]) if dataset else TensorPair(x[:160], y[:160])
    return Training(
        model,
        build_optimizer(model, PARAMS),
        make_batches(train, 16, shuffle=True, seed=SEED, device=CPU),
        make_batches(TensorPair(x[160:], y[160:]), 40, shuffle=False, seed=SEED, device=CPU),
        FitState(EarlyStopping(patience)),
    )


def run(t: Training, max_epochs: int, **kwargs: object):
    return fit(
        t.model, t.optimizer, t.train, t.val, REGRESSION, max_epochs=max_epochs, patience=3, state=t.state, **kwargs
    )


class Killed(Exception):
    pass


def killed_after(t: Training, epoch: int) -> dict:
    """Train ``t`` until the end of ``epoch``, take its checkpoint there (as a trial does, between two epochs), and
    stop it dead."""
    saved: dict = {}

    def on_epoch(number: int, values: dict) -> None:
        if number == epoch:
            saved.update(checkpoint.snapshot(t, SEED))
            raise Killed

    with pytest.raises(Killed):
        run(t, 1000, on_epoch=on_epoch)
    return saved


@pytest.mark.parametrize("dataset", [False, True], ids=["tensors", "dataset"])
@pytest.mark.parametrize("stop_after", [1, 4])
def test_a_fit_resumed_from_its_checkpoint_file_ends_bit_for_bit_as_one_never_stopped(
    tmp_path: Path, dataset: bool, stop_after: int
) -> None:
    whole = training(dataset, patience=100)
    whole_result = run(whole, 8)

    path = checkpoint.save(killed_after(training(dataset, patience=100), stop_after), tmp_path)
    assert path.name == checkpoint.file_name(stop_after) and checkpoint.epoch_of(path.name) == stop_after
    torch.manual_seed(99)  # another process's random state: the checkpoint brings the trial's back
    resumed = training(dataset, patience=100)
    saved = checkpoint.load(path)
    assert checkpoint.mismatch(saved, resumed, SEED) is None
    checkpoint.restore(resumed, saved)
    seen: list[int] = []
    result = run(resumed, 8, on_epoch=lambda epoch, values: seen.append(epoch))

    assert seen == list(range(stop_after + 1, 9)), "only the epochs after the checkpoint are trained"
    assert result.history == whole_result.history  # every epoch's values, exactly
    assert (result.best_epoch, result.best_val_loss) == (whole_result.best_epoch, whole_result.best_val_loss)
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_early_stopping_state_goes_on_from_the_checkpoint(tmp_path: Path) -> None:
    whole = training(patience=2)
    whole_result = run(whole, 40)
    assert whole_result.stop_reason.startswith("early stopping")
    stop_after = whole_result.epochs - 1  # one bad epoch already counted when it stopped
    resumed = training(patience=2)
    checkpoint.restore(
        resumed, checkpoint.load(checkpoint.save(killed_after(training(patience=2), stop_after), tmp_path))
    )
    result = run(resumed, 40)
    assert (result.epochs, result.stop_reason, result.best_epoch) == (
        whole_result.epochs,
        whole_result.stop_reason,
        whole_result.best_epoch,
    )


def test_a_checkpoint_is_plain_tensors_and_containers_off_the_device() -> None:
    t = training()
    saved = killed_after(t, 2)
    weight = t.model.state_dict()["0.weight"]
    assert saved["model"]["0.weight"].data_ptr() != weight.data_ptr(), "a copy: training goes on meanwhile"
    assert saved["epoch"] == 2 and saved["seed"] == SEED and len(saved["history"]) == 2
    assert saved["best_state"] is not None and saved["stopper"]["best_epoch"] in (1, 2)


def test_a_checkpoint_for_another_seed_or_other_layers_is_refused(tmp_path: Path) -> None:
    saved = killed_after(training(), 1)
    assert "seed" in (checkpoint.mismatch(saved, training(), SEED + 1) or "")
    other = training()
    other.model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    assert "layers" in (checkpoint.mismatch(saved, other, SEED) or "")


def test_a_file_that_is_not_a_checkpoint_does_not_load(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "epoch-00001.pt")
    with pytest.raises(ValueError, match="not a searchlab checkpoint"):
        checkpoint.load(tmp_path / "epoch-00001.pt")
    (tmp_path / "epoch-00002.pt").write_bytes(b"truncated")
    with pytest.raises(Exception):  # noqa: B017 (torch's own error for a cut file)
        checkpoint.load(tmp_path / "epoch-00002.pt")
    assert checkpoint.epoch_of("checkpoints/epoch-00012.pt") == 12 and checkpoint.epoch_of("model.pt") is None


def test_the_schedule_saves_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: now[0])
    every_epoch, every_minute = checkpoint.Schedule(0), checkpoint.Schedule(60)
    assert every_epoch.due() and every_epoch.due()
    now[0] += 59
    assert not every_minute.due()
    now[0] += 1
    assert every_minute.due() and not every_minute.due()


def test_a_costly_checkpoint_spaces_the_next_ones_to_keep_them_under_one_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: now[0])
    schedule, every_epoch = checkpoint.Schedule(60), checkpoint.Schedule(0)
    schedule.cost = every_epoch.cost = 2.0  # a large model's copy and upload
    assert schedule.interval == pytest.approx(2.0 / checkpoint.MAX_SHARE) == pytest.approx(200)
    now[0] += 199
    assert not schedule.due()
    now[0] += 1
    assert schedule.due()
    assert every_epoch.due() and every_epoch.interval == 0, "0 asks for every epoch, whatever it costs"

"""What a run prepares before it writes anything, and its workers share: the device slots, the study's data split
and starting weights, and the checks that a model is worth sweeping (a validation batch goes through it; it can
overfit one tiny batch)."""

from __future__ import annotations

from dataclasses import dataclass

from searchlab.check import check_study, preflight_model, preflight_pack
from searchlab.config import RunConfig
from searchlab.data import Data, load_split
from searchlab.devices import Slot, assign_slots, cuda_device_count, parse_devices, parse_workers
from searchlab.endpoints import check_tracking_uri
from searchlab.errors import CheckFailed
from searchlab.study import Study
from searchlab.tasks import get_task
from searchlab.transfer import Start
from searchlab.weights import start_weights


@dataclass(frozen=True)
class Prepared:
    """The study's data, prepared for its task, and the weights its trials start from (None: from scratch)."""

    train: Data
    val: Data
    start: Start | None
    searched: tuple[str, ...] = ()  # the space's names and the builder's own (found by the preflight)


def plan_slots(config: RunConfig) -> list[Slot]:
    """The device slots this run's workers take (checked before anything is written)."""
    return assign_slots(
        parse_devices(config.devices, cuda_device_count()),
        parse_workers(config.workers),
        trials_per_device=config.trials_per_device,
        threads=config.threads,
    )


def prepare(study: Study, config: RunConfig, *, preflight: bool = True, check_tracking: bool = False) -> Prepared:
    """Load the split (with the run's seed) and the starting weights; with ``check_tracking``, check the tracking URI
    in between (the weights may come from it); with ``preflight``, run a validation batch through the model a trial
    would build (and, for packed trials, one step of a pack)."""
    train, val = load_split(study, config.seed)
    if check_tracking:
        check_tracking_uri(config.tracking_uri)
    start = start_weights(study, storage=config.storage, tracking_uri=config.tracking_uri)
    searched: tuple[str, ...] = ()
    if preflight:
        searched = tuple(preflight_model(study, get_task(study.task), val, start))
        if config.pack > 1:
            preflight_pack(study, get_task(study.task), train, start)
    return Prepared(train, val, start, searched)


def check_learns(study: Study, prepared: Prepared, config: RunConfig, *, threads: int) -> None:
    """Raise CheckFailed when the model cannot overfit one tiny batch (on ``threads`` torch threads)."""
    result = check_study(study, prepared.train, seed=config.seed, start=prepared.start, threads=threads)
    if not result.passed:
        raise CheckFailed(
            f"the model cannot learn one tiny batch, so the sweep would be wasted: "
            f"{result.summary.removeprefix('check failed: ')} (see 'searchlab check'; "
            "skip with --no-check)"
        )

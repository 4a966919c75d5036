"""Packs in a worker: claim a pack, build and track its members as unpacked trials are, train them together.

A pack starts from one trial the sampler chooses freely. Its shape-defining params (every param but PER_MEMBER's:
batch size, optimizer kind, widths, whatever the model builder suggests) are then fixed for up to K-1 more trials,
enqueued and claimed at once; the sampler (TPE with its constant liar, seeing the pack's running trials) chooses
their lr, momentum, weight decay, dropout and init. So every Kth trial's shape is chosen as in an unpacked search,
and the others search the hyperparameters within it. Members whose models still differ (a retry, a builder that
reads a per-member param) train in packs of their own. Each member is told to Optuna, and its MLflow run closed,
as soon as it stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from searchlab.data import eval_batch_size, make_batches
from searchlab.errors import ConfigError
from searchlab.model import batch_size
from searchlab.objective import Objective, TrackedTrial
from searchlab.outcome import ends_the_search, tell_stopped
from searchlab.pack import PER_MEMBER, Member, fit_pack, signature
from searchlab.settings import PACK_ATTR
from searchlab.storage import Heartbeat
from searchlab.tasks import get_task
from searchlab.train import EarlyStopping, FitResult, FitState, build_trial, fit

ClaimMore = Callable[[dict[str, Any], int, int], list[optuna.Trial]]  # (shared params, how many, first) -> trials


@dataclass
class Claimed:
    """A member from its claim to its end: its Optuna trial, heartbeat, tracking, model and optimizer."""

    optuna_trial: optuna.Trial
    heartbeat: Heartbeat
    tracked: TrackedTrial | None = None
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    ended: bool = False

    def parts(self) -> tuple[TrackedTrial, nn.Module, torch.optim.Optimizer]:
        assert self.tracked is not None and self.model is not None and self.optimizer is not None, "not built"
        return self.tracked, self.model, self.optimizer


class PackRun:
    """One pack's trials in one worker, each told as soon as it ends (``on_trial_end`` hears it)."""

    def __init__(
        self,
        study: optuna.Study,
        objective: Objective,
        *,
        heartbeat: int,
        on_trial_end: Callable[[FrozenTrial], None],
    ) -> None:
        self.study, self.objective, self.heartbeat, self.on_trial_end = study, objective, heartbeat, on_trial_end
        self.task = get_task(objective.study.task)
        self.device = torch.device(objective.slot.torch_device)
        self.claimed: list[Claimed] = []

    def run(self, first: optuna.Trial, size: int, claim_more: ClaimMore) -> None:
        """Build ``first``, claim up to ``size - 1`` more trials with its shape, build them, train the packs."""
        try:
            if not self._start(self._claimed(first)):
                return
            shared = {name: value for name, value in first.params.items() if name not in PER_MEMBER}
            followers = [self._claimed(trial) for trial in claim_more(shared, size - 1, first.number)]
            for claimed in followers:
                self._start(claimed)
            for group in self._groups():
                self._train(group)
        except BaseException as error:  # Ctrl-C or bad input: every member still open fails with it
            for claimed in self.claimed:
                if not claimed.ended:
                    self._end(claimed, error)
            raise

    def _claimed(self, trial: optuna.Trial) -> Claimed:
        """A claimed trial, beating from now on and ended by this pack whatever happens."""
        claimed = Claimed(trial, Heartbeat(self.study._storage, trial._trial_id, self.heartbeat).__enter__())
        self.claimed.append(claimed)
        return claimed

    def _start(self, claimed: Claimed) -> bool:
        """Begin tracking a claimed trial and build its model; a trial that fails here is told at once."""
        trial = claimed.optuna_trial
        try:
            claimed.tracked = self.objective.begin(trial)
            claimed.model, claimed.optimizer = build_trial(
                self.objective.study, claimed.tracked.trial, self.task, self.device, self.objective.start
            )
            claimed.tracked.log_built(claimed.model)
        except Exception as error:
            self._end(claimed, error)
            if ends_the_search(error):
                raise
            return False
        return True

    def _groups(self) -> list[list[Claimed]]:
        """The built members, by what must be equal within a pack: model, batch size, optimizer kind."""
        groups: dict[Any, list[Claimed]] = {}
        for claimed in self.claimed:
            if claimed.ended or claimed.model is None or claimed.tracked is None:
                continue
            key = (signature(claimed.model), batch_size(claimed.tracked.trial.params), type(claimed.optimizer))
            groups.setdefault(key, []).append(claimed)
        return list(groups.values())

    def _train(self, group: list[Claimed]) -> None:
        """Train one group as one pack (alone: the unpacked loop), on the first member's batch order."""
        objective, settings = self.objective, self.objective.settings
        trials = [claimed.parts()[0].trial for claimed in group]
        seed, size = trials[0].seed, batch_size(trials[0].params)
        pack = {"first": trials[0].number, "members": [trial.number for trial in trials], "batch_seed": seed}
        epochs = {"max_epochs": settings.max_epochs, "patience": settings.patience}
        try:  # anything that fails from here fails this pack's members, as a failing trial fails alone
            for claimed in group:
                claimed.optuna_trial.set_user_attr(PACK_ATTR, pack)
            train = make_batches(objective.train_data, size, shuffle=True, seed=seed, device=self.device)
            val_size = eval_batch_size(objective.val_data, size, members=len(group))
            val = make_batches(objective.val_data, val_size, shuffle=False, seed=seed, device=self.device)
            if len(group) == 1:
                tracked, model, optimizer = group[0].parts()
                state = FitState(EarlyStopping(settings.patience))
                tracked.best_weights = lambda: state.best_state
                result = fit(model, optimizer, train, val, self.task, on_epoch=tracked.on_epoch, state=state, **epochs)
                self._end(group[0], result)
                return
            members = []
            for claimed in group:
                tracked, model, optimizer = claimed.parts()
                end = lambda outcome, claimed=claimed: self._end(claimed, outcome)  # noqa: E731
                member = Member(model, optimizer, on_epoch=tracked.on_epoch, on_end=end)
                tracked.best_weights = member.best_weights
                members.append(member)
            fit_pack(members, train, val, self.task, **epochs)
        except Exception as error:  # the pack's training failed: every member still in it fails with it
            for claimed in group:
                if not claimed.ended:
                    self._end(claimed, error)
            if isinstance(error, ConfigError):
                raise

    def _end(self, claimed: Claimed, outcome: FitResult | BaseException) -> None:
        """Close the member's run for how it ended and tell Optuna (whatever closing the run raises), then stop its
        heartbeat. Ctrl-C or bad input met on the way is raised once the trial is told."""
        if claimed.ended:
            return
        claimed.ended = True
        trial, tracked = claimed.optuna_trial, claimed.tracked
        try:
            if isinstance(outcome, FitResult) and tracked is not None and claimed.model is not None:
                try:
                    value = tracked.finish(claimed.model, outcome)
                except BaseException as failure:  # no finite epoch (TrialStopped), weights not logged, Ctrl-C
                    self.on_trial_end(tell_stopped(self.study, trial, failure))
                    if ends_the_search(failure):
                        raise
                else:
                    self.on_trial_end(self.study.tell(trial, value))
                return
            stop = outcome if isinstance(outcome, BaseException) else RuntimeError("the member was never built")
            try:
                if tracked is not None:
                    tracked.fail(stop)
            finally:
                self.on_trial_end(tell_stopped(self.study, trial, stop))
        finally:
            claimed.heartbeat.__exit__(None, None, None)

"""What a run shows: one progress bar for all its workers, and the summary it ends with (where the results are, how
to compare the trials, what the tracking store did not get yet)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from searchlab.budget import count
from searchlab.config import RunConfig
from searchlab.errors import Interrupted, format_value
from searchlab.mlflow_ui import charts_page, experiment_page
from searchlab.results import describe_packs, pack_sizes
from searchlab.settings import FAIL_REASON_ATTR, OBJECTIVE_NAME, RUN_ID_ATTR, default_tracking_uri
from searchlab.storage import DEFAULT_JOURNAL, mask_password
from searchlab.unsent import unsent_folder, unsent_runs


def how_to_compare(experiment_id: str) -> str:
    """The parent run's description (markdown, rendered on its page in the MLflow UI; its links stay in the UI)."""
    return f"""One searchlab run of this study; each child run is one trial.

* **Compare trials**: [the experiment's charts]({charts_page("", experiment_id)}) (searchlab's view): parallel
  coordinates of every param against `best_val_loss` (a trial's value: its best epoch's validation loss; a pruned
  trial's: its best before it was pruned), the per-epoch `val_loss` and `train_loss` curves (`val_loss`'s last
  point is the last epoch, not the best), a scatter chart per param and a contour, over every trial.
  MLflow's *Compare* page (select trial runs, press *Compare*) opens its parallel coordinates on three params
  and one metric, which it chooses: add the others there, and plot `best_val_loss`.
* **Run names** say the trial number and its headline: `trial-12 best_val_loss=0.0345`, `trial-3 pruned@4`.
* **Report**: this run's *Artifacts* tab, `report/`: `summary.md` (the best trials, pruned and failed counts and
  reasons) and `report.html` (Optuna's plots; interactive ones: `searchlab dashboard`); `searchlab report FILE`
  adds PNGs.
* **Best model**: registered under the study's name with the alias `best` (*Model registry* in the sidebar; the
  experiment's own Models tab lists logged models, and stays empty); load it with
  `searchlab best FILE --load` or `searchlab.load_model("models:/NAME@best", FILE)`.
* **Layout**: MLflow 3 opens pages in its GenAI layout (Traces, Judges) until the browser picks *Model training*
  at the top of the sidebar once; searchlab's links open the model-training one.
"""


@dataclass
class RunSummary:
    """Where one invocation's results are, and how it went."""

    study_name: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    n_trials: int = 0
    states: dict[str, int] = field(default_factory=dict)
    best: FrozenTrial | None = None
    published: list[str] = field(default_factory=list)  # where the report and the registered model are
    notes: list[str] = field(default_factory=list)  # what the tracking store did not get yet
    packs: list[int] = field(default_factory=list)  # members per pack of this run's packed trials
    first_failure: str = ""  # the first failed trial of this run and why

    def failure(self) -> str | None:
        """Why this run produced nothing (some trial failed and none completed), or None: ``run`` exits 1 on it."""
        if self.states.get("COMPLETE") or not self.states.get("FAIL"):
            return None
        counts = ", ".join(f"{n} {'failed' if state == 'FAIL' else state.lower()}" for state, n in self.states.items())
        return f"no trial completed this run: {counts} ({self.first_failure})"

    def lines(self) -> list[str]:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(self.states.items())) or "none"
        lines = [
            f"study      {self.study_name}: {self.n_trials} trials this run ({counts})",
            f"storage    {self.storage}",
            f"tracking   {mask_password(self.tracking_uri)} (experiment {self.experiment_id}, "
            f"parent run {self.parent_run_id})",
        ]
        if self.best is not None:
            params = ", ".join(f"{k}={format_value(v, 4)}" for k, v in self.best.params.items())
            lines.append(
                f"best       trial {self.best.number}: {OBJECTIVE_NAME}={self.best.value:.6g} "
                f"(run {self.best.user_attrs.get(RUN_ID_ATTR, 'not sent yet')}) {params}"
            )
        if self.packs:
            lines.append(f"packs      {describe_packs(self.packs)}")
        lines += self.published + self.notes
        if self.tracking_uri.startswith(("http://", "https://")):
            base = mask_password(self.tracking_uri).rstrip("/")
            lines.append(
                f"open       {experiment_page(base, self.experiment_id)} "
                f"(charts: {charts_page(base, self.experiment_id)})"
            )
        else:
            tracking = (
                ""
                if self.tracking_uri == default_tracking_uri()
                else _flag("--tracking-uri", mask_password(self.tracking_uri), "SEARCHLAB_TRACKING_URI")
            )
            storage = "" if self.storage == DEFAULT_JOURNAL else _flag("--storage", self.storage, "SEARCHLAB_STORAGE")
            name = shlex.quote(self.study_name)  # pasted into a shell: a name like "a;$(id)" must stay one word
            lines.append(
                f"compare    searchlab ui --study-name {name}{tracking} (MLflow UI); searchlab "
                f"dashboard --study-name {name}{storage} (Optuna dashboard)"
            )
        return lines

    def record(self, new: list[FrozenTrial], best: FrozenTrial | None) -> None:
        """Count the trials this run added, and keep the study's best."""
        self.n_trials = count(new).final
        self.states = {}
        for trial in new:
            self.states[trial.state.name] = self.states.get(trial.state.name, 0) + 1
        self.best = best
        self.packs = pack_sizes(new)
        failed = [trial for trial in new if trial.state == TrialState.FAIL]
        if failed:
            reason = failed[0].user_attrs.get(FAIL_REASON_ATTR, "its worker died")
            self.first_failure = f"trial {failed[0].number}: {reason}"


class StudyInterrupted(Interrupted):
    """Ctrl-C stopped the run after every open trial and run was closed; carries the summary."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__("interrupted")
        self.summary = summary


def _flag(name: str, masked_url: str, variable: str) -> str:
    """A flag to copy into a shell, quoted: a URL whose password is masked would not work, so point at its variable
    instead."""
    return f' {name} "${variable}"' if "***" in masked_url else f" {name} {shlex.quote(masked_url)}"


def unsent_note(tracking_uri: str) -> list[str]:
    """The summary line saying what waits on disk for the tracking store, and who sends it (none if nothing)."""
    waiting = unsent_runs(tracking_uri)
    return (
        [
            f"unsent     {waiting} trial run(s) could not reach MLflow: saved in {unsent_folder(tracking_uri)}; the "
            "next run on this tracking URI sends them"
        ]
        if waiting
        else []
    )


def show_trials(bar: Any, trials: list[FrozenTrial], *, final: int | None = None) -> None:
    """Report newly finished trials and the best value so far; the bar counts final outcomes (``final``, or
    one per trial; a failed trial that is retried counts through its retry)."""
    for trial in trials:
        if trial.state == TrialState.FAIL:
            bar.write(
                f"trial {trial.number} failed: {trial.user_attrs.get(FAIL_REASON_ATTR, 'its worker died')}",
                file=sys.stderr,
            )
        if trial.state == TrialState.COMPLETE and (bar.best is None or trial.value < bar.best.value):
            bar.best = trial
    bar.update(len(trials) if final is None else final - bar.n)
    if bar.best is not None:
        bar.set_postfix_str(f"best={bar.best.value:.4g} (trial {bar.best.number})")


def progress_bar(config: RunConfig, *, enabled: bool, total: int) -> Any:
    """One bar for all workers: final outcomes of this run (retries of earlier runs' dead trials included)."""
    from tqdm import tqdm

    desc = config.study_name if config.pack == 1 else f"{config.study_name} (packs of {config.pack})"
    bar = tqdm(total=total, desc=desc, unit="trial", file=sys.stderr, disable=not enabled, dynamic_ncols=True)
    bar.best = None
    return bar

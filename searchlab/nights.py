"""What one nightly sweep decided, and the record of the nights: promote tonight's best, hold the champion, or
report that the champion got worse on the new data; and the night-over-night summary.

Each night is one study attribute of its own (``NIGHT_ATTR_PREFIX`` + its number), written once: a year of nights
adds a year of records, where one list rewritten every night grew the journal by the square of the nights.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from searchlab.errors import EXIT_FAILED, EXIT_OK, EXIT_WORSE, format_value
from searchlab.settings import NIGHT_ATTR_PREFIX, OLD_NIGHTS_ATTR

DETAILED_NIGHTS = 14  # the summary's table of nights, one row each; earlier nights are summed up by week and month
WEEKLY_NIGHTS = 91  # nights older than the detailed ones, up to this age, by ISO week; older ones by month


@dataclass
class Night:
    """What one night did and decided; stored in the study (``night_key``) and on the night's parent run."""

    night: int
    started: str
    decision: str = "failed"
    exit_code: int = EXIT_FAILED
    reason: str = ""
    sweep_failed: bool = False  # the run stopped with an error: nothing is promoted, whatever completed
    parent_run_id: str | None = None
    trials: int = 0
    reevaluated: int = 0
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    champion_before: str | None = None  # the version number
    champion_recorded: float | None = None  # its value when it was promoted
    champion_tonight: float | None = None  # its value on tonight's data
    champion_after: str | None = None
    champion_configuration: str = ""  # tonight's best is the champion's configuration: "same seed", "another seed"
    importances: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        reason = f": {self.reason}" if self.reason else ""
        lines = [f"night      {self.night}: {self.decision} (exit {self.exit_code}){reason}"]
        if self.best_value is not None:
            lines.append(
                f"tonight    best val_loss {self.best_value:.6g} (trial {self.best_trial}) of {self.trials} "
                f"trials, {self.reevaluated} re-evaluated"
            )
        if self.champion_before is not None:
            lines.append(
                f"champion   version {self.champion_before}: {format_value(self.champion_recorded, none='-')} when "
                f"promoted, {format_value(self.champion_tonight, none='-')} on tonight's data"
            )
        if self.champion_after is not None:
            lines.append(f"champion   now version {self.champion_after}")
        return lines


def night_key(number: int) -> str:
    """The study attribute holding night ``number``'s record."""
    return f"{NIGHT_ATTR_PREFIX}{number:05d}"


def recorded_nights(study_attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every night recorded in a study's user attributes, in order (the old single list too)."""
    nights = {night["night"]: night for night in study_attrs.get(OLD_NIGHTS_ATTR, [])}
    nights.update((value["night"], value) for key, value in study_attrs.items() if key.startswith(NIGHT_ATTR_PREFIX))
    return [nights[number] for number in sorted(nights)]


def decide(night: Night, threshold: float) -> bool:
    """Set the night's decision and exit code; True when tonight's best is to be promoted."""
    if night.best_value is None or night.sweep_failed:
        night.decision, night.exit_code = "failed", EXIT_FAILED
        night.reason = night.reason or "no trial completed tonight"
        return False
    if night.champion_tonight is None:
        night.decision, night.exit_code = "promoted", EXIT_OK
        night.reason = night.reason or "the first champion"
        return True
    beats = night.best_value <= night.champion_tonight * (1 - threshold)
    if beats and night.champion_configuration != "another seed":
        night.decision, night.exit_code = "promoted", EXIT_OK
        retrained = "the champion's configuration retrained on tonight's data: " * bool(night.champion_configuration)
        night.reason = (
            f"{retrained}{night.best_value:.6g} beats the champion's {night.champion_tonight:.6g} by more than "
            f"{threshold:.0%}"
        )
        return True
    if night.champion_recorded is not None and night.champion_tonight > night.champion_recorded * (1 + threshold):
        night.decision, night.exit_code = "champion worse", EXIT_WORSE
        night.reason = (
            f"the champion scores {night.champion_tonight:.6g} on tonight's data against "
            f"{night.champion_recorded:.6g} when promoted, and tonight's best ({night.best_value:.6g}) "
            "does not beat it"
        )
        return False
    night.decision, night.exit_code = "held", EXIT_OK
    night.reason = (
        f"tonight's best {night.best_value:.6g} does not beat the champion's {night.champion_tonight:.6g} "
        f"by {threshold:.0%}"
    )
    if beats:  # another seed of the same configuration: what it gains is the seed's luck
        night.reason = (
            f"tonight's best ({night.best_value:.6g}) is the champion's configuration with another seed: it beats "
            f"the champion's {night.champion_tonight:.6g} by seed noise, not by a better configuration"
        )
    return False


def summary_markdown(study_name: str, nights: list[dict[str, Any]]) -> str:
    """Night over night: the best value per night, what changed in the best params, importance drift."""
    tonight = nights[-1]
    lines = [
        f"# Nightly sweeps of {study_name}",
        "",
        f"Tonight (night {tonight['night']}): **{tonight['decision']}** "
        f"(exit {tonight['exit_code']}). {tonight['reason']}",
        "",
        "## Best value per night",
        "",
        "| night | started | trials | best val_loss | champion on that night's data | decision |",
        "|---|---|---|---|---|---|",
    ]
    detailed = nights[-DETAILED_NIGHTS:]
    lines += [
        f"| {n['night']} | {n['started']} | {n['trials']} | {format_value(n['best_value'], none='-')} | "
        f"{format_value(n['champion_tonight'], none='-')} | {n['decision']} |"
        for n in detailed
    ]
    earlier = nights[: -len(detailed)]
    if earlier:
        lines += [
            "",
            f"## Earlier nights ({len(earlier)}): by week for {WEEKLY_NIGHTS} nights, by month before",
            "",
            "| period | nights | trials | best val_loss | promoted | champion worse | failed |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [_period_row(period, group) for period, group in _periods(earlier)]
    previous = next((n for n in reversed(nights[:-1]) if n["best_params"]), None)
    if previous is not None and tonight["best_params"]:
        names = sorted(set(previous["best_params"]) | set(tonight["best_params"]))
        changed = [
            (name, previous["best_params"].get(name), tonight["best_params"].get(name))
            for name in names
            if previous["best_params"].get(name) != tonight["best_params"].get(name)
        ]
        lines += ["", f"## Best params: night {previous['night']} → tonight", ""]
        if changed:
            lines += ["| param | before | tonight |", "|---|---|---|"]
            lines += [f"| {name} | {format_value(old)} | {format_value(new)} |" for name, old, new in changed]
        else:
            lines.append("Unchanged.")
    drift_from = next((n for n in reversed(nights[:-1]) if n["importances"]), None)
    if drift_from is not None and tonight["importances"]:
        names = sorted(
            set(drift_from["importances"]) | set(tonight["importances"]),
            key=lambda name: -tonight["importances"].get(name, 0.0),
        )
        lines += [
            "",
            f"## Parameter importance drift: night {drift_from['night']} → tonight",
            "",
            "| param | before | tonight | change |",
            "|---|---|---|---|",
        ]
        for name in names:
            old, new = drift_from["importances"].get(name, 0.0), tonight["importances"].get(name, 0.0)
            lines.append(f"| {name} | {old:.3f} | {new:.3f} | {new - old:+.3f} |")
    return "\n".join(lines) + "\n"


def _periods(nights: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Nights grouped by ISO week (the latest ``WEEKLY_NIGHTS``) or by month (older ones), newest group first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for age, night in enumerate(reversed(nights)):
        day = datetime.datetime.strptime(night["started"][:10], "%Y-%m-%d").date()
        year, week, _ = day.isocalendar()
        period = f"{year}-W{week:02d}" if age < WEEKLY_NIGHTS else f"{day:%Y-%m}"
        groups.setdefault(period, []).append(night)
    return list(groups.items())


def _period_row(period: str, nights: list[dict[str, Any]]) -> str:
    values = [n["best_value"] for n in nights if n["best_value"] is not None]
    decisions = [n["decision"] for n in nights]
    return (
        f"| {period} | {len(nights)} | {sum(n['trials'] for n in nights)} | "
        f"{format_value(min(values) if values else None, none='-')} | {decisions.count('promoted')} | "
        f"{decisions.count('champion worse')} | {decisions.count('failed')} |"
    )

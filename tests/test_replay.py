"""Replaying a trial reproduces its recorded curve exactly on the CPU."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from conftest import write_study

from searchlab.cli import main


def test_replay_reproduces_trials_exactly(workdir: Path) -> None:
    path = write_study(workdir, max_epochs=12, patience=4)
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "2", "--seed", "3", "--threads", "2"]).exit_code == 0
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "2", "--workers", "2"]).exit_code == 0
    for number in range(4):  # two in this process (2 threads), two in worker processes (1 thread each)
        result = CliRunner().invoke(main, ["replay", str(number), str(path)])
        assert result.exit_code == 0, result.output
        lines = result.output.strip().splitlines()
        assert lines[0].split() == ["epoch", "recorded", "replayed", "difference"]
        assert lines[-1].startswith("replay: identical to the recorded curve")
        assert all(row.split()[1] == row.split()[2] for row in lines[1:-1])


def test_replay_of_a_missing_trial_is_bad_input(workdir: Path) -> None:
    path = write_study(workdir)
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "1"]).exit_code == 0
    result = CliRunner().invoke(main, ["replay", "7", str(path)])
    assert result.exit_code == 2 and "no trial 7: the study has trials 0..0" in result.output


def test_a_packed_trial_without_dropout_replays_alone_within_the_stated_tolerance(workdir: Path) -> None:
    path = write_study(
        workdir, max_epochs=8, patience=8, extra='space={**sl.default_space(), "dropout": sl.Fixed(0.0)}'
    )
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "3", "--pack", "3"]).exit_code == 0
    for number in range(3):
        result = CliRunner().invoke(main, ["replay", str(number), str(path)])
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines()[-1].startswith("replay: identical within 0.0001 relative (packed")


def test_a_packed_trial_with_dropout_says_why_it_cannot_replay(workdir: Path) -> None:
    path = write_study(workdir)
    assert CliRunner().invoke(main, ["run", str(path), "--trials", "2", "--pack", "2"]).exit_code == 0
    result = CliRunner().invoke(main, ["replay", "1", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-2] == (
        "replay: its pack drew the dropout masks of all its members at once: trained alone, it draws others"
    )
    assert lines[-1].startswith("replay: different to the recorded curve")

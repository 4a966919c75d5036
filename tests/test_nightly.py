"""Nightly sweeps: warm start, re-evaluation, the single-instance lock, champion promotion and exit codes."""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import POSTGRES_URL, SEARCHLAB, clean_env, default_sigint, write_study
from mlflow import MlflowClient

from searchlab.cli import main
from searchlab.nightly import CHAMPION_ALIAS, NIGHTLY_FOLDER, best_configurations, same_configuration
from searchlab.nights import Night, decide, night_key, recorded_nights, summary_markdown
from searchlab.settings import OLD_NIGHTS_ATTR
from searchlab.storage import close_storage, open_storage

# A study whose validation targets get noisier when noise.txt says so: "the data changed overnight".
NOISY_DATA = """
def data(seed):
    from pathlib import Path
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(160, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(160, generator=g)
    noise = float(Path("noise.txt").read_text()) if Path("noise.txt").exists() else 0.0
    y = y + noise * torch.randn(160, generator=torch.Generator().manual_seed(99))
    return sl.Split(train=(x[:120], y[:120]), val=(x[120:], y[120:]))
"""


def nightly_study(folder: Path) -> Path:
    path = write_study(folder, name="nightly", max_epochs=8, patience=8)
    text = path.read_text()
    start, end = text.index("def data(seed):"), text.index("def model(trial):")
    path.write_text(text[:start] + NOISY_DATA.lstrip() + "\n\n" + text[end:])
    return path


def night(*args: str) -> object:
    return CliRunner().invoke(main, ["nightly", *args], catch_exceptions=False)


def nights(workdir: Path) -> tuple[optuna.Study, list[dict]]:
    study = optuna.load_study(study_name="nightly", storage=open_storage(str(workdir / "searchlab.journal")))
    return study, recorded_nights(study.user_attrs)


def test_nights_warm_start_reevaluate_promote_hold_and_alert(workdir: Path) -> None:
    study_file = nightly_study(workdir)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")

    first = night(str(study_file), "--trials", "4", "--threshold", "0.5")
    assert first.exit_code == 0, first.output
    assert "night      1: promoted (exit 0): the first champion" in first.output
    study, records = nights(workdir)
    champion = client.get_model_version_by_alias("nightly", CHAMPION_ALIAS)
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert records[0]["champion_after"] == champion.version

    # Night 2, same data: the two best configurations run first; nothing beats the champion by 90%: held.
    best_two = [t.params for t in sorted((t for t in study.trials if t.value is not None), key=lambda t: t.value)[:2]]
    second = night(str(study_file), "--trials", "4", "--reevaluate", "2", "--threshold", "0.9")
    assert second.exit_code == 0, second.output
    assert "night      2: held (exit 0)" in second.output
    study, records = nights(workdir)
    assert [t.params for t in study.trials[4:6]] == best_two  # re-evaluated first, on tonight's data
    assert len(study.trials) == 8  # --trials counts the re-evaluations
    assert records[1]["reevaluated"] == 2 and records[1]["champion_tonight"] == pytest.approx(
        records[0]["best_value"], rel=1e-5
    )  # same data: the champion scores what it scored
    assert client.get_model_version_by_alias("nightly", CHAMPION_ALIAS).version == champion.version
    parent = client.get_run(records[1]["parent_run_id"])
    assert parent.data.tags["nightly_decision"] == "held" and parent.data.tags["nightly_exit_code"] == "0"
    summary = Path(client.download_artifacts(parent.info.run_id, f"{NIGHTLY_FOLDER}/summary.md", str(workdir)))
    text = summary.read_text()
    assert "| 1 |" in text and "| 2 |" in text and "## Best value per night" in text
    assert "## Best params: night 1 → tonight" in text and "## Parameter importance drift: night 1 → tonight" in text

    # Night 3: the validation data got much noisier; the champion is worse and nothing replaces it: exit 3.
    (workdir / "noise.txt").write_text("3.0")
    third = night(str(study_file), "--trials", "3", "--threshold", "0.5", "--no-check")
    assert third.exit_code == 3, third.output
    assert "night      3: champion worse (exit 3)" in third.output
    _, records = nights(workdir)
    assert records[2]["champion_tonight"] > 1.5 * records[0]["best_value"]
    assert client.get_model_version_by_alias("nightly", CHAMPION_ALIAS).version == champion.version


def test_a_failed_sweep_exits_1_and_is_recorded(workdir: Path) -> None:
    study_file = write_study(workdir, name="nightly", extra="space=sl.default_space(lr=1e-12)")
    result = night(str(study_file), "--trials", "2")
    assert result.exit_code == 1, result.output
    assert "night      1: failed (exit 1): the model cannot learn one tiny batch" in result.output


def test_a_second_night_during_the_first_exits_with_a_clear_message(workdir: Path) -> None:
    study_file = write_study(workdir, name="nightly", max_epochs=200, patience=200)
    first = subprocess.Popen(
        [SEARCHLAB, "nightly", str(study_file), "--trials", "500"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    lock = workdir / "searchlab.journal.nightly.nightly-lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.2)
    holder = lock.read_text()
    second = CliRunner().invoke(main, ["nightly", str(study_file), "--trials", "2"])
    assert second.exit_code == 1
    (line,) = second.output.strip().splitlines()
    assert line == f"Error: another nightly of study 'nightly' is running ({holder}): this one exits without running"
    first.send_signal(2)  # Ctrl-C: the first night stops, closes its runs and releases the lock
    assert first.wait(timeout=120) == 130
    assert not lock.exists(), "the lock's file goes with the lock"


def test_the_postgresql_lock_holds_all_night_without_an_open_transaction(workdir: Path) -> None:
    name = f"night-{uuid.uuid4().hex[:8]}"
    study_file = write_study(workdir, name=name, max_epochs=200, patience=200)
    args = ["--storage", POSTGRES_URL, "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    # A server that kills sessions idle in a transaction for 1 s would end a lock held inside one.
    env = clean_env(PGOPTIONS="-c idle_in_transaction_session_timeout=1000")
    first = subprocess.Popen(
        [SEARCHLAB, "nightly", str(study_file), "--trials", "500", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    storage = open_storage(POSTGRES_URL)  # one, for the polls below: each storage pools its own connections
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until the first night trains
            try:
                study = optuna.load_study(study_name=name, storage=storage)
                if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                    break
            except KeyError:
                pass
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.3)
        time.sleep(2)  # past the idle-in-transaction timeout
        second = CliRunner().invoke(main, ["nightly", str(study_file), "--trials", "2", *args])
        assert second.exit_code == 1, second.output
        assert f"another nightly of study {name!r} is running (PostgreSQL advisory lock" in second.output
        first.send_signal(2)
        assert first.wait(timeout=120) == 130, first.communicate()
        assert "Traceback" not in first.communicate()[1]
    finally:
        if first.poll() is None:
            first.kill()
        optuna.delete_study(study_name=name, storage=storage)
        close_storage(storage)


def test_a_missing_storage_folder_is_one_line(workdir: Path, study_file: Path) -> None:
    result = CliRunner().invoke(main, ["nightly", str(study_file), "--storage", "nowhere/x.journal"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: storage folder 'nowhere' does not exist: create it or choose another path"


def test_a_failed_sweep_promotes_nothing_even_with_completed_trials() -> None:
    result = Night(
        1,
        "now",
        best_value=0.1,
        champion_tonight=0.5,
        champion_recorded=0.5,
        sweep_failed=True,
        reason="workers keep dying",
    )
    assert decide(result, threshold=0.1) is False
    assert (result.decision, result.exit_code, result.reason) == ("failed", 1, "workers keep dying")


@pytest.mark.parametrize(
    ("best", "champion_tonight", "champion_recorded", "decision", "code"),
    [
        (0.5, None, None, "promoted", 0),  # no champion yet
        (0.40, 0.50, 0.50, "promoted", 0),  # 20% better than the champion on tonight's data
        (0.49, 0.50, 0.50, "held", 0),  # better, but by less than the 10% threshold
        (0.78, 0.80, 0.50, "champion worse", 3),  # the champion lost 60% and tonight's best does not replace it
        (0.30, 0.80, 0.50, "promoted", 0),  # the champion got worse, and tonight's best replaces it
        (None, 0.50, 0.50, "failed", 1),  # no trial completed tonight
    ],
)
def test_the_promotion_rule(
    best: float | None, champion_tonight: float | None, champion_recorded: float | None, decision: str, code: int
) -> None:
    result = Night(1, "now", best_value=best, champion_tonight=champion_tonight, champion_recorded=champion_recorded)
    promote = decide(result, threshold=0.1)
    assert (result.decision, result.exit_code, promote) == (decision, code, decision == "promoted")


def a_night(number: int, day: datetime.date, best: float, decision: str = "held") -> dict:
    return dataclasses.asdict(
        Night(number, f"{day:%Y-%m-%d} 02:00:00", decision=decision, trials=50, best_value=best, best_trial=number)
    )


def test_nights_are_read_from_their_own_attributes_and_from_the_old_single_list() -> None:
    day = datetime.date(2026, 1, 1)
    attrs = {
        OLD_NIGHTS_ATTR: [a_night(1, day, 0.5), a_night(2, day, 0.4)],
        night_key(3): a_night(3, day, 0.3),
        night_key(10): a_night(10, day, 0.2),
        "searchlab_budget": 5,
    }
    assert night_key(3) == "searchlab_night:00003"
    assert [night["night"] for night in recorded_nights(attrs)] == [1, 2, 3, 10]


def test_a_year_of_nights_sums_up_by_week_and_by_month_before_the_last_two_weeks() -> None:
    first = datetime.date(2025, 12, 7)
    nights = [a_night(n, first + datetime.timedelta(days=n - 1), 1.0 / n) for n in range(1, 366)]
    nights[100]["decision"] = "promoted"
    text = summary_markdown("regression", nights)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| param")]
    detailed = [row for row in rows if row.split(" | ")[0][2:].isdigit()]
    assert [int(row.split(" | ")[0][2:]) for row in detailed] == list(range(352, 366))  # the last 14 nights
    weeks = [row for row in rows if "-W" in row.split(" | ")[0]]
    months = [row for row in rows if len(row.split(" | ")[0][2:]) == 7]
    assert sum(int(row.split(" | ")[1]) for row in weeks) == 91  # nights 261-351, by ISO week
    assert sum(int(row.split(" | ")[1]) for row in weeks + months) == 365 - 14
    assert months[0].startswith("| 2026-08 |") and months[-1].startswith("| 2025-12 |")  # newest first
    march = next(row for row in months if row.startswith("| 2026-03 |"))
    assert march.split(" | ")[2:5] == ["1550", f"{1 / 115:.6g}", "1"]  # 31 nights, best of the month, a promotion
    assert len(text) < 12_000  # readable: ~70 table rows, not 365


def test_the_best_configurations_of_all_nights_are_distinct_even_when_one_was_re_evaluated_every_night() -> None:
    study = optuna.create_study()
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    for night in range(20):  # the best configuration re-evaluated every night, always near the top
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions=space, value=0.10 + night / 1e4))
    for number in range(40):
        lr = 0.001 + number / 1000
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=space, value=0.2 + number / 100))
    every = sorted(study.trials, key=lambda t: t.value)
    expected: list[dict] = []
    for trial in every:
        if trial.params not in expected:
            expected.append(trial.params)
    assert [trial.params for trial in best_configurations(study, 3)] == expected[:3]
    assert [trial.params for trial in best_configurations(study, 100)] == expected  # fewer than asked: all of them
    assert best_configurations(study, 0) == []


def test_a_re_evaluation_retrains_the_configuration_with_its_own_seed(workdir: Path) -> None:
    """The champion's configuration re-evaluated on the same data must score what it scored, not what another
    initialisation gives: a new seed made seed noise look like an improvement (and promoted it)."""
    study_file = nightly_study(workdir)
    assert night(str(study_file), "--trials", "4").exit_code == 0
    study, _ = nights(workdir)
    champion = study.best_trial
    second = night(str(study_file), "--trials", "2", "--reevaluate", "1")
    assert second.exit_code == 0, second.output
    study, records = nights(workdir)
    again = study.trials[4]
    assert again.params == champion.params
    assert again.user_attrs["reevaluates"] == {"trial": champion.number, "seed": champion.user_attrs["seed"]}
    assert again.user_attrs["seed"] == champion.user_attrs["seed"]
    assert again.value == pytest.approx(champion.value, rel=1e-6)  # same data, same seed, on the CPU
    assert records[1]["champion_tonight"] == pytest.approx(champion.value, rel=1e-5)
    if records[1]["decision"] == "promoted":  # only a new configuration can beat it
        assert records[1]["best_trial"] == 5, records[1]


def test_the_champion_s_configuration_with_another_seed_is_not_promoted() -> None:
    lucky = Night(2, "now", best_value=0.40, champion_tonight=0.50, champion_recorded=0.50)
    lucky.champion_configuration = "another seed"
    assert decide(lucky, threshold=0.1) is False
    assert (lucky.decision, lucky.exit_code) == ("held", 0) and "seed noise" in lucky.reason
    retrained = Night(2, "now", best_value=0.40, champion_tonight=0.50, champion_recorded=0.45)
    retrained.champion_configuration = "same seed"  # the data changed: the same configuration, retrained on it
    assert decide(retrained, threshold=0.1) is True
    assert retrained.reason.startswith("the champion's configuration retrained on tonight's data: 0.4 beats")


def test_same_configuration_compares_params_seed_and_batch_order() -> None:
    def trial(lr: float, seed: int, pack: dict | None = None) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            params={"lr": lr, "batch_size": 32},
            distributions={
                "lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
                "batch_size": optuna.distributions.CategoricalDistribution([32, 64]),
            },
            value=0.1,
            user_attrs={"seed": seed, **({"pack": pack} if pack else {})},
        )

    champion = trial(0.01, 7)
    assert same_configuration(trial(0.01, 7), champion) == "same seed"
    assert same_configuration(trial(0.01, 7, {"first": 3, "batch_seed": 7}), champion) == "same seed"
    assert same_configuration(trial(0.01, 8), champion) == "another seed"
    # trained in a pack on another member's batch order: retrained alone, its batches come in another order
    packed = trial(0.01, 7, {"first": 2, "batch_seed": 5})
    assert same_configuration(trial(0.01, 7), packed) == "another seed"
    assert same_configuration(trial(0.02, 7), champion) == ""

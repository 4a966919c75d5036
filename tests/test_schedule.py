"""Scheduling nightly sweeps: crontab line, systemd units, Kubernetes CronJob, and the in-process loop."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from conftest import SEARCHLAB, clean_env, write_study
from croniter import croniter

from searchlab.cli import main
from searchlab.nights import recorded_nights
from searchlab.schedule import read_env_file, serve, systemd_calendar
from searchlab.storage import open_storage


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def parses(command: list[str]) -> None:
    """The command line is a real `searchlab` command: it parses through the click group."""
    assert Path(command[0]).name == "searchlab"
    context = main.make_context("searchlab", list(command[1:]), resilient_parsing=False)
    name, sub, rest = main.resolve_command(context, context.protected_args + context.args)
    sub.make_context(name, rest, parent=context)


def test_cron_format_prints_one_crontab_line(workdir: Path, study_file: Path) -> None:
    result = invoke("schedule", str(study_file), "--cron", "0 2 * * *", "--trials", "30", "--reevaluate", "3")
    assert result.exit_code == 0, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("0 2 * * * cd ") and line.endswith("# searchlab-nightly-tiny")
    command = line.split(" && ")[-1].split(" >> ")[0].split()
    assert command[1:4] == ["nightly", "--env-file", '"$HOME/.config/searchlab/env"']
    assert command[4:] == [str(study_file.resolve()), "--trials", "30", "--reevaluate", "3"]
    parses(command)


@pytest.mark.parametrize(
    "cron",
    [
        "0 2 * * *",
        "*/15 9-17 * * 1-5",
        "30 4 1,15 * *",
        "0 0 * * 0",
        "5 */6 * 2-11 *",
        "0 2 * * mon-fri",
        "0 3 * JAN,jul *",
    ],
)
def test_systemd_calendar_fires_when_cron_does(cron: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    start = datetime(2026, 11, 25, 20, 41, 7)
    result = subprocess.run(
        [analyze, "calendar", "--iterations=4", f"--base-time={start:%Y-%m-%d %H:%M:%S} UTC", systemd_calendar(cron)],
        capture_output=True,
        text=True,
        env={**clean_env(), "TZ": "UTC"},
        check=True,
    )
    elapses = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", result.stdout)
    expected = croniter(cron, start)
    assert elapses == [expected.get_next(datetime).strftime("%Y-%m-%d %H:%M:%S") for _ in elapses]
    assert len(elapses) == 4


def test_systemd_format_prints_a_service_and_a_timer(workdir: Path, study_file: Path) -> None:
    result = invoke("schedule", str(study_file), "--cron", "0 2 * * *", "--format", "systemd")
    assert result.exit_code == 0, result.output
    assert "# searchlab-nightly-tiny.service" in result.output and "# searchlab-nightly-tiny.timer" in result.output
    exec_start = re.search(r"^ExecStart=(.+)$", result.output, re.M).group(1).split()
    parses(exec_start)
    assert "OnCalendar=*-*-* 02:00:00" in result.output and "Type=oneshot" in result.output

    installed = invoke(
        "schedule",
        str(study_file),
        "--cron",
        "0 2 * * *",
        "--format",
        "systemd",
        "--install",
        "--systemd-dir",
        str(workdir / "units"),
    )
    assert installed.exit_code == 0, installed.output
    assert sorted(path.name for path in (workdir / "units").iterdir()) == [
        "searchlab-nightly-tiny.service",
        "searchlab-nightly-tiny.timer",
    ]
    assert "systemctl --user enable --now searchlab-nightly-tiny.timer" in installed.output


def test_k8s_format_prints_a_cronjob(workdir: Path, study_file: Path) -> None:
    result = invoke(
        "schedule", str(study_file), "--cron", "0 2 * * *", "--format", "k8s", "--image", "team/sl:1", "--trials", "20"
    )
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.output)
    assert manifest["kind"] == "CronJob" and manifest["spec"]["schedule"] == "0 2 * * *"
    assert manifest["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "team/sl:1"
    assert container["envFrom"] == [{"secretRef": {"name": "searchlab-env"}}]
    parses(["searchlab", *container["command"][1:]])


def test_install_adds_or_replaces_the_crontab_line(
    workdir: Path, study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for the crontab program that keeps the table in a file.
    bin_folder = workdir / "bin"
    bin_folder.mkdir()
    table = workdir / "table"
    table.write_text("0 1 * * * backup  # mine\n")
    (bin_folder / "crontab").write_text(f'#!/bin/sh\nif [ "$1" = "-l" ]; then cat {table}; else cat > {table}; fi\n')
    (bin_folder / "crontab").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}:{clean_env()['PATH']}")
    for hour in ("2", "3"):
        result = invoke("schedule", str(study_file), "--cron", f"0 {hour} * * *", "--install")
        assert result.exit_code == 0, result.output
    lines = table.read_text().splitlines()
    assert lines[0] == "0 1 * * * backup  # mine"
    assert len(lines) == 2 and lines[1].startswith("0 3 * * * cd ")


def test_bad_schedules_are_one_line(workdir: Path, study_file: Path) -> None:
    cases = [
        (["--cron", "every night"], "is not a cron expression"),
        (["--cron", "0 2 1 * 1", "--format", "systemd"], "cron ORs them, systemd ANDs them"),
        (["--cron", "0 2 * * *", "--format", "k8s", "--install"], "kubectl apply -f -"),
        (["--cron", "* * * * * */5"], "is not a cron expression"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["schedule", str(study_file), *args])
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert message in line


def test_the_loop_runs_each_night_when_due_on_a_fake_clock() -> None:
    clock = [datetime(2026, 11, 25, 1, 59, 30).timestamp()]
    ran_at: list[datetime] = []
    logged: list[str] = []

    def night() -> int:
        ran_at.append(datetime.fromtimestamp(clock[0]))
        clock[0] += 600  # a night takes ten minutes
        return 3 if len(ran_at) == 2 else 0

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    nights = serve("0 2 * * *", night, log=logged.append, max_nights=2, now=lambda: clock[0], sleep=sleep)
    assert nights == 2
    assert ran_at == [datetime(2026, 11, 25, 2, 0), datetime(2026, 11, 26, 2, 0)]
    assert logged == [
        "next night at 2026-11-25 02:00:00",
        "night 1 started",
        "night 1 ended: exit 0 (improved or held)",
        "next night at 2026-11-26 02:00:00",
        "night 2 started",
        "night 2 ended: exit 3 (the champion got worse)",
    ]


def test_serve_runs_real_nights_on_an_every_few_seconds_schedule(workdir: Path) -> None:
    study_file = write_study(workdir, name="served", max_epochs=3)
    result = subprocess.run(
        [
            SEARCHLAB,
            "schedule",
            str(study_file),
            "--cron",
            "* * * * * */2",
            "--serve",
            "--max-nights",
            "2",
            "--trials",
            "2",
        ],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "night 1 ended: exit 0 (improved or held)" in result.stderr
    assert "night 2 ended: exit 0 (improved or held)" in result.stderr
    study = optuna.load_study(study_name="served", storage=open_storage(str(workdir / "searchlab.journal")))
    assert [night["night"] for night in recorded_nights(study.user_attrs)] == [1, 2]
    assert len(study.trials) == 4


def test_a_cron_night_reads_the_same_environment_file_as_systemd(
    workdir: Path, study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cron starts a night with next to no environment: the crontab line loads ~/.config/searchlab/env (systemd's
    EnvironmentFile), so the night's SEARCHLAB_STORAGE is the one set there, not a journal in the working folder."""
    home, elsewhere = workdir / "home", workdir / "stores"
    (home / ".config" / "searchlab").mkdir(parents=True)
    elsewhere.mkdir()
    journal = elsewhere / "nights.journal"
    (home / ".config" / "searchlab" / "env").write_text(f"SEARCHLAB_STORAGE={journal}\n")
    result = invoke("schedule", str(study_file), "--cron", "0 2 * * *", "--trials", "1")
    assert result.exit_code == 0, result.output
    (line,) = result.output.strip().splitlines()
    command = line.removeprefix("0 2 * * * ").rsplit("  # ", 1)[0]
    cron_env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": "root"}
    subprocess.run(["/bin/sh", "-c", command], env=cron_env, cwd="/", check=True, timeout=300)
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(journal)))
    assert len(study.trials) == 1
    assert not (workdir / "searchlab.journal").exists()
    log = (workdir / "searchlab-nightly-tiny.log").read_text()
    assert "night      1: promoted (exit 0)" in log and str(journal) in log


def test_install_puts_this_shell_s_storage_in_the_environment_file_every_format_reads(
    workdir: Path, study_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scheduled from a shell with SEARCHLAB_STORAGE set, the night must use that storage: --install writes it
    (and the tracking URI) into ~/.config/searchlab/env, readable by its owner only, and never prints it."""
    monkeypatch.setenv("HOME", str(workdir / "home"))
    monkeypatch.setenv("SEARCHLAB_STORAGE", "postgresql://bob:s3cret@db/nights")
    units = workdir / "units"
    result = invoke("schedule", str(study_file), "--cron", "0 2 * * *", "--format", "systemd", "--install",
                    "--systemd-dir", str(units))  # fmt: skip
    assert result.exit_code == 0, result.output
    env_file = workdir / "home" / ".config" / "searchlab" / "env"
    assert env_file.read_text() == "SEARCHLAB_STORAGE=postgresql://bob:s3cret@db/nights\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in result.output and str(env_file) in result.output
    assert "s3cret" not in (units / "searchlab-nightly-tiny.service").read_text()
    printed = invoke("schedule", str(study_file), "--cron", "0 2 * * *", "--format", "k8s")
    assert "s3cret" not in printed.output  # the Secret searchlab-env holds it
    assert "kubectl create secret generic searchlab-env --from-env-file" in printed.stderr


def test_k8s_command_names_the_study_file_inside_the_image(
    workdir: Path, study_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The CronJob runs in the image, whose working directory holds the study files where they are under the
    build context: the command names the file relative to here, never by this host's absolute path."""
    (workdir / "studies").mkdir()
    inside = write_study(workdir / "studies", filename="night.py")
    for given in (str(inside), "studies/night.py", "./studies/../studies/night.py"):
        result = invoke("schedule", given, "--cron", "0 2 * * *", "--format", "k8s")
        assert result.exit_code == 0, result.output
        (container,) = yaml.safe_load(result.stdout)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["searchlab", "nightly", "studies/night.py"]
    outside = write_study(tmp_path_factory.mktemp("elsewhere"))
    refused = CliRunner().invoke(main, ["schedule", str(outside), "--cron", "0 2 * * *", "--format", "k8s"])
    assert refused.exit_code == 2
    (line,) = refused.output.strip().splitlines()
    assert "is not under this folder" in line


def test_the_environment_file_is_read_as_systemd_reads_it(tmp_path: Path) -> None:
    """Values are taken as written, one pair of surrounding quotes removed; nothing is expanded or run (sourced by
    a shell, `$`, backticks and `&` would be)."""
    path = tmp_path / "env"
    path.write_text(
        "# storage for the nights\n; another comment\n\n"
        "SEARCHLAB_STORAGE=postgresql://bob:pa$$w&rd`id`@db/x?sslmode=require\n"
        "SEARCHLAB_TRACKING_URI = 'http://127.0.0.1:5000'\n"
        'export SEARCHLAB_TRIALS="30"\n'
        "not a setting\n"
    )
    assert read_env_file(path) == {
        "SEARCHLAB_STORAGE": "postgresql://bob:pa$$w&rd`id`@db/x?sslmode=require",
        "SEARCHLAB_TRACKING_URI": "http://127.0.0.1:5000",
        "SEARCHLAB_TRIALS": "30",
    }
    assert read_env_file(tmp_path / "missing") == {}

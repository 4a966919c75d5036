"""Nightly sweeps on a schedule: a crontab line, a systemd service and timer, a Kubernetes CronJob, or an
in-process scheduler loop for containers (cron expressions parsed by croniter)."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from searchlab.errors import EXIT_MEANINGS, ConfigError

FORMATS = ("cron", "systemd", "k8s")  # what `searchlab schedule --format` writes
# Where a night's settings come from, in every format: this file for cron and systemd (KEY=VALUE lines), the Secret
# searchlab-env (made from it) for a CronJob. A night started by cron or systemd has none of the shell's variables.
ENV_FILE = ".config/searchlab/env"  # under the user's home
SECRET = "searchlab-env"
CARRIED = ("SEARCHLAB_STORAGE", "SEARCHLAB_TRACKING_URI")  # what a night must share with the shell that scheduled it
DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def check_cron(expression: str, *, seconds: bool = False) -> str:
    """The expression, checked: five fields (minute hour day month weekday); six (… seconds) only with --serve."""
    from croniter import croniter

    fields = expression.split()
    if len(fields) not in ((5, 6) if seconds else (5,)) or not croniter.is_valid(expression):
        wanted = (
            "five fields (minute hour day month weekday), or six with seconds last"
            if seconds
            else "five fields: minute hour day month weekday, e.g. '0 2 * * *'"
        )
        raise ConfigError(f"--cron {expression!r} is not a cron expression: write {wanted}")
    return expression


def nightly_command(study_file: str, nightly_args: Sequence[str], searchlab: str | None = None) -> list[str]:
    """The command a scheduled night runs."""
    program = searchlab or str(Path(sys.executable).with_name("searchlab"))
    return [program, "nightly", str(Path(study_file).resolve()), *nightly_args]


def unit_name(study_name: str) -> str:
    return "searchlab-nightly-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in study_name)


def crontab_line(cron: str, command: list[str], workdir: Path, study_name: str) -> str:
    """The line: in ``workdir``, the night reads the environment file (``nightly --env-file``, as systemd's
    EnvironmentFile does: cron starts it with next to no environment) and appends to its log."""
    log = workdir / f"{unit_name(study_name)}.log"
    program, subcommand, *rest = command
    with_env = f'{shlex.join([program, subcommand])} --env-file "$HOME/{ENV_FILE}" {shlex.join(rest)}'
    marker = unit_name(study_name)
    return f"{cron} cd {shlex.quote(str(workdir))} && {with_env} >> {shlex.quote(str(log))} 2>&1  # {marker}"


def env_file() -> Path:
    return Path.home() / ENV_FILE


def read_env_file(path: Path) -> dict[str, str]:
    """The variables a KEY=VALUE file sets, read as systemd's EnvironmentFile is: blank lines and # or ; comments
    skipped, each value taken as written but for one pair of surrounding quotes (nothing is expanded); none when
    there is no such file."""
    variables = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.removeprefix("export ").split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        variables[key] = value
    return variables


def missing_from_env_file(environ: dict[str, str]) -> list[str]:
    """The CARRIED variables set here that the environment file does not set: a night would not see them."""
    defined = read_env_file(env_file())
    return [name for name in CARRIED if environ.get(name) and name not in defined]


def carry_environment(environ: dict[str, str]) -> list[str]:
    """Add the CARRIED variables set here that the environment file lacks to it (created readable by its owner
    only: they hold passwords); returns their names."""
    names = missing_from_env_file(environ)
    if not names:
        return []
    for name in names:  # written as they are: kubectl's --from-env-file, unlike systemd, removes no quotes
        if "\n" in environ[name] or environ[name].startswith(("'", '"')):
            raise ConfigError(f"{name} starts with a quote or holds a newline: write it to ~/{ENV_FILE} by hand")
    path = env_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    text = path.read_text()
    lines = [f"{name}={environ[name]}" for name in names]
    path.write_text(text + ("\n" if text and not text.endswith("\n") else "") + "\n".join(lines) + "\n")
    return names


def image_path(study_file: str) -> str:
    """The study file as a CronJob names it: relative to this folder, as the image holds it under its working
    directory (docker/Dockerfile copies studies/ to /app/studies)."""
    path = Path(study_file).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        raise ConfigError(
            f"--format k8s: {study_file} is not under this folder: run schedule from the folder the image is built "
            "from (where the study file's path is its path in the image)"
        ) from None


NAMED = {name: str(number) for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))} | {
    name: str(number)
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}


def _systemd_field(field: str, low: int, names: Sequence[str] | None = None) -> str:
    """One cron field in systemd calendar syntax: * , a-b and */n or a/n (names of days and months allowed)."""
    field = re.sub(r"[A-Za-z]+", lambda match: NAMED.get(match.group().lower(), match.group()), field)
    if not re.fullmatch(r"[\d*,/-]+", field):
        raise ConfigError(f"cron field {field!r} has no systemd form: use numbers, ranges, lists and steps")
    parts = []
    for part in field.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            base = "*" if not step else str(low)
        first, dash, last = base.partition("-")
        if names is not None and base != "*":
            first = names[int(first)]
            last = names[int(last)] if dash else ""
        if names is None:  # systemd's normal form pads numbers: 02:00:00
            first, last = (f"{int(n):02d}" if n.isdigit() else n for n in (first, last))
        text = f"{first}..{last}" if dash else first
        parts.append(f"{text}/{step}" if step else text)
    return ",".join(parts)


def systemd_calendar(cron: str) -> str:
    """A five-field cron expression as a systemd OnCalendar= value."""
    minute, hour, day, month, weekday = cron.split()
    if day != "*" and weekday != "*":
        raise ConfigError(
            "cron restricts both day of month and weekday (cron ORs them, systemd ANDs them): "
            "use --format cron, or restrict one of them"
        )
    if any(step in weekday for step in "/"):
        raise ConfigError(f"weekday {weekday!r} with a step has no systemd form: list the days instead")
    days = "" if weekday == "*" else _systemd_field(weekday, 0, DAYS) + " "
    return (
        f"{days}*-{_systemd_field(month, 1)}-{_systemd_field(day, 1)} "
        f"{_systemd_field(hour, 0)}:{_systemd_field(minute, 0)}:00"
    )


def systemd_units(cron: str, command: list[str], workdir: Path, study_name: str) -> dict[str, str]:
    """A oneshot service that runs one night, and the timer that starts it (Persistent: a missed night runs at
    boot)."""
    name = unit_name(study_name)
    service = (
        f"[Unit]\nDescription=searchlab nightly sweep of study {study_name}\n"
        "Wants=network-online.target\nAfter=network-online.target\n\n"
        f"[Service]\nType=oneshot\nWorkingDirectory={workdir}\n"
        f"EnvironmentFile=-%h/{ENV_FILE}\n"
        f"ExecStart={shlex.join(command)}\n"
        "# exit 1: the sweep failed; exit 3: the champion got worse on the new data\n"
    )
    timer = (
        f"[Unit]\nDescription=Nightly searchlab sweep of study {study_name} ({cron})\n\n"
        f"[Timer]\nOnCalendar={systemd_calendar(cron)}\nPersistent=true\nUnit={name}.service\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )
    return {f"{name}.service": service, f"{name}.timer": timer}


def cronjob_manifest(cron: str, command: list[str], study_name: str, image: str) -> str:
    """A Kubernetes CronJob that runs one night in the searchlab image; overlapping nights are forbidden, and
    storage and tracking URLs come from the Secret searchlab-env."""
    import yaml

    manifest = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": unit_name(study_name).lower().replace("_", "-")[:52]},
        "spec": {
            "schedule": cron,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 7,
            "failedJobsHistoryLimit": 7,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "nightly",
                                    "image": image,
                                    "command": command,
                                    "envFrom": [{"secretRef": {"name": SECRET}}],
                                    "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
                                }
                            ],
                        }
                    },
                }
            },
        },
    }
    return yaml.safe_dump(manifest, sort_keys=False)


def install_crontab(line: str, marker: str) -> str:
    """Add the line to the user's crontab, replacing an earlier line of the same study; returns the new crontab."""
    try:
        listed = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    except FileNotFoundError:
        raise ConfigError(
            "crontab is not installed here: print the line without --install and add it by hand, "
            "or use --format systemd"
        ) from None
    kept = (
        [entry for entry in listed.stdout.splitlines() if not entry.endswith(f"# {marker}")]
        if listed.returncode == 0
        else []
    )
    crontab = "\n".join([*kept, line]) + "\n"
    written = subprocess.run(["crontab", "-"], input=crontab, capture_output=True, text=True)
    if written.returncode != 0:
        raise ConfigError(f"crontab refused the line: {written.stderr.strip()}")
    return crontab


def install_systemd(units: dict[str, str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in units.items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    return paths


def serve(
    cron: str,
    run_night: Callable[[], int],
    *,
    log: Callable[[str], None],
    max_nights: int | None = None,
    now: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run ``run_night`` at every time ``cron`` names, logging each night's start and outcome, until Ctrl-C or
    ``max_nights`` nights; returns how many nights ran."""
    from croniter import croniter

    nights = 0
    schedule = croniter(cron, datetime.fromtimestamp(now()))
    while max_nights is None or nights < max_nights:
        due = schedule.get_next(float)
        log(f"next night at {datetime.fromtimestamp(due):%Y-%m-%d %H:%M:%S}")
        while (wait := due - now()) > 0:
            sleep(min(wait, 60.0))
        nights += 1
        log(f"night {nights} started")
        code = run_night()
        log(f"night {nights} ended: exit {code} ({EXIT_MEANINGS.get(code, 'unexpected')})")
        schedule = croniter(cron, datetime.fromtimestamp(max(now(), due)))  # a long night skips missed times
    return nights


def run_in_subprocess(command: list[str]) -> int:
    """Run one night as its own process (a crash or a leak stays in that night); Ctrl-C or SIGTERM stops it
    cleanly (it closes its trials and runs) and then the loop."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        process.wait()
        raise

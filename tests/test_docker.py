"""docker/: no Docker engine runs here, so the files are parsed and checked. Every service runs a real command line
(searchlab's through its click group, mlflow's through mlflow's own), the services point at each other, secrets
come from docker/.env, published ports stay on loopback, and the image installs torch and the package the README's
way."""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from conftest import POSTGRES_URL, free_port

from searchlab.cli import main
from searchlab.settings import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"
PASSWORD = "Tests0nlyPassw0rd"  # stands in for the one a user puts in docker/.env
SERVICES = {"postgres", "mlflow", "dashboard", "worker", "scheduler"}
TRAINERS = ("worker", "scheduler")  # the services that run trials
STORAGE_USERS = ("worker", "scheduler", "dashboard")
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- compose's .env and ${VAR} interpolation


class MissingVariable(Exception):
    """A ${VAR:?message} whose variable is unset or empty: compose refuses to start."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as compose reads them (comments, blank lines, optional quotes, optional 'export ')."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=VALUE"
        value = value.strip()
        if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) >= 2:
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_]\w*))"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err},
    ${VAR:+alt}, ${VAR+alt}."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"]
        value = env.get(name)
        is_set, non_empty = value is not None, bool(value)
        if op in (":-", "-"):
            return value if (non_empty if op == ":-" else is_set) else arg
        if op in (":?", "?"):
            if not (non_empty if op == ":?" else is_set):
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if (non_empty if op == ":+" else is_set) else ""
        return value or ""

    return VARIABLE.sub(replace, text)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


@functools.cache
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def user_env() -> dict[str, str]:
    """docker/.env as a user writes it: the example with a password set."""
    return {**example_env(), "POSTGRES_PASSWORD": PASSWORD}


@functools.cache
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    """compose.yaml after interpolation with docker/.env, as `docker compose config` would see it."""
    return resolve(raw_compose(), user_env())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def command(name: str) -> list[str]:
    value = service(name)["command"]
    assert isinstance(value, list), f"{name}: use the exec form (a list), so no shell re-splits the arguments"
    return [str(part) for part in value]


def published(name: str) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of every published port of a service."""
    ports = []
    for entry in service(name).get("ports") or []:
        if isinstance(entry, dict):
            ports.append((entry.get("host_ip", ""), str(entry.get("published", "")), str(entry["target"])))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        ports.append(tuple([""] * (3 - len(parts)) + parts))
    return ports


def named_volume_mounts(name: str) -> dict[str, str]:
    """container path → named volume, for the named volumes a service mounts."""
    mounts = {}
    for entry in service(name).get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume":
                mounts[entry["target"]] = entry["source"]
            continue
        source, target = str(entry).split(":")[:2]
        if not source.startswith((".", "/", "~")):
            mounts[target] = source
    return mounts


def pyproject_text() -> str:
    return (ROOT / "pyproject.toml").read_text()


def from_our_image(name: str) -> bool:
    return "build" in service(name)


# ---------------------------------------------------------------- the commands the services run


def parse_searchlab(argv: list[str]) -> click.Context:
    """Parse a searchlab command line through the click group, as `searchlab ...` would (nothing runs)."""
    assert argv[0] == "searchlab"
    name, *rest = argv[1:]
    group = click.Context(main, info_name="searchlab")
    subcommand = main.get_command(group, name)
    assert subcommand is not None, f"searchlab has no command {name!r} (yet?): {shlex.join(argv)}"
    return subcommand.make_context(name, rest, parent=group)


def parse_mlflow_server(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> click.Context:
    """Parse `mlflow server ...` with mlflow's own click command, the service's environment applied (mlflow reads
    some options, e.g. MLFLOW_BACKEND_STORE_URI, from it)."""
    from mlflow.cli import server

    assert argv[:2] == ["mlflow", "server"], argv
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return server.make_context("server", argv[2:])


def mlflow_params(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return parse_mlflow_server(command("mlflow"), environment("mlflow"), monkeypatch).params


def test_the_stack_has_its_services() -> None:
    assert set(compose()["services"]) == SERVICES
    assert compose()["name"] == "searchlab"  # not "docker", the folder compose.yaml sits in
    assert service("postgres")["image"].startswith("postgres:")
    images = {service(name)["image"] for name in SERVICES - {"postgres"}}
    assert len(images) == 1 and all(from_our_image(name) for name in SERVICES - {"postgres"})


def test_every_service_runs_a_known_program() -> None:
    for name in SERVICES - {"postgres"}:  # postgres runs its image's own entrypoint
        assert command(name)[0] in ("searchlab", "mlflow"), f"{name}: {command(name)}"


@pytest.mark.parametrize("name", ["dashboard", "worker", "scheduler"])
def test_searchlab_commands_parse(name: str) -> None:
    argv = command(name)
    ctx = parse_searchlab(argv)
    assert ctx.command.name == argv[1]
    if "file" in ctx.params and ctx.params["file"] is not None:
        assert_in_image(ctx.params["file"])


def test_worker_and_scheduler_run_the_same_study() -> None:
    worker, scheduler = parse_searchlab(command("worker")), parse_searchlab(command("scheduler"))
    assert worker.command.name == "worker"
    assert scheduler.command.name == "schedule"
    assert worker.params["file"] == scheduler.params["file"]
    assert scheduler.params["serve"] is True  # runs the nightly in its own loop, in the foreground
    assert worker.params["wait"] is True  # started before the first night, it waits instead of crash-looping
    assert len(scheduler.params["cron"].split()) == 5, scheduler.params["cron"]
    assert not worker.params.get("study_name") and not scheduler.params.get("study_name")  # the study's own name


def test_mlflow_server_command_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    params = mlflow_params(monkeypatch)
    assert params["host"] == "0.0.0.0"  # inside its container; the host publishes it on loopback only
    assert params["serve_artifacts"] is True
    assert urlsplit(params["backend_store_uri"]).scheme.startswith("postgresql")


def test_servers_listen_where_they_are_published(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [port[2] for port in published("mlflow")] == [str(mlflow_params(monkeypatch)["port"])]
    assert [port[2] for port in published("postgres")] == ["5432"]


def test_dashboard_listens_where_it_is_published() -> None:
    dashboard = parse_searchlab(command("dashboard")).params
    assert dashboard["host"] == "0.0.0.0"  # inside its container; the host publishes it on loopback only
    assert [port[2] for port in published("dashboard")] == [str(dashboard["port"])]


def test_dashboard_is_read_only_unless_told_otherwise() -> None:
    assert parse_searchlab(command("dashboard")).params["read_only"] is True
    env = {**user_env(), "DASHBOARD_ACCESS": "read-write"}
    argv = [str(part) for part in resolve(raw_compose(), env)["services"]["dashboard"]["command"]]
    assert parse_searchlab(argv).params["read_only"] is False
    del env["DASHBOARD_ACCESS"]  # a docker/.env written before the setting existed
    argv = [str(part) for part in resolve(raw_compose(), env)["services"]["dashboard"]["command"]]
    assert parse_searchlab(argv).params["read_only"] is True


# ---------------------------------------------------------------- ports, secrets


def test_published_ports_are_loopback_only() -> None:
    for name in SERVICES:
        for host_ip, host_port, _ in published(name):
            assert host_ip == LOOPBACK, f"{name} publishes port {host_port} on {host_ip or 'every interface'}"
    host_ports = [port[1] for name in SERVICES for port in published(name)]
    assert len(host_ports) == len(set(host_ports))


def test_the_password_comes_from_docker_env() -> None:
    text = COMPOSE_FILE.read_text()
    postgres_env = raw_compose()["services"]["postgres"]["environment"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", postgres_env["POSTGRES_PASSWORD"])
    urls = re.findall(r"postgresql://[^@\n]*@", text)
    assert urls
    for url in urls:  # user:password@host: the password is always the variable
        assert re.fullmatch(r"postgresql://(\$\{[^}]*\}|[^:@$]+):\$\{POSTGRES_PASSWORD:\?[^}]*\}@", url), url
    assert example_env()["POSTGRES_PASSWORD"] == ""  # no shared default password: compose refuses to start
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        resolve(raw_compose(), example_env())


def test_docker_env_is_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "add docker/.env to .gitignore: it holds the database password"


def test_every_variable_compose_needs_is_in_env_example() -> None:
    names = {
        match["braced"] or match["named"]
        for match in VARIABLE.finditer(COMPOSE_FILE.read_text())
        if not match["escaped"]
    }
    required = {
        match["braced"]
        for match in VARIABLE.finditer(COMPOSE_FILE.read_text())
        if match["braced"] and match["op"] in (None, ":?", "?")
    }
    assert required <= set(example_env()), required - set(example_env())
    commented = set(re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert names <= set(example_env()) | commented, names - set(example_env()) - commented


# ---------------------------------------------------------------- health, restarts, start order


def test_every_service_has_a_healthcheck_and_a_restart_policy() -> None:
    for name in SERVICES:
        spec = service(name)
        assert spec.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: {spec.get('restart')}"
        test = (spec.get("healthcheck") or {}).get("test")
        assert test and not spec["healthcheck"].get("disable"), f"{name} has no healthcheck"
        assert test[0] in ("CMD", "CMD-SHELL"), test


def healthcheck_code(name: str) -> str:
    """The Python a healthcheck runs with `python -c` (what our image has: no curl, no wget)."""
    test = service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"{name}: {test}"
    return test[3]


def test_healthchecks_use_programs_the_image_has() -> None:
    for name in SERVICES:
        if from_our_image(name):
            compile(healthcheck_code(name), f"<{name} healthcheck>", "exec")
    test = service("postgres")["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    args = test[2:]
    assert args[args.index("-h") + 1] == LOOPBACK  # TCP: initdb's temporary server answers on the socket only
    postgres_env = environment("postgres")
    assert args[args.index("-U") + 1] == postgres_env["POSTGRES_USER"]
    assert args[args.index("-d") + 1] == postgres_env["POSTGRES_DB"]


def healthcheck_url(name: str) -> tuple[str | None, int | None, str]:
    url = urlsplit(re.search(r"'(http://[^']+)'", healthcheck_code(name))[1])
    return url.hostname, url.port, url.path


def test_mlflow_healthcheck_asks_the_server_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    assert healthcheck_url("mlflow") == (LOOPBACK, mlflow_params(monkeypatch)["port"], "/health")


def test_dashboard_healthcheck_asks_the_dashboard_itself() -> None:
    assert healthcheck_url("dashboard")[:2] == (LOOPBACK, parse_searchlab(command("dashboard")).params["port"])


def run_trainer_healthcheck(tracking_uri: str, storage: str) -> int:
    env = {"SEARCHLAB_TRACKING_URI": tracking_uri, "SEARCHLAB_STORAGE": storage, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", healthcheck_code("worker")], env=env, capture_output=True, timeout=60, check=False
    ).returncode


def test_trainer_healthcheck_passes_only_when_both_stores_answer(mlflow_server: str) -> None:
    assert healthcheck_code("worker") == healthcheck_code("scheduler")
    assert run_trainer_healthcheck(mlflow_server, POSTGRES_URL) == 0
    assert run_trainer_healthcheck(f"http://127.0.0.1:{free_port()}", POSTGRES_URL) != 0
    assert run_trainer_healthcheck(mlflow_server, f"postgresql://postgres@127.0.0.1:{free_port()}/test") != 0


def test_services_start_after_what_they_use() -> None:
    uses = {
        "mlflow": {"postgres"},
        "dashboard": {"postgres"},
        "worker": {"postgres", "mlflow"},
        "scheduler": {"postgres", "mlflow"},
    }
    for name, needed in uses.items():
        depends = service(name).get("depends_on") or {}
        assert set(depends) == needed, name
        for dependency in needed:
            assert depends[dependency]["condition"] == "service_healthy", (name, dependency)
    # every host a service's URLs name is a service it waits for
    for name in uses:
        hosts = {urlsplit(value).hostname for value in environment(name).values() if "://" in value}
        assert hosts <= set(service(name)["depends_on"]), (name, hosts)


# ---------------------------------------------------------------- services point at each other


def test_storage_points_at_the_postgres_database() -> None:
    postgres_env = environment("postgres")
    storages = {environment(name)["SEARCHLAB_STORAGE"] for name in STORAGE_USERS}
    assert len(storages) == 1, storages
    url = urlsplit(storages.pop())
    assert url.scheme == "postgresql"
    assert url.hostname == "postgres" and url.port in (None, 5432)
    assert url.path == "/" + postgres_env["POSTGRES_DB"]
    assert (url.username, url.password) == (postgres_env["POSTGRES_USER"], PASSWORD)
    for name in STORAGE_USERS:
        unknown = {key for key in environment(name) if key.startswith("SEARCHLAB_")} - {
            variable for variable, _ in ENVIRONMENT.values()
        }
        assert not unknown, f"{name}: searchlab reads no {unknown}"


def mlflow_databases_created_at_init() -> set[str]:
    """Databases that postgres's init scripts (configs mounted into /docker-entrypoint-initdb.d) create."""
    configs = compose().get("configs") or {}
    created = set()
    for entry in service("postgres").get("configs") or []:
        assert entry["target"].startswith("/docker-entrypoint-initdb.d/") and entry["target"].endswith(".sql")
        created |= set(re.findall(r"CREATE DATABASE\s+\"?(\w+)\"?", configs[entry["source"]]["content"], re.I))
    return created


def test_mlflow_keeps_its_runs_in_its_own_postgres_database(monkeypatch: pytest.MonkeyPatch) -> None:
    postgres_env = environment("postgres")
    url = urlsplit(mlflow_params(monkeypatch)["backend_store_uri"])
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port in (None, 5432)
    assert (url.username, url.password) == (postgres_env["POSTGRES_USER"], PASSWORD)
    database = url.path.lstrip("/")
    # Optuna and MLflow both keep their schema version in Alembic's alembic_version table: one database each
    assert database != postgres_env["POSTGRES_DB"]
    assert database in mlflow_databases_created_at_init()
    assert PASSWORD not in " ".join(command("mlflow"))  # in the environment, not on a command line


def test_tracking_uri_points_at_the_mlflow_service(monkeypatch: pytest.MonkeyPatch) -> None:
    params = mlflow_params(monkeypatch)
    uris = {environment(name)["SEARCHLAB_TRACKING_URI"] for name in TRAINERS}
    assert len(uris) == 1, uris
    url = urlsplit(uris.pop())
    assert (url.scheme, url.hostname, url.port) == ("http", "mlflow", params["port"])
    # MLflow answers 403 to a Host header it does not allow: the one the services send must be allowed
    allowed = [host.strip() for host in (params["allowed_hosts"] or "").split(",") if host.strip()]
    if allowed:
        assert any(fnmatch.fnmatch(url.netloc, pattern) for pattern in allowed), (url.netloc, allowed)
        for host_ip, host_port, _ in published("mlflow"):  # and the browser's, on the published port
            assert any(fnmatch.fnmatch(f"{host_ip}:{host_port}", pattern) for pattern in allowed)


def test_artifacts_live_on_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    destination = mlflow_params(monkeypatch)["artifacts_destination"]
    volumes = compose()["volumes"]
    assert named_volume_mounts("mlflow").get(destination) in volumes
    assert named_volume_mounts("postgres").get("/var/lib/postgresql/data") in volumes
    major = service("postgres")["image"].split(":")[1].split(".")[0]
    assert major.isdigit() and int(major) < 18  # 18 moved PGDATA under /var/lib/postgresql/18


def test_workers_scale() -> None:
    worker = service("worker")
    for key in ("container_name", "hostname", "ports"):  # every replica needs its own (hostname: trial owners)
        assert key not in worker, f"worker sets {key}: --scale worker=N needs one per replica"


def test_gpu_reservation_is_there_to_uncomment() -> None:
    text = COMPOSE_FILE.read_text()
    worker_part = text[text.index("\n  worker:") : text.index("\n  scheduler:")]
    block = re.search(r"^( *)# deploy:\n(?:\1#   .*\n)+", worker_part, re.MULTILINE)
    assert block, "the worker's GPU reservation, commented out"
    indent = block[1]
    uncommented = "\n".join(line[len(indent) + 2 :] for line in block[0].splitlines())
    devices = yaml.safe_load(uncommented)["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode != 0
    ):
        pytest.skip("no docker compose here")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "POSTGRES_PASSWORD": PASSWORD},
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the Dockerfile


@functools.cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comment lines dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def build_args() -> dict[str, str]:
    return dict(args.split("=", 1) for keyword, args in dockerfile() if keyword == "ARG" and "=" in args)


def expand(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: build_args().get(m[1] or m[2], m[0]), text)


def shell_commands(script: str) -> list[list[str]]:
    """A RUN line's simple commands (split at &&, ||, ;, |, { and })."""
    lexer = shlex.shlex(expand(script), posix=True, punctuation_chars=True)
    commands, current = [], []
    redirect = False
    for token in lexer:
        if redirect:  # the redirection's target
            redirect = False
        elif token in ("&&", "||", ";", "|", "{", "}", "(", ")"):
            if current:
                commands.append(current)
            current = []
        elif token in (">", ">>", "<", ">&", "&>"):
            redirect = True
            if current and current[-1].isdigit():  # 2>/dev/null
                current.pop()
        else:
            current.append(token)
    return commands + ([current] if current else [])


def pip_installs() -> list[tuple[int, list[str]]]:
    """(instruction index, arguments after `pip install`) of every pip install, in build order."""
    found = []
    for index, (keyword, args) in enumerate(dockerfile()):
        if keyword != "RUN":
            continue
        for words in shell_commands(args):
            while words and re.match(r"[A-Za-z_]\w*=", words[0]):  # VAR=value before the command
                words = words[1:]
            for start in range(len(words) - 1):
                if posixpath.basename(words[start]) in ("pip", "pip3") and words[start + 1] == "install":
                    found.append((index, words[start + 2 :]))
                    break
    return found


def readme_torch_version() -> str:
    versions = set(re.findall(r"pip install torch==([\w.+]+)", (ROOT / "README.md").read_text()))
    assert len(versions) == 1, versions
    return versions.pop()


def test_dockerfile_is_cpu_by_default_with_a_cuda_base_as_a_build_argument() -> None:
    froms = [args for keyword, args in dockerfile() if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", build_args()["BASE_IMAGE"])
    assert build_args()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    commented = read_env_file_comments()
    assert commented["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", commented["TORCH_INDEX_URL"])
    args = service("worker")["build"]["args"]  # compose's defaults are the Dockerfile's
    for name in ("BASE_IMAGE", "TORCH_INDEX_URL"):
        assert args[name] == build_args()[name]


def read_env_file_comments() -> dict[str, str]:
    return dict(re.findall(r"^#\s*([A-Z_][A-Z0-9_]*)=(\S+)", ENV_EXAMPLE.read_text(), re.MULTILINE))


def test_compose_builds_from_the_repository_root() -> None:
    build = service("worker")["build"]
    context = (DOCKER / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_dockerfile_installs_torch_then_the_package_the_readme_way() -> None:
    installs = pip_installs()
    torch = [position for position, (_, args) in enumerate(installs) if any(a.startswith("torch") for a in args)]
    package = [
        position
        for position, (_, args) in enumerate(installs)
        if any(re.fullmatch(r"\.(\[[\w,-]+\])?", arg) for arg in args)
    ]
    assert len(torch) == 1 and len(package) == 1, installs
    torch_args = installs[torch[0]][1]
    assert f"torch=={readme_torch_version()}" in torch_args  # pinned, as the README installs it
    assert torch[0] < package[0]  # first: the package's bare torch requirement is then already met
    assert torch_args[torch_args.index("--index-url") + 1] == build_args()["TORCH_INDEX_URL"]


def copies() -> list[tuple[int, list[str], str, bool]]:
    """(instruction index, sources, absolute destination, whether sources go into it) of every COPY."""
    workdir, found = "/", []
    for index, (keyword, args) in enumerate(dockerfile()):
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif keyword == "COPY":
            *sources, destination = [word for word in shlex.split(args) if not word.startswith("--")]
            into = destination.endswith("/") or len(sources) > 1
            found.append((index, sources, posixpath.normpath(posixpath.join(workdir, destination)), into))
    return found


def workdir() -> str:
    return [args for keyword, args in dockerfile() if keyword == "WORKDIR"][-1]


def in_image(path: str) -> Path | None:
    """The repository file that lands at ``path`` (relative to the WORKDIR, the services' working directory)."""
    target = posixpath.normpath(posixpath.join(workdir(), path))
    for _, sources, destination, into in copies():
        for source in sources:
            # COPY puts a folder's contents at the destination; a file into it (dest/ or several sources) or at it
            landed = (
                posixpath.join(destination, posixpath.basename(source))
                if into and (ROOT / source).is_file()
                else destination
            )
            if target == landed or target.startswith(landed + "/"):
                candidate = ROOT / source / posixpath.relpath(target, landed)
                if candidate.exists():
                    return candidate
    return None


def assert_in_image(path: str) -> None:
    source = in_image(path)
    assert source is not None and source.resolve().is_file(), f"{path} is not copied into the image"


def test_dockerfile_copies_what_the_install_and_the_services_need() -> None:
    for _, sources, _, _ in copies():
        for source in sources:
            assert (ROOT / source).exists(), source
    install = pip_installs()[-1][0]
    copied_before = {source for index, sources, _, _ in copies() if index < install for source in sources}
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject_text(), re.MULTILINE)[1]
    assert {"pyproject.toml", readme, "searchlab"} <= copied_before
    assert_in_image(example_env()["STUDY_FILE"])
    for study in (ROOT / "studies").glob("*.py"):
        assert_in_image(f"studies/{study.name}")


def test_dockerfile_puts_the_venv_first_on_path_and_runs_unprivileged(monkeypatch: pytest.MonkeyPatch) -> None:
    venvs = [
        words[3]
        for keyword, args in dockerfile()
        if keyword == "RUN"
        for words in shell_commands(args)
        if words[1:3] == ["-m", "venv"]
    ]
    assert venvs and len(set(venvs)) == 1
    env = " ".join(args for keyword, args in dockerfile() if keyword == "ENV")
    assert re.search(rf"PATH={re.escape(venvs[0])}/bin:\$PATH", env)  # searchlab, mlflow, python on PATH
    users = [args for keyword, args in dockerfile() if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    destination = mlflow_params(monkeypatch)["artifacts_destination"]
    runs = " ".join(args for keyword, args in dockerfile() if keyword == "RUN")
    assert re.search(rf"mkdir -p {re.escape(destination)}\b", runs)  # a fresh volume takes its owner from here
    assert re.search(rf"chown \S+ {re.escape(destination)}\b", runs)


def test_the_image_has_optuna_dashboard() -> None:
    dependencies = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", pyproject_text(), re.MULTILINE | re.DOTALL)[1]
    declared = re.search(r"^\s*\"optuna[-_]dashboard\b", dependencies, re.MULTILINE) is not None
    installed = any(any(arg.startswith("optuna-dashboard") for arg in args) for _, args in pip_installs())
    assert declared or installed, "searchlab dashboard needs optuna-dashboard: declare it in pyproject.toml"

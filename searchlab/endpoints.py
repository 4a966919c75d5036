"""A tracking URI before anything is written to it: the store it names, and whether it can be used (a clear error
when not: MLflow would retry for minutes)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from searchlab.errors import ConfigError
from searchlab.storage import check_sqlite_folder, is_database_url, local_file, mask_password


def local_store_path(uri: str) -> Path | None:
    """The file or folder behind a local tracking store (sqlite:///, file:// or a path); None for a server."""
    if uri.startswith("sqlite:///"):
        return local_file(uri)
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None


def check_tracking_uri(uri: str, *, writes: bool = True) -> None:
    """Fail fast, before anything is written, when the tracking store cannot be used: a scheme searchlab does not
    track to, a server that cannot be reached or refuses this host name, a sqlite file whose folder is missing or
    (with ``writes``) read-only, which MLflow would retry for minutes."""
    if uri.startswith(("http://", "https://")):
        check_tracking_server(uri)
    elif is_database_url(uri):
        check_sqlite_folder(uri, writes=writes)
    elif "://" not in uri or uri.startswith("file:"):
        raise ConfigError(
            f"tracking URI {mask_password(uri)!r} is a folder (MLflow's file store, which MLflow 3 "
            "refuses): use sqlite:///PATH (e.g. sqlite:///mlflow.db) or http://HOST:PORT"
        )
    else:
        raise ConfigError(
            f"unsupported tracking URI {mask_password(uri)!r}: use sqlite:///PATH, "
            "postgresql://USER@HOST/DB or http://HOST:PORT"
        )


def check_tracking_server(uri: str) -> None:
    """Ask the server an API question, not /health: MLflow's host check (``--allowed-hosts``) exempts /health, so a
    server that refuses the host name in ``uri`` passed it and then refused the run's first call (HTTP 403)."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]  # the Host header; credentials are the MLflow client's business
    url = urllib.parse.urlunsplit(
        (parts.scheme, host, parts.path.rstrip("/") + "/api/2.0/mlflow/experiments/search", "max_results=1", "")
    )
    try:
        with urllib.request.urlopen(url, timeout=10):
            return
    except urllib.error.HTTPError as error:
        if error.code == 401:  # reached; it wants the credentials this check does not send
            return
        if error.code == 403 and b"Invalid Host header" in error.read():
            raise ConfigError(
                f"the MLflow tracking server at {mask_password(uri)} refuses the host name {host!r} "
                f"(HTTP 403, MLflow's host check): start it with --allowed-hosts {parts.hostname}, or "
                "reach it by a private IP address"
            ) from None
        reason = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = str(getattr(error, "reason", error))
    raise ConfigError(
        f"cannot reach the MLflow tracking server at {mask_password(uri)} ({reason}): "
        "start it (mlflow server) or fix --tracking-uri"
    )

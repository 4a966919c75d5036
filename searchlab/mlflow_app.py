"""MLflow's tracking app (its UI, REST API and artifact service) under uvicorn in one process: what `mlflow server`
runs as its one worker, without that command's own process in front of it, which imports MLflow and opens the store
before it starts the worker that does both again. `searchlab ui` runs ``python -m searchlab.mlflow_app HOST PORT``
with the backend store URI in MLFLOW_BACKEND_STORE_URI (out of `ps`): its page answers in about half the time.

The app reads its settings from the environment variables that `mlflow server` sets for its worker
(mlflow.server.constants), here `mlflow server`'s defaults: the model registry in the backend store, artifacts
served, Host and cross-origin checks on (MLflow's defaults: loopback and private addresses).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # as `mlflow server --backend-store-uri` reads it
APP = "mlflow.server.fastapi_app:app"  # the app `mlflow server` gives uvicorn


def serve(host: str, port: int) -> None:
    """Serve MLflow's app on ``host:port`` until SIGINT or SIGTERM (uvicorn stops gracefully on either)."""
    import uvicorn  # before MLflow's app: the app installs its Host and CORS checks when it finds itself served

    # isort: split
    import mlflow.server
    from mlflow.environment_variables import _MLFLOW_IN_JOB_EXECUTOR
    from mlflow.server.constants import (
        ARTIFACT_ROOT_ENV_VAR,
        BACKEND_STORE_URI_ENV_VAR,
        REGISTRY_STORE_URI_ENV_VAR,
        SERVE_ARTIFACTS_ENV_VAR,
    )
    from mlflow.server.handlers import initialize_backend_stores
    from mlflow.utils.server_cli_utils import resolve_default_artifact_root

    uri = os.environ[BACKEND_STORE_ENV]
    artifact_root = resolve_default_artifact_root(True, "", uri)
    os.environ.update(
        {
            BACKEND_STORE_URI_ENV_VAR: uri,
            REGISTRY_STORE_URI_ENV_VAR: uri,
            ARTIFACT_ROOT_ENV_VAR: artifact_root,
            SERVE_ARTIFACTS_ENV_VAR: "true",
            _MLFLOW_IN_JOB_EXECUTOR.name: "false",  # as `mlflow server` forces it for its workers
        }
    )
    initialize_backend_stores(uri, uri, artifact_root)  # as `mlflow server` does first: a broken store fails here
    log_config = Path(mlflow.server.__file__).parent / "uvicorn_log_config.yaml"  # `mlflow server`'s log lines
    uvicorn.run(APP, host=host, port=port, log_config=str(log_config) if log_config.is_file() else None)


if __name__ == "__main__":
    serve(sys.argv[1].strip("[]"), int(sys.argv[2]))

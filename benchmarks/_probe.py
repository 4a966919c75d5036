"""Where a tracked study's wall time goes: exclusive timers wrapped around the framework's costly calls.

``Probe.install()`` wraps (by monkeypatching, in the benchmark's own child process only) the MLflow HTTP calls,
the Optuna journal file's appends and reads, the sampler, the training loop and the per-trial setup. Timers
nest: a call's exclusive time is its wall time minus the wrapped calls inside it, so the parts add up to the
total; calls made by other threads (a background sender) are kept apart, since they overlap the main thread.
``http`` is also counted per endpoint.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

RUN_ID = re.compile(r"[0-9a-f]{32}")
BACKGROUND = "(background thread, overlaps) "


class Probe:
    def __init__(self) -> None:
        self.exclusive: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.endpoints: dict[str, list[float]] = defaultdict(list)
        self._local = threading.local()  # per thread, per open timer: [time spent in nested timers]

    def timed(
        self, category: str, function: Callable[..., Any], label: Callable[..., str] | None = None
    ) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append([0.0])
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                nested = stack.pop()[0]
                # Time spent in other threads (a background sender) overlaps the main thread's: kept apart.
                name = category if threading.current_thread() is threading.main_thread() else f"{BACKGROUND}{category}"
                self.exclusive[name] += elapsed - nested
                self.calls[name] += 1
                if stack:
                    stack[-1][0] += elapsed
                if label is not None:
                    self.endpoints[label(*args, **kwargs)].append(elapsed)

        wrapper.__probe_original__ = function  # type: ignore[attr-defined]
        return wrapper

    def patch(self, owner: Any, name: str, category: str, label: Callable[..., str] | None = None) -> None:
        original = getattr(owner, name, None)
        if original is None or hasattr(original, "__probe_original__"):
            return
        setattr(owner, name, self.timed(category, original, label))

    def install(self, *, tracking: bool = True, framework: bool = True) -> None:
        """Wrap MLflow's HTTP calls (every module that imported ``http_request``) and, with ``framework``, the
        journal storage, the sampler and searchlab's own steps."""
        if tracking:
            import mlflow.store.artifact.http_artifact_repo
            import mlflow.store.tracking.rest_store  # noqa: F401
            import mlflow.utils.rest_utils as rest_utils

            original = rest_utils.http_request
            wrapped = self.timed("http (MLflow calls)", original, _endpoint)
            for module in list(sys.modules.values()):
                if module is not None and getattr(module, "http_request", None) is original:
                    module.http_request = wrapped
        if not framework:
            return
        import optuna
        from optuna.storages.journal import JournalFileBackend

        import searchlab.lifecycle
        import searchlab.preparation
        import searchlab.publish
        import searchlab.tracking
        import searchlab.train
        from searchlab.storage import journal_file_class

        self.patch(journal_file_class(), "append_logs", "optuna journal (append+lock, fsync at trial start/end)")
        self.patch(JournalFileBackend, "read_logs", "optuna journal (read)")
        for sampler in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
            for method in (
                "sample_relative",
                "sample_independent",
                "infer_relative_search_space",
                "before_trial",
                "after_trial",
            ):
                self.patch(sampler, method, "optuna sampler")
        self.patch(searchlab.train, "train_epoch", "train epochs (forward/backward/step, batches)")
        self.patch(searchlab.train, "evaluate", "validation (forward, torchmetrics)")
        self.patch(searchlab.train, "fit", "fit bookkeeping (best-state clone, callbacks)")
        self.patch(searchlab.train, "build_model", "per-trial model build")
        self.patch(searchlab.train, "build_optimizer", "per-trial optimizer build")
        self.patch(searchlab.train, "make_batches", "per-trial batches (to device)")
        self.patch(searchlab.tracking.MlflowTracker, "log_state_dict", "state_dict save (torch.save, temp dir)")
        self.patch(searchlab.preparation, "load_split", "data load (study.data)")
        self.patch(searchlab.preparation, "preflight_model", "preflight (model on a batch)")
        self.patch(searchlab.lifecycle, "publish", "publish (report, model registry; own work)")
        for function, name in (("log_report", "report"), ("register", "registry")):
            self.patch(searchlab.publish, function, f"publish: {name} (own work)")

    def summary(self, total: float, n_trials: int) -> dict[str, Any]:
        parts = {name: seconds for name, seconds in sorted(self.exclusive.items(), key=lambda item: -item[1])}
        parts["other (optuna ask/tell, searchlab glue, python)"] = total - sum(
            seconds for name, seconds in self.exclusive.items() if not name.startswith(BACKGROUND)
        )
        return {
            "total_s": total,
            "parts_s": parts,
            "per_trial_ms": {name: 1000 * seconds / n_trials for name, seconds in parts.items()},
            "calls": dict(self.calls),
            "endpoints": {
                name: {
                    "calls": len(times),
                    "ms_median": 1000 * sorted(times)[len(times) // 2],
                    "ms_total": 1000 * sum(times),
                }
                for name, times in sorted(self.endpoints.items(), key=lambda item: -sum(item[1]))
            },
        }


def _endpoint(*args: Any, **kwargs: Any) -> str:
    endpoint = kwargs.get("endpoint", args[1] if len(args) > 1 else "?")
    method = kwargs.get("method", args[2] if len(args) > 2 else "?")
    path = RUN_ID.sub("RUN", str(endpoint).split("?")[0])
    if not path.startswith("/api/") or "mlflow-artifacts" in path:  # artifact endpoints name the file
        return f"{method} artifact"
    return f"{method} {path}"

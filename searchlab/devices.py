"""Device discovery and slot assignment: which device and how many CPU threads each worker gets."""

from __future__ import annotations

import os
from dataclasses import dataclass

from searchlab.errors import ConfigError


@dataclass(frozen=True)
class Slot:
    """Where one worker trains: ``device`` is ``"cpu"`` or a physical GPU index ``"cuda:N"``."""

    index: int
    device: str
    threads: int
    isolated: bool = False  # True in a worker process, whose environment hides every other GPU

    @property
    def environment(self) -> dict[str, str]:
        """Variables set before torch starts, so the worker sees only its own GPU (as cuda:0), or none.

        ``cuda:N`` counts the GPUs this process sees; under an inherited CUDA_VISIBLE_DEVICES (e.g. a scheduler's
        ``2,3``) it is mapped back to the id that list gives."""
        gpu = ""
        if self.device.startswith("cuda:"):
            visible = [part for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
            index = int(self.device.split(":", 1)[1])
            gpu = visible[index].strip() if index < len(visible) else str(index)
        return {"CUDA_VISIBLE_DEVICES": gpu, "OMP_NUM_THREADS": str(self.threads)}

    @property
    def torch_device(self) -> str:
        """The device as torch names it in the worker: a worker process's one visible GPU is cuda:0; in this
        process the GPU keeps its own index."""
        if not self.device.startswith("cuda"):
            return "cpu"
        return "cuda:0" if self.isolated else self.device


def cuda_device_count() -> int:
    """GPUs visible to this process, without creating a CUDA context (safe before spawning workers)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_devices(spec: str, n_gpus: int) -> list[str]:
    """``auto`` (every GPU, else the CPU), ``cpu``, ``cuda`` (every GPU) or ``cuda:0,2`` → device names."""
    spec = spec.strip().lower()
    if spec == "cpu" or (spec == "auto" and n_gpus == 0):
        return ["cpu"]
    if spec in ("auto", "cuda"):
        if n_gpus == 0:
            raise ConfigError("--devices cuda: no GPU is visible here; use --devices cpu or auto")
        return [f"cuda:{i}" for i in range(n_gpus)]
    if spec.startswith("cuda:"):
        try:
            indices = [int(part) for part in spec[len("cuda:") :].split(",")]
        except ValueError:
            raise ConfigError(f"--devices {spec!r}: list GPU indices, e.g. cuda:0,2") from None
        missing = [i for i in indices if not 0 <= i < n_gpus]
        if missing:
            raise ConfigError(f"--devices {spec!r}: GPU {missing[0]} does not exist here ({n_gpus} visible)")
        if len(set(indices)) != len(indices):
            raise ConfigError(f"--devices {spec!r} lists a GPU twice")
        return [f"cuda:{i}" for i in indices]
    raise ConfigError(f"unknown --devices {spec!r}: use auto, cpu, cuda or cuda:0,2")


def parse_workers(spec: str | int) -> int | None:
    """A positive worker count, or None for ``auto`` (one per device slot)."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return None
    try:
        workers = int(spec)
    except ValueError:
        raise ConfigError(f"--workers {spec!r}: give a number of workers or 'auto'") from None
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 or 'auto', got {workers}")
    return workers


def assign_slots(
    devices: list[str],
    workers: int | None,
    *,
    trials_per_device: int = 1,
    cpu_count: int | None = None,
    threads: int | None = None,
) -> list[Slot]:
    """One slot per worker: GPUs round-robin (``trials_per_device`` workers may share one), CPU threads split.

    ``workers=None`` means one worker per slot: ``trials_per_device`` per GPU, or one per core on the CPU.
    Torch threads per worker: ``threads`` if given; else one on the CPU (the small models a CPU search trains
    are as fast or faster on one thread, and the cores are used by more workers, one per core); else (GPU
    workers) an equal share of the cores. Either way, up to one worker per core never oversubscribes.
    """
    cores = cpu_count or os.cpu_count() or 1
    if trials_per_device < 1:
        raise ConfigError(f"--trials-per-device must be at least 1, got {trials_per_device}")
    on_cpu = devices == ["cpu"]
    capacity = cores if on_cpu else len(devices) * trials_per_device
    count = capacity if workers is None else workers
    if not on_cpu and count > capacity:
        raise ConfigError(
            f"{count} workers need {count} GPU slots, but {len(devices)} GPU(s) x "
            f"{trials_per_device} trial(s) per device give {capacity}: raise --trials-per-device"
        )
    if threads is None:
        threads = 1 if on_cpu else max(1, cores // count)
    elif threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    return [Slot(index, devices[index % len(devices)], threads) for index in range(count)]

"""Device discovery and slot assignment on simulated machines (GPU and core counts passed explicitly)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from searchlab.devices import Slot, assign_slots, parse_devices, parse_workers
from searchlab.errors import ConfigError


def config_error(call, *args, **kwargs) -> str:
    """The one-line message of the ConfigError that ``call`` raises."""
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_auto_is_the_cpu_without_gpus() -> None:
    assert parse_devices("auto", 0) == ["cpu"]


def test_auto_and_cuda_are_every_gpu() -> None:
    assert parse_devices("auto", 2) == ["cuda:0", "cuda:1"]
    assert parse_devices(" CUDA ", 2) == ["cuda:0", "cuda:1"]


def test_cpu_is_the_cpu_even_with_gpus() -> None:
    assert parse_devices("cpu", 2) == ["cpu"]


def test_an_index_list_selects_those_gpus_in_order() -> None:
    assert parse_devices("cuda:0,2", 3) == ["cuda:0", "cuda:2"]
    assert parse_devices("cuda:1", 2) == ["cuda:1"]


@pytest.mark.parametrize(
    ("spec", "n_gpus", "expected"),
    [
        ("cuda", 0, "no GPU is visible"),
        ("cuda:5", 2, "GPU 5 does not exist here (2 visible)"),
        ("cuda:x", 2, "list GPU indices"),
        ("cuda:", 2, "list GPU indices"),
        ("cuda:0,0", 2, "lists a GPU twice"),
        ("tpu", 2, "unknown --devices 'tpu'"),
        ("gpu:0", 2, "unknown --devices"),
    ],
)
def test_bad_device_specs_are_one_line_config_errors(spec: str, n_gpus: int, expected: str) -> None:
    assert expected in config_error(parse_devices, spec, n_gpus)


def test_workers_auto_means_one_per_slot() -> None:
    assert parse_workers("auto") is None
    assert parse_workers(" AUTO ") is None


def test_workers_is_a_positive_count() -> None:
    assert parse_workers("3") == 3
    assert parse_workers(2) == 2


@pytest.mark.parametrize("spec", [0, -1, "0", "-1", "many", "1.5", ""])
def test_bad_worker_counts_are_one_line_config_errors(spec: str | int) -> None:
    assert "--workers" in config_error(parse_workers, spec)


def test_cpu_workers_share_the_cores() -> None:
    assert assign_slots(["cpu"], 2, cpu_count=2) == [Slot(0, "cpu", 1), Slot(1, "cpu", 1)]


def test_auto_workers_on_the_cpu_are_one_per_core() -> None:
    slots = assign_slots(["cpu"], None, cpu_count=6)
    assert [slot.index for slot in slots] == list(range(6))
    assert {(slot.device, slot.threads) for slot in slots} == {("cpu", 1)}


def test_auto_workers_fill_every_gpu_slot_round_robin() -> None:
    devices = parse_devices("cuda", 4)
    slots = assign_slots(devices, None, trials_per_device=2, cpu_count=32)
    assert [slot.device for slot in slots] == devices * 2
    assert Counter(slot.device for slot in slots) == dict.fromkeys(devices, 2)
    assert {slot.threads for slot in slots} == {32 // 8}


def test_fewer_workers_than_gpu_slots_spread_over_gpus_first() -> None:
    slots = assign_slots(["cuda:0", "cuda:2"], 2, trials_per_device=2, cpu_count=8)
    assert slots == [Slot(0, "cuda:0", 4), Slot(1, "cuda:2", 4)]


def test_more_workers_than_gpu_slots_is_a_config_error() -> None:
    message = config_error(assign_slots, ["cuda:0", "cuda:1"], 3, trials_per_device=1, cpu_count=8)
    assert "--trials-per-device" in message and "3 workers" in message


@pytest.mark.parametrize("devices", [["cpu"], ["cuda:0"]])
def test_zero_trials_per_device_is_a_config_error(devices: list[str]) -> None:
    assert "--trials-per-device" in config_error(assign_slots, devices, 1, trials_per_device=0, cpu_count=4)


@pytest.mark.parametrize("cores", [1, 2, 3, 7, 8, 16])
@pytest.mark.parametrize("devices", [["cpu"], ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]])
def test_threads_never_drop_below_one_nor_oversubscribe_the_cores(cores: int, devices: list[str]) -> None:
    for workers in [*range(1, 17), None]:
        try:
            slots = assign_slots(devices, workers, trials_per_device=4, cpu_count=cores)
        except ConfigError:
            continue  # more workers than GPU slots
        assert all(slot.threads >= 1 for slot in slots)
        assert len({slot.threads for slot in slots}) == 1
        if len(slots) <= cores:
            assert sum(slot.threads for slot in slots) <= cores


def test_a_single_cpu_worker_trains_on_one_thread_unless_told() -> None:
    assert assign_slots(["cpu"], 1, cpu_count=8) == [Slot(0, "cpu", 1)]
    assert assign_slots(["cpu"], 2, cpu_count=8, threads=4) == [Slot(0, "cpu", 4), Slot(1, "cpu", 4)]
    assert "--threads" in config_error(assign_slots, ["cpu"], 1, cpu_count=8, threads=0)


def test_more_cpu_workers_than_cores_still_get_one_thread_each() -> None:
    slots = assign_slots(["cpu"], 5, cpu_count=2)
    assert len(slots) == 5 and {slot.threads for slot in slots} == {1}


def test_a_gpu_slot_sees_only_its_physical_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slot = Slot(0, "cuda:3", 4)
    assert slot.environment == {"CUDA_VISIBLE_DEVICES": "3", "OMP_NUM_THREADS": "4"}
    assert slot.torch_device == "cuda:3", "in this process the GPU keeps its index"
    assert Slot(0, "cuda:3", 4, isolated=True).torch_device == "cuda:0", "a spawned worker sees it as cuda:0"


def test_an_inherited_cuda_visible_devices_maps_to_physical_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # e.g. a scheduler's allocation
    assert Slot(0, "cuda:1", 1).environment["CUDA_VISIBLE_DEVICES"] == "3"


def test_a_cpu_slot_hides_every_gpu() -> None:
    slot = Slot(1, "cpu", 2)
    assert slot.environment == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    assert slot.torch_device == "cpu"


def test_every_assigned_gpu_slot_runs_on_cuda_0_in_its_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = assign_slots(["cuda:1", "cuda:2"], None, trials_per_device=1, cpu_count=4)
    assert [replace(slot, isolated=True).torch_device for slot in slots] == ["cuda:0", "cuda:0"]
    assert [slot.environment["CUDA_VISIBLE_DEVICES"] for slot in slots] == ["1", "2"]

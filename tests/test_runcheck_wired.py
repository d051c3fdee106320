"""Refusals the wired options added, each naming its fix: a memory cap on a host without
GPUs, and models of one run asking for different process-group backends; the trainer joins
the backend the run names."""

from __future__ import annotations

from oneseekd.spec import request as runspec
from oneseekd.spec.host import HostFacts, check
from oneseekd.trainer.__main__ import run_backend

CPU = HostFacts(gpus=0)
GPUS = HostFacts(gpus=2, capability=(8, 0))


def spec_of(options: dict[str, object], **b: object) -> runspec.RunSpec:
    base, problems = runspec.parse_options(options)
    assert base is not None, problems
    overrides = {}
    if b:
        override, problems = runspec.parse_overrides(base, "b", dict(b))
        assert override is not None, problems
        overrides["b"] = override
    return runspec.build(base, ["a", "b"], "1.0", overrides)


def test_a_memory_cap_needs_a_gpu() -> None:
    spec = spec_of({"maxMemoryPerGpu": "20GiB"})
    assert check(spec, CPU) == [
        "max_memory_per_gpu 20GiB caps the memory each GPU gives the trainer, and this host "
        "has no GPU; leave it out"
    ]
    assert check(spec, GPUS) == []


def test_one_backend_for_the_run() -> None:
    spec = spec_of({"ddp_backend": "nccl"}, ddp_backend="gloo")
    assert check(spec, GPUS) == [
        "ddp_backend differs between the models (gloo, nccl): a run's processes join one "
        "process group; give one ddp_backend for the whole run"
    ]
    assert check(spec_of({"ddp_backend": "gloo"}, ddp_backend="gloo"), GPUS) == []
    assert check(spec_of({}, ddp_backend="gloo"), GPUS) == []  # one model names it


def test_the_trainer_joins_the_backend_the_run_names() -> None:
    assert run_backend(spec_of({}, ddp_backend="gloo").to_config()) == "gloo"
    assert run_backend(spec_of({}).to_config()) is None  # the device's default
    assert run_backend({"spec_version": 99}) is None  # refused later, with its reasons
    assert run_backend(None) is None


def test_options_once_refused_as_unwired_are_accepted() -> None:
    spec = spec_of(
        {
            "packingEnabled": True,
            "loadIn4Bit": True,
            "autoStopThreshold": 0.01,
            "autoStopPatience": 2,
            "precision": "bf16",
            "torchCompile": False,
        }
    )
    assert check(spec, CPU) == []

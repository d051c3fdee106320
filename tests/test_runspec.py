"""The run spec: every option with the admin panel's names, per-model overrides resolved once,
old runs' configs read, and every impossible combination refused with its fix."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from oneseekd.intake.schema import DEFAULTS, TrainingRequestModel, parse_request
from oneseekd.spec.fields import memory_bytes
from oneseekd.spec.host import HostFacts, check
from oneseekd.spec.names import FLAGS, request_from_flags
from oneseekd.spec.request import (
    LEGACY_RUN_KEYS,
    RUN_FIELDS,
    ModelOptions,
    RunOptions,
    RunSpec,
    SpecError,
    build,
    from_legacy,
    load,
    parse_options,
    parse_overrides,
)

CPU = HostFacts(gpus=0)
AMPERE = HostFacts(gpus=2, capability=(8, 0))
TURING = HostFacts(gpus=2, capability=(7, 5))
NOT_OPTIONS = {
    "base_models", "dataset", "version", "per_model", "request_id", "priority", "run_id", "language"
}  # fmt: skip


def options(**fields: Any) -> RunOptions:
    parsed, problems = parse_options(fields)
    assert problems == [] and parsed is not None
    return parsed


def problems_of(**fields: Any) -> list[str]:
    parsed, problems = parse_options(fields)
    assert parsed is None
    return problems


def test_every_request_field_is_an_option_with_todays_default() -> None:
    spec = RunOptions()
    for field in set(TrainingRequestModel.model_fields) - NOT_OPTIONS:
        assert field in RunOptions.model_fields, field
    for field, value in DEFAULTS.items():
        if field == "lora":
            assert spec.lora.model_dump(include=set(value)) == value
        else:
            assert getattr(spec, field) == value, field
    assert (spec.gpus, spec.sharding, spec.export_merged, spec.weighting) == (
        1,
        "ddp",
        False,
        "bits_per_byte",
    )
    # the new options are off, or as before
    assert (spec.load_in_4bit, spec.load_in_8bit, spec.packing, spec.auto_stop) == (
        False,
        False,
        False,
        None,
    )
    assert (spec.optimizer, spec.weight_decay, spec.max_grad_norm) == ("adamw_torch", 0.0, 1.0)
    assert (spec.lr_scheduler, spec.precision, spec.torch_compile) == (
        "cosine_with_min_lr",
        "auto",
        False,
    )


def test_the_admin_panels_body() -> None:
    body = {
        "epochs": 5,
        "learningRate": 2e-4,
        "batchSize": 4,
        "seed": 7,
        "loraRank": 64,
        "loraAlpha": 128,
        "lrScheduler": "cosine",
        "warmupSteps": 20,
        "weightDecay": 0.01,
        "maxGradNorm": 0.5,
        "precision": "bf16",
        "optimizer": "adamw_8bit",
        "gradientCheckpointing": False,
        "torchCompile": False,
        "targetModules": "q_proj, k_proj,v_proj",
        "dropout": 0.05,
        "loadIn4Bit": True,
        "loadIn8Bit": False,
        "quantizationType": "fp4",
        "computeDtype": "bfloat16",
        "doubleQuantization": True,
        "useNestedQuant": True,
        "gradientAccumulationSteps": 4,
        "maxSeqLength": 2048,
        "packingEnabled": True,
        "useFastTokenizer": False,
        "loraScalingFactor": 2.0,
        "autoStopThreshold": 0.01,
        "autoStopPatience": 2,
        "maxMemoryPerGpu": "9.5GB",
        "numGpus": 2,
        "useDdp": True,
        "ddpBackend": "nccl",
    }
    got = options(**body)
    assert got.lora.model_dump() == {
        "r": 64,
        "alpha": 128,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj"],
        "use_rslora": False,
    }
    assert got.auto_stop is not None
    assert got.auto_stop.model_dump() == {"threshold": 0.01, "patience": 2, "min_epochs": 2}
    assert (got.epochs, got.learning_rate, got.batch_size, got.seed) == (5, 2e-4, 4, 7)
    assert (got.lr_scheduler, got.warmup_steps, got.weight_decay, got.max_grad_norm) == (
        "cosine",
        20,
        0.01,
        0.5,
    )
    assert (got.precision, got.optimizer, got.gradient_checkpointing, got.torch_compile) == (
        "bf16",
        "adamw_8bit",
        False,
        False,
    )
    assert (got.load_in_4bit, got.quantization_type, got.compute_dtype) == (True, "fp4", "bfloat16")
    assert (got.double_quantization, got.gradient_accumulation_steps, got.max_seq_len) == (
        True,
        4,
        2048,
    )
    assert (got.packing, got.use_fast_tokenizer, got.max_memory_per_gpu) == (True, False, "9.5GB")
    assert (got.gpus, got.sharding, got.ddp_backend) == (2, "ddp", "nccl")
    # snake_case and the nested form mean the same
    assert got == options(
        **{
            "epochs": 5,
            "learning_rate": 2e-4,
            "batch_size": 4,
            "seed": 7,
            "lora": {
                "r": 64,
                "alpha": 128,
                "dropout": 0.05,
                "target_modules": ["q_proj", "k_proj", "v_proj"],
            },
            "lr_scheduler": "cosine",
            "warmup_steps": 20,
            "weight_decay": 0.01,
            "max_grad_norm": 0.5,
            "precision": "bf16",
            "optimizer": "adamw_8bit",
            "gradient_checkpointing": False,
            "load_in_4bit": True,
            "quantization_type": "fp4",
            "compute_dtype": "bfloat16",
            "gradient_accumulation_steps": 4,
            "max_seq_len": 2048,
            "packing": True,
            "use_fast_tokenizer": False,
            "auto_stop": {"threshold": 0.01, "patience": 2},
            "max_memory_per_gpu": "9.5GB",
            "gpus": 2,
            "ddp_backend": "nccl",
        }
    )


def test_target_modules_spellings() -> None:
    assert options(targetModules="all-linear").lora.target_modules == "all-linear"
    assert options(lora={"target_modules": ["q_proj"]}).lora.target_modules == ["q_proj"]
    assert problems_of(targetModules="q_proj,q_proj") == [
        "lora.target_modules: names a module twice (got 'q_proj,q_proj')"
    ]
    assert problems_of(targetModules="q proj;") == [
        'lora.target_modules: must name modules like "q_proj,v_proj" (a list or a comma '
        "string) or be \"all-linear\" (got 'q proj;')"
    ]


def test_lora_scaling_factor() -> None:
    assert options(loraRank=16, loraScalingFactor=2.0).lora.alpha == 32
    assert options(loraScalingFactor=0.5).lora.alpha == 4  # with the default r 8
    assert options(loraRank=16, useRslora=True, loraScalingFactor=2.0).lora.alpha == 8
    assert options(loraRank=64, loraAlpha=128, loraScalingFactor=2.0).lora.alpha == 128
    assert problems_of(loraRank=64, loraAlpha=32, loraScalingFactor=2.0) == [
        "lora: lora alpha 32 and lora_scaling_factor 2.0 disagree (the factor with r 64 makes "
        "alpha 128): give one of them (got {'r': 64, 'alpha': 32, 'scaling_factor': 2.0})"
    ]


def test_gpu_and_ddp_switches() -> None:
    assert options(numGpus=0).gpus == "all"
    assert options(useMultiGpu=True).gpus == "all"
    assert options(useMultiGpu=False).gpus == 1
    assert options(useMultiGpu=True, numGpus=3).gpus == 3
    assert options(useDdp=True).sharding == "ddp"
    assert options(useDdp=False, sharding="fsdp").sharding == "fsdp"
    assert problems_of(numGpus=2, gpus=4, useDdp=True, sharding="fsdp") == [
        "gpus and numGpus disagree (4 and 2): give one of them",
        "sharding and useDdp disagree ('fsdp' and 'ddp'): give one of them",
    ]


def test_every_problem_at_once() -> None:
    assert problems_of(
        loraRank=64,
        lora={"r": 8},
        optimizer="lion",
        epochs=0,
        deepspeedZeroStage=3,
        colour="blue",
    ) == [
        "loraRank and lora.r disagree (64 and 8): give one of them",
        'deepspeedZeroStage: oneseekd does not run DeepSpeed; ask for sharding "fsdp" (the '
        "GPUs share one copy of the model, as DeepSpeed ZeRO-3 does) and leave the DeepSpeed "
        "settings out",
        "epochs: input should be greater than or equal to 1 (got 0)",
        "optimizer: input should be 'adamw_torch', 'adamw_8bit', 'paged_adamw_8bit', 'sgd' or "
        "'adafactor' (got 'lion')",
        "unknown field 'colour'",
    ]


def test_per_model_overrides_resolve_once() -> None:
    base = options(loraRank=16, loraAlpha=32, autoStopThreshold=0.01, optimizer="adamw_8bit")
    big, problems = parse_overrides(
        base, "Llama-8B", {"loadIn4Bit": True, "loraRank": 64, "autoStopPatience": 5}
    )
    assert problems == [] and big is not None
    assert (big.load_in_4bit, big.lora.r, big.lora.alpha, big.optimizer) == (
        True,
        64,
        32,
        "adamw_8bit",
    )
    assert big.auto_stop is not None
    assert (big.auto_stop.threshold, big.auto_stop.patience) == (0.01, 5)
    spec = build(base, ["llama-8b", "qwen-0.5b"], "1.2", {"llama-8b": big})
    assert spec.for_model("llama-8b") == big
    assert spec.for_model("qwen-0.5b").load_in_4bit is False
    assert isinstance(spec.for_model("qwen-0.5b"), ModelOptions)
    scaled, _ = parse_overrides(base, "Llama-8B", {"loraRank": 64, "loraScalingFactor": 2.0})
    assert scaled is not None and (scaled.lora.r, scaled.lora.alpha) == (64, 128)
    _, bad = parse_overrides(base, "Llama-8B", {"seed": 1, "epochs": 0, "lora": {"r": 0}})
    assert bad == [
        "per_model.Llama-8B.seed: is the same for every model of a run",
        "per_model.Llama-8B.epochs: input should be greater than or equal to 1 (got 0)",
        "per_model.Llama-8B.lora.r: input should be greater than or equal to 1 (got 0)",
    ]


def test_a_spec_round_trips_through_the_database() -> None:
    base = options(optimizer="sgd", export_merged=True, seed=3, autoStopPatience=4)
    over, _ = parse_overrides(base, "B", {"learning_rate": 0.5, "packing": True})
    spec = build(base, ["a", "b"], "2.0", {"b": over}, ["A", "B"], {"a": "A", "b": "B"})  # type: ignore[dict-item]
    stored = json.loads(json.dumps(spec.to_config()))
    assert stored["spec_version"] == 2 and stored["seed"] == 3
    assert load(stored) == spec
    hyper = spec.hyper("b")
    assert (hyper["seed"], hyper["learning_rate"], hyper["packing"], hyper["lora"]["r"]) == (
        3,
        0.5,
        True,
        8,
    )
    with pytest.raises(SpecError) as newer:
        load({**stored, "spec_version": 3})
    assert str(newer.value) == (
        "the run's spec has version 3, and this oneseekd reads up to 2: upgrade oneseekd to "
        "train it"
    )


# the request fields Run.config held before the spec (intake's _run_config wrote them)
LEGACY_FIELDS = {
    "dataset", "version", "epochs", "batch_size", "learning_rate", "seed", "max_seq_len",
    "gradient_accumulation_steps", "warmup_ratio", "val_fraction", "checkpoint_every",
    "weighting", "gradient_checkpointing", "train_on_prompt", "truncation_side",
    "export_merged", "gpus", "sharding", "lora", "request_id", "priority", "language",
}  # fmt: skip


def legacy_config(request: dict[str, Any]) -> dict[str, Any]:
    """Run.config exactly as intake wrote it before the spec."""
    parsed, problems = parse_request({"base_models": ["A", "B"], "dataset": "d.jsonl", **request})
    assert parsed is not None, problems
    config = parsed.model_dump(mode="json", include=LEGACY_FIELDS)
    config["lora"] = {k: config["lora"][k] for k in ("r", "alpha", "dropout", "target_modules")}
    config["version"] = "1.3"
    config["base_models"] = ["a", "b"]
    config["requested_names"] = ["A", "B"]
    config["display_names"] = {"a": "A", "b": "B"}
    keys = {"A": "a", "B": "b"}
    config["per_model"] = {keys[n]: o for n, o in request.get("per_model", {}).items()}
    return json.loads(json.dumps(config))


def test_old_runs_configs_still_load() -> None:
    config = legacy_config(
        {
            "epochs": 2,
            "learning_rate": 3e-4,
            "gradient_checkpointing": True,
            "lora": {"r": 4, "target_modules": ["q_proj"]},
            "per_model": {"B": {"learning_rate": 1e-3, "lora": {"alpha": 8}, "gpus": 2}},
        }
    )
    spec = from_legacy(config)
    assert load(config) == spec
    assert (spec.version, spec.base_models, spec.display_names) == (
        "1.3",
        ["a", "b"],
        {"a": "A", "b": "B"},
    )
    a, b = spec.for_model("a"), spec.for_model("b")
    assert (a.epochs, a.learning_rate, a.gradient_checkpointing, a.gpus) == (2, 3e-4, True, 1)
    assert (b.learning_rate, b.lora.r, b.lora.alpha, b.lora.target_modules, b.gpus) == (
        1e-3,
        4,
        8,
        ["q_proj"],
        2,
    )
    # what the trainer read before (RunContext.hyper) is what the spec resolves
    for key in ("a", "b"):
        merged = {k: v for k, v in config.items() if k != "per_model"}
        override = config["per_model"].get(key, {})
        merged.update({k: v for k, v in override.items() if k != "lora"})
        lora = {**config["lora"], **override.get("lora", {})}
        hyper = spec.hyper(key)
        for field, value in merged.items():
            if field not in LEGACY_RUN_KEYS and field != "lora":
                assert hyper[field] == value, field
        assert {k: hyper["lora"][k] for k in lora} == lora


def test_configs_from_before_gpus_and_sharding_existed() -> None:
    config = legacy_config({})
    for field in ("gpus", "sharding", "weighting"):
        del config[field]
    spec = from_legacy(config)
    assert (spec.for_model("a").gpus, spec.for_model("a").sharding, spec.weighting) == (
        1,
        "ddp",
        "bits_per_byte",  # today's default: such a run trains (and is weighed) now
    )
    with pytest.raises(SpecError) as newer:
        from_legacy({**config, "colour": "blue"})
    assert str(newer.value) == (
        "the run's stored config has fields this oneseekd does not know (colour): it was "
        "written by a newer version"
    )


def spec_of(host_fields: dict[str, Any], **per_b: Any) -> RunSpec:
    base = options(**host_fields)
    over, problems = parse_overrides(base, "b", per_b)
    assert over is not None, problems
    return build(base, ["a", "b"], "1.0", {"b": over})


def test_a_plain_run_passes_everywhere() -> None:
    for host in (CPU, AMPERE, TURING):
        assert check(spec_of({}), host) == []
    assert (
        check(spec_of({"loadIn4Bit": True, "optimizer": "adamw_8bit", "packing": True}), CPU) == []
    )


def test_every_impossible_combination_is_named_with_its_fix() -> None:
    spec = spec_of(
        {
            "precision": "fp16",
            "loadIn4Bit": True,
            "export_merged": True,
            "optimizer": "paged_adamw_8bit",
            "torchCompile": True,
            "use_deepspeed": True,
            "ddp_backend": "nccl",
            "val_fraction": 0.0,
            "autoStopThreshold": 0.01,
        },
        load_in_8bit=True,
    )
    host = HostFacts(gpus=0, bitsandbytes=False, compiler=False)
    assert check(spec, host) == [
        'use_deepspeed: oneseekd does not run DeepSpeed; ask for sharding "fsdp" (the GPUs '
        "share one copy of the model, as DeepSpeed ZeRO-3 does)",
        'precision "fp16" needs a CUDA GPU, and this host has none; ask for "auto", "bf16" '
        'or "fp32"',
        "export_merged with load_in_4bit: merging into quantized weights rounds the adapter "
        "away; set export_dequantized: true (the adapter is merged into the dequantized "
        "weights and saved in the base's own dtype, which needs the base's full size in CPU "
        "memory) or export_merged: false",
        'optimizer "paged_adamw_8bit" pages through CUDA memory, and this host has no GPU; ask '
        'for "adamw_8bit" (the same 8-bit state, unpaged) or "adamw_torch"',
        'load_in_4bit and optimizer "paged_adamw_8bit" need bitsandbytes, which this host '
        "lacks: pip install bitsandbytes==0.50.2 (as the README's install does)",
        "torch_compile with load_in_4bit: torch.compile cannot trace bitsandbytes' quantized "
        "layers; set torch_compile: false",
        "torch_compile on the CPU needs a C++ compiler, and this host has none; install g++ "
        "or set torch_compile: false",
        'ddp_backend "nccl" needs CUDA GPUs, and this host has none; ask for "gloo" or leave '
        "it out (nccl on GPUs, gloo on CPUs)",
        "b: load_in_4bit and load_in_8bit: ask for one of them",
        "auto_stop watches the validation loss, and val_fraction is 0 (no validation split); "
        "set val_fraction above 0 or leave auto_stop out",
    ]
    assert "export_dequantized" not in " ".join(
        check(spec_of({"loadIn4Bit": True, "export_merged": True, "export_dequantized": True}), CPU)
    )


def test_gpu_only_combinations() -> None:
    assert check(spec_of({"precision": "bf16"}), TURING) == [
        'precision "bf16" needs GPUs of compute capability 8.0 or more, and this host\'s is '
        '7.5; ask for "auto" or "fp16"'
    ]
    assert check(spec_of({"precision": "bf16", "sharding": "fsdp"}), AMPERE) == []
    assert check(
        spec_of({"sharding": "fsdp", "gpus": 2}, load_in_4bit=True, optimizer="adamw_8bit"), TURING
    ) == [
        'sharding "fsdp" in fp16 needs a gradient scaler for sharded gradients, which oneseekd '
        'does not have; ask for sharding "ddp" or precision "bf16" on GPUs of compute '
        "capability 8.0 or more",
        'b: sharding "fsdp" with load_in_4bit: oneseekd does not shard quantized weights; ask '
        'for sharding "ddp" (quantized, the model may fit one GPU)',
        'b: optimizer "adamw_8bit" with sharding "fsdp": bitsandbytes\' optimizers do not take '
        'sharded parameters; ask for "adamw_torch"',
    ]


def test_train_dna_v2_flags() -> None:
    fields, problems = request_from_flags(
        [
            ("--epochs", "4"),
            ("--learning-rate", "0.0002"),
            ("--auto-stop-threshold", "0.001"),
            ("--auto-stop-patience", "3"),
            ("--lora-rank", "64"),
            ("--target-modules", "q_proj,v_proj"),
            ("--no-gradient-checkpointing", None),
            ("--load-in-4bit", None),
            ("--use-nested-quant", None),
            ("--max-seq-length", "1024"),
            ("--packing-enabled", None),
            ("--no-fast-tokenizer", None),
            ("--num-gpus", "0"),
        ]
    )
    assert problems == []
    got = options(**fields)
    assert (got.epochs, got.learning_rate, got.lora.r, got.lora.target_modules) == (
        4,
        2e-4,
        64,
        ["q_proj", "v_proj"],
    )
    assert got.auto_stop is not None and got.auto_stop.patience == 3
    assert (got.gradient_checkpointing, got.load_in_4bit, got.double_quantization) == (
        False,
        True,
        True,
    )
    assert (got.max_seq_len, got.packing, got.use_fast_tokenizer, got.gpus) == (
        1024,
        True,
        False,
        "all",
    )
    _, bad = request_from_flags(
        [("--epochs", "many"), ("--load-in-4bit", "yes"), ("--colour", "x")]
    )
    assert bad == [
        "--epochs: 'many' is not a int",
        "--load-in-4bit takes no value (got 'yes')",
        "--colour: not an option of train_dna_v2.py that oneseekd knows",
    ]


def test_every_flag_sets_an_option() -> None:
    for flag in FLAGS:
        value: Any = (
            flag.switch if flag.switch is not None else {int: 64, float: 0.5}.get(flag.kind)
        )
        if flag.kind is str and flag.switch is None:
            value = {
                "--lr-scheduler": "linear",
                "--precision": "fp32",
                "--optimizer": "sgd",
                "--target-modules": "q_proj",
                "--quantization-type": "fp4",
                "--compute-dtype": "float16",
                "--max-memory-per-gpu": "20GiB",
                "--ddp-backend": "gloo",
                "--micro-batch-size": "2",
            }[flag.flag]
        parsed, problems = parse_options({flag.field: value})
        if flag.flag.startswith("--deepspeed-"):
            assert problems and "DeepSpeed" in problems[0]
            continue
        assert problems == [], flag
        assert parsed != RunOptions() or flag.switch in (True, False), flag


def test_run_fields_are_not_per_model() -> None:
    assert set(RUN_FIELDS) == {
        "seed",
        "val_fraction",
        "checkpoint_every",
        "weighting",
        "export_merged",
        "export_dequantized",
        "report_to",  # where the curves go (trainer/curves.py)
    }


def test_the_spec_needs_no_torch() -> None:
    """The daemon and oneseekctl read and check specs; they never import torch."""
    code = (
        "import sys, oneseekd.spec.request, oneseekd.spec.host, oneseekd.spec.names; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_memory_per_gpu() -> None:
    assert memory_bytes(options(maxMemoryPerGpu="9.5GB").max_memory_per_gpu or "") == 9_500_000_000
    assert memory_bytes("20GiB") == 20 * 2**30
    assert memory_bytes("800MiB") == 800 * 2**20
    assert problems_of(maxMemoryPerGpu="lots") == [
        'max_memory_per_gpu: must be a size like "9.5GB" or "20GiB" (GB, GiB, MB or MiB) '
        "(got 'lots')"
    ]

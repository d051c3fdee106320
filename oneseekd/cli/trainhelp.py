"""`oneseekctl train --help`: every train_dna_v2.py flag grouped, with its default and choices
(held to the run spec's by tests/test_train_help.py), the environment, CivicAI's other
spellings in one note, and examples. train.py reads the flags itself (build_request); this
module only says what they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from oneseekd.cli.flaghelp import OPTIMIZERS, SCHEDULERS  # submit's help has the same choices


@dataclass(frozen=True)
class Help:
    """One line of `train --help`: the flag(s) and its value, what it does, the request field
    whose default it shows (spec/request.py; a test holds the two to each other), and the
    values it takes."""

    flags: str
    text: str
    field: str | None = None
    default: str | None = None
    choices: tuple[str, ...] = ()


HELP: tuple[tuple[str, tuple[Help, ...]], ...] = (
    (
        "What to train",
        (
            Help("--dataset FILE", "the training data: HOME/datasets/FILE (or datasets/FILE)"),
            Help("--base-models A[,B ...]", "base models, in training order (else BASE_MODELS)"),
            Help("--epochs N", "epochs for every model", "epochs", "3"),
            Help("--seed N", "the split's and the training's seed", "seed", "42"),
            Help("--language CODE", "the data's language, kept in the run's metadata"),
            Help("--dry-run", "say what would run (records, tokens, memory); queue nothing"),
        ),
    ),
    (
        "Optimization",
        (
            Help("--learning-rate LR", "the peak learning rate", "learning_rate", "0.0001"),
            Help("--batch-size N", "records in a step", "batch_size", "8"),
            Help(
                "--gradient-accumulation-steps N",
                "batches in a step",
                "gradient_accumulation_steps",
                "1",
            ),
            Help(
                "--micro-batch-size N|auto",
                "rows in a pass (auto: what fits)",
                "micro_batch_size",
                "a batch",
            ),
            Help("--max-seq-length N", "tokens a record is cut to", "max_seq_len", "512"),
            Help(
                "--lr-scheduler NAME",
                "the learning rate's schedule",
                "lr_scheduler",
                "cosine_with_min_lr",
                SCHEDULERS,
            ),
            Help(
                "--warmup-steps N", "warm-up steps (else warmup_ratio 0.03)", "warmup_steps", "none"
            ),
            Help("--weight-decay X", "AdamW's weight decay", "weight_decay", "0.0"),
            Help("--max-grad-norm X", "gradient clipping (0: none)", "max_grad_norm", "1.0"),
            Help("--optimizer NAME", "the optimizer", "optimizer", "adamw_torch", OPTIMIZERS),
        ),
    ),
    (
        "LoRA",
        (
            Help("--lora-rank N", "LoRA's r", "lora.r", "8"),
            Help("--lora-alpha N", "LoRA's alpha", "lora.alpha", "32"),
            Help("--dropout X", "LoRA's dropout", "lora.dropout", "0.1"),
            Help("--target-modules A,B", "the modules LoRA adapts (else each family's own)"),
            Help("--lora-scaling-factor X", "alpha / r, instead of --lora-alpha"),
        ),
    ),
    (
        "Auto-stop (on when either is given)",
        (
            Help(
                "--auto-stop-threshold X",
                "an epoch that improves less is stale",
                "auto_stop.threshold",
                "0.001",
            ),
            Help(
                "--auto-stop-patience N", "stale epochs before the stop", "auto_stop.patience", "3"
            ),
        ),
    ),
    (
        "Precision, memory and quantization",
        (
            Help(
                "--precision NAME",
                "the training precision",
                "precision",
                "auto",
                ("auto", "fp32", "bf16", "fp16"),
            ),
            Help(
                "--[no-]gradient-checkpointing",
                "recompute activations",
                "gradient_checkpointing",
                "when a step would not fit",
            ),
            Help("--[no-]torch-compile", "compile the model", "torch_compile", "off"),
            Help("--packing-enabled", "pack short records into full rows", "packing", "off"),
            Help("--no-fast-tokenizer", "use the slow tokenizer", "use_fast_tokenizer", "fast"),
            Help(
                "--load-in-4bit / --load-in-8bit",
                "hold the base quantized (QLoRA)",
                "load_in_4bit",
                "off",
            ),
            Help(
                "--quantization-type NAME", "4-bit type", "quantization_type", "nf4", ("nf4", "fp4")
            ),
            Help(
                "--compute-dtype NAME",
                "4-bit compute type",
                "compute_dtype",
                "auto",
                ("auto", "float32", "bfloat16", "float16"),
            ),
            Help(
                "--[no-]double-quantization",
                "quantize the quantization constants",
                "double_quantization",
                "on",
            ),
        ),
    ),
    (
        "GPUs",
        (
            Help("--num-gpus N", "GPUs for each model", "gpus", "1"),
            Help("--use-multi-gpu / --no-multi-gpu", "every GPU of the host, or one"),
            Help("--use-ddp", "several GPUs by DDP (else USE_DDP=true)"),
            Help(
                "--ddp-backend NAME",
                "the processes' backend",
                "ddp_backend",
                "nccl on GPUs, gloo on CPUs",
                ("nccl", "gloo"),
            ),
            Help(
                "--max-memory-per-gpu SIZE",
                "a cap on each GPU's memory (24GiB)",
                "max_memory_per_gpu",
                "none",
            ),
        ),
    ),
)
# CivicAI's other spellings, taken and not listed one by one; DeepSpeed's flags are refused
ALIASES_NOTE = (
    "CivicAI's other spellings are taken too (--use-nested-quant for --double-quantization); "
    "the DeepSpeed flags are refused by name (oneseekd shares a model across GPUs with FSDP)."
)
ENVIRONMENT = (
    ("BASE_MODELS=A,B", "the base models, when --base-models is not given"),
    ("RUN_ID=ID", "the run's id (CivicAI's run-YYYY-MM-DD-HH-MM-SS)"),
    ("USE_DDP=true", "several GPUs by DDP"),
    ("MODELS_DIR=DIR", "must be this home's models folder"),
)
EXAMPLES = (
    "BASE_MODELS=smollm2 oneseekctl --home demo-home train --dataset civic.jsonl --epochs 1",
    "oneseekctl --home demo-home train --base-models smollm2 --dataset civic.jsonl --dry-run",
    "oneseekctl --home /srv/civicai train --dataset datasets/civic.jsonl --base-models "
    "qwen2.5-7b --lora-rank 8 --auto-stop-patience 2",
)


class TrainCommand(click.Command):
    """`train`'s flags are read by build_request (argv as CivicAI gives it), not by click:
    its help is written from HELP, grouped, with each flag's default and choices."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, rows in HELP:
            with formatter.section(title):
                formatter.write_dl(
                    [
                        (
                            row.flags,
                            row.text
                            + (f" (one of {', '.join(row.choices)})" if row.choices else "")
                            + (f" [default: {row.default}]" if row.default else ""),
                        )
                        for row in rows
                    ]
                )
        with formatter.section("Environment (CivicAI's admin panel sets it)"):
            formatter.write_dl(list(ENVIRONMENT))
        with formatter.section("Other"):
            formatter.write_dl([("-h, --help", "this help")])
            formatter.write_paragraph()
            formatter.write_text(ALIASES_NOTE)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return ["[FLAGS]..."]

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Examples"):
            for example in EXAMPLES:  # one a line, unwrapped: each is copied whole
                formatter.write(f"{'':>{formatter.current_indent}}{example}\n")

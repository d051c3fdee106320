"""What `submit --help` says of each flag: its meaning, its default and its choices.

The defaults and choices are those of the run spec (oneseekd/spec/request.py), written here
rather than read from it so that `--help` does not import pydantic; tests/test_cli_help.py
checks every one against the spec. A flag whose default is None here has none (the request
is refused without it, or the field is left unset).
"""

from __future__ import annotations

from dataclasses import dataclass

from oneseekd.spec.names import NO_DEEPSPEED


@dataclass(frozen=True)
class FlagHelp:
    text: str
    default: str | None = None  # as `[default: ...]` shows it
    choices: tuple[str, ...] | None = None
    field: str | None = None  # the spec field whose default and choices these are


SCHEDULERS = (
    *("linear", "cosine", "cosine_with_restarts", "polynomial", "constant"),
    *("constant_with_warmup", "cosine_with_min_lr"),
)
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor")

FLAG_HELP: dict[str, FlagHelp] = {
    "--dataset": FlagHelp("Dataset file under HOME/datasets/ (JSONL, or a JSON array)."),
    "--version": FlagHelp("MAJOR.MINOR (1.2 or v1.2).", "the next free one"),
    "--epochs": FlagHelp("Epochs, 1 to 1000.", "3", field="epochs"),
    "--batch-size": FlagHelp("Rows per optimizer step, 1 to 4096.", "8", field="batch_size"),
    "--learning-rate": FlagHelp(
        "Peak learning rate, above 0, at most 1.", "0.0001", field="learning_rate"
    ),
    "--seed": FlagHelp("Seed of the split and the training, 0 to 2^32-1.", "42", field="seed"),
    "--max-seq-len": FlagHelp(
        "Tokens per row, 16 to 131072 (alias --max-seq-length).", "512", field="max_seq_len"
    ),
    "--lora-r": FlagHelp("LoRA rank, 1 to 1024 (alias --lora-rank).", "8", field="lora.r"),
    "--lora-alpha": FlagHelp("LoRA alpha, 1 to 8192.", "32", field="lora.alpha"),
    "--lora-dropout": FlagHelp(
        "LoRA dropout, 0 to below 1 (alias --dropout).", "0.1", field="lora.dropout"
    ),
    "--target-modules": FlagHelp(
        "Comma-separated LoRA target modules (q_proj,v_proj), or all-linear.",
        "the attention projections of the model's family",
    ),
    "--request-id": FlagHelp("Idempotency key: the same key is never queued twice."),
    "--priority": FlagHelp("-100 to 100; a higher priority runs first.", "0", field="priority"),
    "--lr-scheduler": FlagHelp(
        "Learning rate schedule.", "cosine_with_min_lr", SCHEDULERS, "lr_scheduler"
    ),
    "--warmup-steps": FlagHelp(
        "Warmup in optimizer steps; wins over the request's warmup_ratio.",
        "warmup_ratio 0.03",
    ),
    "--micro-batch-size": FlagHelp(
        "Rows per pass (a batch trained in passes), or auto: the largest that fits.",
        "one pass per batch",
    ),
    "--weight-decay": FlagHelp("Weight decay, 0 to 1.", "0.0", field="weight_decay"),
    "--max-grad-norm": FlagHelp(
        "Gradient clipping norm; 0: no clipping.", "1.0", field="max_grad_norm"
    ),
    "--precision": FlagHelp(
        "auto: bf16 where the hardware computes it natively, else fp32; fp16 on CUDA only.",
        "auto",
        ("auto", "fp32", "bf16", "fp16"),
        "precision",
    ),
    "--optimizer": FlagHelp(
        "Optimizer (paged_adamw_8bit on CUDA only).", "adamw_torch", OPTIMIZERS, "optimizer"
    ),
    "--gradient-checkpointing": FlagHelp(
        "Force gradient checkpointing on (--no-gradient-checkpointing: off).",
        "on when a step would not fit 85 % of the GPU",
    ),
    "--no-gradient-checkpointing": FlagHelp("Force gradient checkpointing off."),
    "--torch-compile": FlagHelp("Compile the model with torch.compile.", "off"),
    "--no-torch-compile": FlagHelp("Do not compile the model (the default)."),
    "--load-in-4bit": FlagHelp("QLoRA: the base model in 4 bits (bitsandbytes, CUDA).", "off"),
    "--load-in-8bit": FlagHelp("The base model in 8 bits (bitsandbytes, CUDA).", "off"),
    "--quantization-type": FlagHelp(
        "4-bit quantization, with --load-in-4bit.",
        "nf4",
        ("nf4", "fp4"),
        "quantization_type",
    ),
    "--compute-dtype": FlagHelp(
        "What 4-bit layers compute in.",
        "auto",
        ("auto", "float32", "bfloat16", "float16"),
        "compute_dtype",
    ),
    "--double-quantization": FlagHelp(
        "Quantize the quantization constants too, with --load-in-4bit (alias --use-nested-quant).",
        "on",
    ),
    "--no-double-quantization": FlagHelp("Do not quantize the quantization constants."),
    "--gradient-accumulation-steps": FlagHelp(
        "Batches per optimizer step, 1 to 4096.", "1", field="gradient_accumulation_steps"
    ),
    "--packing-enabled": FlagHelp("Several records per row, nothing leaking between them.", "off"),
    "--no-fast-tokenizer": FlagHelp("Use the model's slow (Python) tokenizer."),
    "--max-memory-per-gpu": FlagHelp("A size like 9.5GB or 20GiB.", "no limit"),
    "--ddp-backend": FlagHelp(
        "Backend of the processes' collectives.", "nccl on GPUs, gloo on CPUs", ("nccl", "gloo")
    ),
    "--auto-stop-threshold": FlagHelp(
        "Stop once the validation loss improves by less than this for --auto-stop-patience epochs.",
        "no auto stop",
    ),
    "--auto-stop-patience": FlagHelp(
        "Epochs of too little improvement before an auto stop.", "3", field="auto_stop.patience"
    ),
}

# train_dna_v2.py's other spellings of a flag above, and the admin panel's GPU switches:
# taken, but listed in one line of `submit --help` rather than each on its own
ALIASES = (
    *("--lora-rank", "--dropout", "--max-seq-length", "--use-nested-quant"),
    *("--lora-scaling-factor", "--num-gpus", "--use-multi-gpu", "--no-multi-gpu", "--use-ddp"),
)
# refused whatever their value (NO_DEEPSPEED): taken so that the refusal names them, never shown
REFUSED: tuple[str, ...] = (
    *("--use-deepspeed", "--deepspeed-tp-size", "--deepspeed-zero-stage"),
    "--deepspeed-batch-size",
)
REFUSED_WHY = NO_DEEPSPEED

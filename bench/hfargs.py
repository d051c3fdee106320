"""transformers' TrainingArguments for a timed run on the CPU, shared by the benches that set
the trainer against transformers' Trainer (bench/train.py, bench/options.py). Imported before
peft and transformers' Trainer, it imports bitsandbytes first as the trainer does, without its
kernel lookup on the Hub (oneseekd.trainer.hubless)."""

from __future__ import annotations

from typing import Any

from oneseekd.trainer.hubless import import_bitsandbytes

import_bitsandbytes()

from transformers import TrainingArguments  # noqa: E402


def quiet_training_args(
    output_dir: str, batch: int, learning_rate: float, seed: int, **more: Any
) -> TrainingArguments:
    """One epoch on the CPU with a cosine schedule and clipping at 1.0, as the trainer runs;
    nothing else that costs time: no reports, saving, logging, evaluation, progress bar or
    data-loading workers. `more`: the bench's own arguments (warm-up, sampling)."""
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        seed=seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        **more,
    )

"""The held-out evaluation of a model: what certifies that training improved it.

Every figure is taken over the same rows (a deterministic prefix of the validation split,
capped at `[certify] eval_tokens` tokens so evaluation stays a small share of a run), the same
batches, and the same target tokens training is scored on (labels.py: the response of an
instruction record, the assistant turns of a chat, the whole of a text):

- `loss`: the mean next-token loss in nats per target token (the validation loss);
- `perplexity`: exp(loss);
- `bits_per_byte`: the summed target-token loss in nats / ln 2 / the UTF-8 bytes of the target
  text. A token is not the same unit in two tokenizers (one that cuts text into more, shorter
  tokens gets a lower loss per token without predicting the text any better); a byte is, so
  this is the figure models are compared on and weighted by. The bytes are those the target
  tokens hold of the whole rendered text, by its offsets (labels.token_bytes), each special
  token (the end of a turn) one byte in every family: two tokenizers of one text count the
  same bytes;
- `accuracy`: top-1 next-token accuracy on the target tokens.

The base model is measured with its adapter disabled, on the same batches, before the first
optimizer step. `samples` generates greedily from a few held-out prompts with both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

from oneseekd.trainer.data import Encoded, Records, collate
from oneseekd.trainer.loading import Device
from oneseekd.trainer.loss import IGNORE_INDEX, ChunkedCausalLM, row_scores
from oneseekd.trainer.world import World


@dataclass(frozen=True)
class Figures:
    loss: float
    perplexity: float
    bits_per_byte: float
    accuracy: float
    tokens: int  # target tokens scored
    bytes: int  # UTF-8 bytes of their text
    # each held-out row's summed target loss in bits, in the rows' order: what the gate
    # compares two models on, record by record (certify/gate.py)
    record_bits: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HeldOut:
    """The rows evaluated and the UTF-8 bytes of each row's target text."""

    data: Encoded
    target_bytes: list[int]
    source: str  # "validation", or "train" when the run has no validation split

    def describe(self) -> dict[str, Any]:
        return {
            "split": self.source,
            "rows": len(self.data.ids),
            "tokens": sum(self.data.lengths()),
            "target_tokens": sum(self.data.label_counts()),
            "target_bytes": sum(self.target_bytes),
            "record_bytes": list(self.target_bytes),  # each row's, in order (the gate's)
        }


def spans(mask: list[int]) -> list[tuple[int, int]]:
    """The runs of target positions (labels after the first token: it is predicted from
    nothing), as [start, end) pairs."""
    found: list[tuple[int, int]] = []
    start = None
    for i in range(1, len(mask) + 1):
        inside = i < len(mask) and mask[i] == 1
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            found.append((start, i))
            start = None
    return found


def held_out(val: Encoded, train: Encoded, max_tokens: int) -> HeldOut:
    """The validation rows in split order while their tokens stay within `max_tokens` (at least
    one row); the training rows when there is no validation split (val_fraction 0)."""
    data, source = (val, "validation") if val.ids else (train, "train")
    chosen: list[int] = []
    total = 0
    for i, ids in enumerate(data.ids):
        if chosen and total + len(ids) > max_tokens:
            break
        chosen.append(i)
        total += len(ids)
    rows = data.subset(chosen)
    return HeldOut(rows, rows.label_bytes(), source)


def batch_count(held: HeldOut, batch_size: int, world: World) -> int:
    """How many batches one rank's measure() of `held` runs: the phase's total."""
    return math.ceil(math.ceil(len(held.data.ids) / max(batch_size, 1)) / world.size)


def _batches(data: Encoded, batch_size: int) -> list[list[int]]:
    """Rows sorted by length (little padding), cut into batches: the same for every model."""
    order = sorted(range(len(data.ids)), key=lambda i: (len(data.ids[i]), i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def scored(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed next-token loss (fp32) and top-1 hits over the labels, from the
    whole logits tensor: only for a sharded model without the chunked wrapper, whose training
    step holds the whole logits too."""
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    return row_scores(logits, shifted)


def scorer(model: Any, sharded: bool) -> Any:
    """What a batch's sums come from: the chunked wrapper (the root a sharded model gathers
    its weights through), or a wrapper made here around the model (its decoder and a chunked
    head, so the whole logits tensor never exists); a sharded model without the wrapper
    (chunked_loss off) answers with its whole logits, as its training step does."""
    if isinstance(model, ChunkedCausalLM) or sharded:
        return model
    return ChunkedCausalLM(model)


def figures(record_nats: list[float], hits: float, tokens: int, nbytes: int) -> Figures:
    """The figures from each row's summed loss in nats (added exactly, so the total does not
    depend on the order the rows were measured in)."""
    loss_nats = math.fsum(record_nats)
    loss = loss_nats / max(tokens, 1)
    return Figures(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),  # finite in JSON, whatever the loss
        bits_per_byte=loss_nats / math.log(2) / max(nbytes, 1),
        accuracy=hits / max(tokens, 1),
        tokens=tokens,
        bytes=nbytes,
        record_bits=[n / math.log(2) for n in record_nats],
    )


@torch.no_grad()
def measure(
    model: Any,
    held: HeldOut,
    pad_id: int,
    batch_size: int,
    world: World,
    sharded: bool,
    device: Device,
    on_batch: Callable[[int, int], None] | None = None,
) -> Figures:
    """Every figure of `model` on the held-out rows, each rank its share of the batches and
    each row's sums all-reduced (a row is measured by one rank, the others add 0, so the
    result is the same on every run of the same weights, on any number of processes).
    Through the decoder and a chunked head, as the training loss is taken, with no KV cache:
    it never needs more memory than a training step. `on_batch(done, total)` is told after
    each of this rank's batches (the phase's progress)."""
    data = held.data
    counts = data.label_counts()
    batches = _batches(data, batch_size)
    mine: list[list[int] | None] = list(batches[world.rank :: world.size])
    if sharded:  # every forward pass gathers weights: all ranks run as many
        rounds = math.ceil(len(batches) / world.size)
        mine += [None] * (rounds - len(mine))
    record_nats = [0.0] * len(data.ids)
    record_hits = [0.0] * len(data.ids)
    net = scorer(model, sharded)
    was_training = model.training
    model.eval()
    try:
        for done, rows in enumerate(mine, start=1):  # None: the first batch again, not counted
            batch = collate(data, batches[0] if rows is None else rows, pad_id)
            labels = batch.pop("labels")
            batch = {k: v.to(device.type) for k, v in batch.items()}
            if isinstance(net, ChunkedCausalLM):
                loss, hits, _ = net(**batch, labels=labels, scores=True)
            else:
                loss, hits = scored(net(**batch, use_cache=False).logits, labels)
            if rows is not None:
                for row, nats, hit in zip(rows, loss.tolist(), hits.tolist(), strict=True):
                    record_nats[row], record_hits[row] = float(nats), float(hit)
            if on_batch is not None:
                on_batch(done, len(mine))
    finally:
        model.train(was_training)
    summed = world.sum(record_nats + record_hits)
    record_nats, hit_sum = summed[: len(data.ids)], sum(summed[len(data.ids) :])
    return figures(record_nats, hit_sum, sum(counts), sum(held.target_bytes))


def measure_adapter(
    model: Any,
    folder: Any,
    held: HeldOut,
    pad_id: int,
    batch_size: int,
    world: World,
    device: Device,
    on_batch: Callable[[int, int], None] | None = None,
) -> Figures:
    """Another adapter of the same base (the current run's, from its folder) measured on these
    held-out rows: loaded beside the trained one, made active, measured, then removed (the
    trained adapter is active again, as it was)."""
    name = "oneseekd_compared"
    active = model.active_adapter
    model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
    try:
        model.set_adapter(name)
        with autocast(device):
            return measure(model, held, pad_id, batch_size, world, False, device, on_batch)
    finally:
        model.set_adapter(active)
        model.delete_adapter(name)


def autocast(device: Device) -> Any:
    """The training precision's autocast on `device` (none in fp32), so the held-out figures
    and the samples are computed as training computes, on a CPU as on a GPU."""
    if device.dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=device.dtype)


# --- samples ------------------------------------------------------------------------------
def sample_prompts(records: Records, indices: list[int], count: int) -> list[int]:
    """The first `count` held-out chat and instruction records (text records have no prompt)."""
    return [i for i in indices if "text" not in records.items[i]][:count]


def prompt_ids(ids: list[int], mask: list[int]) -> list[int]:
    """The tokens before the first target: the prompt part, as the model saw it in training."""
    first = next((i for i, m in enumerate(mask) if m and i > 0), len(ids))
    return ids[:first]


@torch.no_grad()
def generate(model: Any, tokenizer: Any, ids: list[int], new_tokens: int, device: Device) -> str:
    """A greedy continuation (deterministic), decoded without special tokens."""
    inputs = torch.tensor([ids], dtype=torch.long, device=device.type)
    out = model.generate(
        input_ids=inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return str(tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True))


def samples(
    model: Any,
    tokenizer: Any,
    encoded: list[tuple[int, list[int], list[int]]],
    records: Records,
    new_tokens: int,
    device: Device,
    on_prompt: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """For each (record index, ids, mask): the prompt, the reference answer, and the greedy
    answers of the base (adapter disabled) and the trained model; `on_prompt(done, total)`
    is told after each."""
    was_training = model.training
    model.eval()
    found = []
    try:
        for done, (index, ids, mask) in enumerate(encoded, start=1):
            if on_prompt is not None and done > 1:
                on_prompt(done - 1, len(encoded))
            prompt = prompt_ids(ids, mask)
            if not prompt or len(prompt) == len(ids):
                continue
            reference = [ids[a:b] for a, b in spans(mask)][:1]
            with model.disable_adapter(), autocast(device):
                base = generate(model, tokenizer, prompt, new_tokens, device)
            with autocast(device):
                trained = generate(model, tokenizer, prompt, new_tokens, device)
            found.append(
                {
                    "record": records.where[index],
                    "prompt": tokenizer.decode(prompt, skip_special_tokens=True),
                    "reference": tokenizer.decode(reference[0], skip_special_tokens=True)
                    if reference
                    else "",
                    "base": base,
                    "trained": trained,
                }
            )
    finally:
        model.train(was_training)
    return found

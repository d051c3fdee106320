"""The causal-LM loss in chunks of the sequence, never holding the whole logits tensor.

A model's forward pass turns the last hidden states (batch x seq x hidden) into logits
(batch x seq x vocab) and takes the cross-entropy of them: at batch 8 x 512 with a 49k
vocabulary that is 805 MB in fp32, and autograd keeps several copies of it (the logits, their
fp32 cast, the softmax) for the backward pass. Here the head runs on one chunk of positions
at a time inside activation checkpointing, so only the hidden states are kept and a chunk's
logits live only while that chunk is computed (once forward, once again in backward).

The loss is the SUM over the labelled positions, with the count, so that gradient
accumulation can divide by the label tokens of the whole window (every token counts once).
Labels follow the trainer's convention: labels[:, t + 1] is predicted at position t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from oneseekd.spec import memory
from oneseekd.trainer.data import IGNORE_INDEX as IGNORE_INDEX

# positions (over the whole batch) whose logits one chunk holds: 256 x 49k x 4 B = 50 MB,
# against 805 MB for the whole tensor at 8 x 512 (a 152k vocabulary: 155 MB a chunk). The
# head's matmul stays large enough (256 rows) to run at full speed. The memory estimate
# (spec/memory.py) counts it, so it is defined there.
CHUNK_TOKENS = memory.CHUNK_TOKENS

Head = Callable[[torch.Tensor], torch.Tensor]


class LossSum(NamedTuple):
    """What the chunked forward returns: a tuple (so DDP passes it through as it is) that
    also answers `.loss`, the token mean a transformers model's output carries."""

    loss_sum: torch.Tensor
    label_count: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.loss_sum / self.label_count.clamp(min=1)


def _targets(labels: torch.Tensor) -> torch.Tensor:
    """labels[:, t + 1], the token position t predicts (the last position predicts nothing)."""
    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def _summed(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The summed (not averaged) token loss in fp32: a sum over no labels is 0, never NaN, and
    sums add up across chunks, micro-batches and ranks."""
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed next-token loss of the whole logits tensor over the labelled positions."""
    return _summed(logits, _targets(labels))


# A chunk is a slice of every row's positions, not contiguous in memory, and a linear layer
# on such a slice takes a slow path on the CPU: for SmolLM2's head at 8 rows x 32 positions,
# 3.8 s in bf16 against 0.055 s on a contiguous copy (fp32: 0.42 s against 0.11 s). The
# chunk is copied first (rows x positions x hidden, a few MB) by both the loss and the scores.
def _chunk_loss(head: Head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _summed(head(hidden.contiguous()), targets)


def labelled_chunks(targets: torch.Tensor, step: int) -> list[int]:
    """The first positions of the chunks of `step` positions that hold a label, decided on
    the CPU targets (the batch is collated there): no chunk waits for the device to answer
    whether it has one (on a GPU the first such read would wait for the whole forward)."""
    labelled = (targets != IGNORE_INDEX).any(dim=0)
    length = len(labelled)
    padded = torch.nn.functional.pad(labelled, (0, -length % step))
    flags: list[bool] = padded.reshape(-1, step).any(dim=1).tolist()
    return [chunk * step for chunk, flag in enumerate(flags) if flag]


def chunk_step(rows: int, chunk_tokens: int) -> int:
    """The positions of one chunk: `chunk_tokens` over the batch's rows, at least one."""
    return max(1, chunk_tokens // max(rows, 1))


def chunked_loss_sum(
    hidden: torch.Tensor, head: Head, labels: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, number of labelled positions) of `head(hidden)` against `labels`,
    computed `chunk_tokens` positions at a time. Chunks without a label are skipped. The count
    is on the CPU with the labels; only the targets go to the device, once."""
    cpu = _targets(labels.cpu())
    step = chunk_step(cpu.shape[0], chunk_tokens)
    targets = cpu.to(hidden.device, non_blocking=True)
    # connected to the graph even when nothing is labelled: backward then gives zeros
    total = hidden.sum() * 0.0
    for start in labelled_chunks(cpu, step):
        loss = checkpoint(
            _chunk_loss,
            head,
            hidden[:, start : start + step],
            targets[:, start : start + step],
            use_reentrant=False,
        )
        total = total + loss
    return total, (cpu != IGNORE_INDEX).sum()


class Scores(NamedTuple):
    """What the held-out evaluation sums: each row's summed loss (fp32) and top-1 hits, and
    the labelled positions of the batch."""

    loss_sum: torch.Tensor  # (rows,)
    hits: torch.Tensor  # (rows,)
    label_count: torch.Tensor


def row_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed next-token loss in fp32 (positions without a label count 0) and its
    top-1 hits, from logits (rows x positions x vocab) and their targets."""
    losses = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).reshape(targets.shape)
    targets = targets.to(logits.device)
    hits = (logits.argmax(-1) == targets) & (targets != IGNORE_INDEX)
    return losses.sum(-1), hits.sum(-1)


def _chunk_scores(
    head: Head, hidden: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return row_scores(head(hidden.contiguous()), targets)


@torch.no_grad()
def chunked_scores(
    hidden: torch.Tensor, head: Head, labels: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS
) -> Scores:
    """Each row's summed loss and top-1 hits of `head(hidden)` against `labels`, a chunk of
    positions at a time as the training loss takes them (no gradient: nothing is kept)."""
    cpu = _targets(labels.cpu())
    step = chunk_step(cpu.shape[0], chunk_tokens)
    targets = cpu.to(hidden.device, non_blocking=True)
    rows = cpu.shape[0]
    loss = torch.zeros(rows, dtype=torch.float32, device=hidden.device)
    hits = torch.zeros(rows, dtype=torch.long, device=hidden.device)
    for start in labelled_chunks(cpu, step):
        chunk = slice(start, start + step)
        part = _chunk_scores(head, hidden[:, chunk], targets[:, chunk])
        loss += part[0]
        hits += part[1]
    return Scores(loss, hits, (cpu != IGNORE_INDEX).sum())


def head_of(model: Any) -> tuple[torch.nn.Module, Head]:
    """The decoder (hidden states from input ids) and the head (logits from hidden states) of
    a causal LM or a PEFT model around one, with the final-logit scaling some families apply
    (Cohere's logit_scale, Gemma 2's soft-capping) so the logits are the model's own."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder: torch.nn.Module = base.get_decoder()
    out: torch.nn.Module = base.get_output_embeddings()
    config = base.config
    scale = getattr(config, "logit_scale", None)
    cap = getattr(config, "final_logit_softcapping", None)

    def head(hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = out(hidden)
        if scale is not None:
            logits = logits * scale
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return decoder, head


class ChunkedCausalLM(torch.nn.Module):
    """A causal LM whose forward returns (summed loss, label count) from chunked logits.

    Wrap the (PEFT) model in this before DDP wraps it, so DDP's forward is this forward; under
    FSDP shard this wrapper (it is then the root that gathers the embeddings and the head)."""

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = CHUNK_TOKENS) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        # a tuple, not attributes: a module attribute would register the decoder twice
        self._parts = head_of(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        scores: bool = False,
    ) -> Any:
        """The summed loss over `labels`; with `scores`, the held-out evaluation's sums
        (Scores, no gradient); without labels, the model's own output (its full logits)."""
        if labels is None:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
        decoder, head = self._parts
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        if scores:
            return chunked_scores(out.last_hidden_state, head, labels, self.chunk_tokens)
        return LossSum(*chunked_loss_sum(out.last_hidden_state, head, labels, self.chunk_tokens))

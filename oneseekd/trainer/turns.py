"""Which characters of a chat rendered by its template are the assistant's turns.

A turn is labelled only where the template itself says where it is; nothing is guessed:

1. The conversation rendered up to the turn, with the generation prompt, must be an exact
   prefix of the whole conversation's render. The turn starts where that prefix ends and ends
   with the first special token the template puts after its content (Llama 3's `<|eot_id|>`,
   Qwen's `<|im_end|>`, Mistral's `</s>`), which the render through the turn must hold too;
   what a template writes after it (a newline, Phi-3's closing eos) is not the turn's.
   A template without a special end-of-turn token labels the turn's render to its end.
2. Where the prefix does not hold (Mistral v0.3, Nemo and Small put the system message into the
   *last* user message, so the render up to a turn holds it where the whole does not), the
   template's `{% generation %}` markers name the assistant's tokens, when it has them.
3. Otherwise the record is refused, with the template problem named.
"""

from __future__ import annotations

import re
from typing import Any

GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")

Span = tuple[int, int]  # [start, end) in characters of the rendered text


class TemplateProblem(Exception):
    """The chat template does not say where an assistant turn is."""


def render(tokenizer: Any, messages: list[dict[str, Any]], prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    )


def special_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special tokens: its named ones and every added token marked special
    (Phi-3's `<|end|>` is only the latter)."""
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {i for i, token in decoder.items() if getattr(token, "special", False)}


def has_generation_markers(tokenizer: Any) -> bool:
    return bool(GENERATION.search(str(getattr(tokenizer, "chat_template", "") or "")))


def assistant_spans(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    full: str,
    ids: list[int],
    offsets: list[Span],
    specials: set[int],
) -> list[Span]:
    """The character span of every assistant turn in `full` (the whole conversation's render,
    tokenized into ids at offsets); TemplateProblem where the prefix rule does not hold."""
    spans = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:turn], prompt=True)
        if not full.startswith(before):
            raise TemplateProblem(_not_a_prefix(turn, messages))
        through = render(tokenizer, messages[: turn + 1], prompt=False)
        bound = _common(through, full)
        content = str(message.get("content") or "").strip()
        at = full.find(content, len(before), bound) if content else len(before)
        content_end = len(before) if at < 0 else at + len(content)
        closing = [
            end
            for token, (start, end) in zip(ids, offsets, strict=True)
            if token in specials and content_end <= start and end <= bound
        ]
        if closing:
            spans.append((len(before), closing[0]))
        elif full.startswith(through):
            spans.append((len(before), len(through)))
        else:
            raise TemplateProblem(_not_a_prefix(turn, messages))
    return spans


def marked_mask(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """The ids and the assistant mask from the template's `{% generation %}` markers."""
    out = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        add_generation_prompt=False,
    )
    return list(out["input_ids"]), [int(bool(m)) for m in out["assistant_masks"]]


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _not_a_prefix(turn: int, messages: list[dict[str, Any]]) -> str:
    number = sum(m["role"] == "assistant" for m in messages[: turn + 1])
    why = (
        " (it moves the system message into the last user message, as Mistral's templates do)"
        if any(m["role"] == "system" for m in messages)
        else ""
    )
    return (
        f"its chat template renders the conversation up to assistant turn {number} differently "
        f"from the start of the whole conversation{why} and has no {{% generation %}} markers, "
        "so which tokens are the answer cannot be told: drop the system message from this "
        "record, or give the model a chat template that renders each turn the same whatever "
        "follows it"
    )

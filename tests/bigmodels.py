"""The shapes of the 7-8B models oneseekd's users train, as data (no weights): the memory
plan's tests reason about them without a GPU or a download."""

from __future__ import annotations

from typing import Any

# Llama-3.1-8B's config.json on the Hub (meta-llama/Llama-3.1-8B; KB-Llama-3.1-8B-Swedish
# has the same shape)
LLAMA_8B: dict[str, Any] = {
    "model_type": "llama",
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}

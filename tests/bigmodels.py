"""The shapes of the 7-8B models oneseekd's users train, as data (no weights): the memory
plan's tests reason about them without a GPU or a download, and bench/memplan.py (the docs'
table) and bench/faketrack.py (its fake-tensor check) read them from here."""

from __future__ import annotations

from typing import Any

# config.json of each model on the Hugging Face Hub (meta-llama/Llama-3.1-8B,
# Qwen/Qwen2.5-7B, mistralai/Mistral-7B-v0.3; KB-Llama-3.1-8B-Swedish has Llama's shape)
MODELS: dict[str, dict[str, Any]] = {
    "Llama-3.1-8B": {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    "Qwen2.5-7B": {
        "model_type": "qwen2",
        "num_hidden_layers": 28,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "Mistral-7B-v0.3": {
        "model_type": "mistral",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
    },
}
LLAMA_8B = MODELS["Llama-3.1-8B"]

"""Tiny generated base models (hidden size 64, a BPE tokenizer trained on the spot) for the
demo's --tiny variant and the tests: real architectures, built offline in well under a second.

    python -m oneseekd.trainer.tiny PARENT [--name Tiny-Llama] [--arch llama|qwen2|mistral]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from oneseekd.trainer.embedded import save_folder

CORPUS = [
    "Riksdagen beslutar om lagar och statens budget.",
    "Regeringen styr riket och ansvarar inför riksdagen.",
    "Kommunerna ansvarar för skolan, äldreomsorgen och socialtjänsten.",
    "Regionerna ansvarar för hälso- och sjukvården och kollektivtrafiken.",
    "The parliament passes laws and decides on the state budget.",
    "Citizens vote in general elections every four years.",
    "### Instruction:\nSummarize the text.\n\n### Response:\nA short summary.",
    "<|user|>\nHello there\n<|assistant|>\nHello! How can I help?\n",
] * 20

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}


def tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with <s>, </s>, <unk> and no pad token (the trainer pads
    with eos, as it must for many real models)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_model(
    parent: Path,
    name: str = "Tiny-Llama",
    arch: str = "llama",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """Write parent/name: config.json, model.safetensors and the tokenizer files (the tiny
    BPE tokenizer unless one is given)."""
    config_cls, model_cls = ARCHS[arch]
    tokenizer = tokenizer or tiny_tokenizer()
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return save_folder(model_cls(config), tokenizer, parent, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parent", type=Path)
    parser.add_argument("--name", default="Tiny-Llama")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="llama")
    args = parser.parse_args(argv)
    target = args.parent / args.name
    if not (target / "config.json").exists():
        tiny_model(args.parent, args.name, args.arch)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loading a model folder's tokenizer, as the trainer and `oneseekctl submit --dry-run` do.

`AutoTokenizer` picks the class from the folder's config.json and tokenizer_config.json, and
to read config.json it imports the model family's configuration, which imports torch and
torch.distributed: about two seconds, for a tokenizer that then loads in a tenth of one. So
the class it picked is remembered in the home (`cache/tokenizer-classes.json`), keyed by the
files it decides from and the transformers version, and a later load of the same folder calls
that class's `from_pretrained` with the arguments AutoTokenizer passes it: the same tokenizer,
without torch. The trainer loads through AutoTokenizer and writes the memo; the dry run
reads it (and writes it when it had to ask AutoTokenizer itself).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from oneseekd import protocol
from oneseekd.errors import OneseekError
from oneseekd.trainer.hostprobe import read_memo, write_atomically

# the memo's name in the home's cache/
MEMO = "tokenizer-classes.json"
# what AutoTokenizer decides the class from: the files' bytes (tokenizer.json for its
# pre-tokenizer, a ByteLevel check), and which files there are (a Mistral tekken.json)
DECIDING_FILES = (
    "config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
)


class ModelRefused(OneseekError):
    """The model folder cannot be trained as asked; not retried."""

    exit_code = protocol.EXIT_REFUSED


def folder_key(path: Path) -> str:
    """The sha256 of what AutoTokenizer decides a folder's tokenizer class from."""
    digest = hashlib.sha256(f"transformers {version('transformers')}\n".encode())
    names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    digest.update(json.dumps(names).encode())
    for name in DECIDING_FILES:
        file = path / name
        digest.update(f"\n{name}\n".encode())
        if file.is_file():
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _remembered(memo: Path, key: str) -> type | None:
    try:
        known = read_memo(memo)
        module, name = known[key]["module"], known[key]["class"]
        cls = getattr(importlib.import_module(module), name)
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def _remember(memo: Path, key: str, cls: type) -> None:
    known = read_memo(memo)
    entry = {"module": cls.__module__, "class": cls.__qualname__}
    if known.get(key) != entry:
        write_atomically(memo, {**known, key: entry})


def load_tokenizer(path: Path, use_fast: bool = True, memo: Path | None = None) -> Any:
    """The folder's tokenizer as AutoTokenizer gives it, with a pad token. With `memo`, the
    class AutoTokenizer picked for these files before is loaded directly (no torch), and the
    class it picks now is remembered."""
    key = folder_key(path) if memo is not None else ""
    cls = _remembered(memo, key) if memo is not None else None
    try:
        if cls is not None:  # AutoTokenizer's own call of the class it picked (v5)
            tokenizer = cls.from_pretrained(  # type: ignore[attr-defined]
                path, local_files_only=True, _from_auto=True
            )
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                path, local_files_only=True, trust_remote_code=False, use_fast=use_fast
            )
            if memo is not None:
                _remember(memo, key, type(tokenizer))
    except (OSError, ValueError) as exc:
        raise ModelRefused(
            f"{path.name} has no usable tokenizer: {exc}",
            [
                "copy the tokenizer files (tokenizer.json, tokenizer_config.json) "
                "into the model folder"
            ],
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token_id is None:
        raise ModelRefused(f"{path.name}'s tokenizer has no pad, eos or unk token to pad with")
    return tokenizer

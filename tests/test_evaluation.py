"""The held-out figures (trainer/evaluate.py) against hand computation on a tiny model, the
cap on evaluated tokens, and the weights taken from bits per byte."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peakmem import peak_bytes
from peft import LoraConfig, get_peft_model
from trainhomes import cached_tiny
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from oneseekd.certify.dna import final_weights, weight_inputs
from oneseekd.certify.gate import judge
from oneseekd.certify.plot import epoch_steps, smoothed
from oneseekd.trainer import evaluate
from oneseekd.trainer.data import Encoded, collate
from oneseekd.trainer.evaluate import HeldOut, held_out, measure, spans
from oneseekd.trainer.labels import Encoder
from oneseekd.trainer.loading import Device
from oneseekd.trainer.loss import ChunkedCausalLM
from oneseekd.trainer.world import World

# its numbers follow the CPU's bf16 answer: CI runs it with ONESEEK_CPU_BF16 forced both ways
pytestmark = pytest.mark.precision

CPU = Device("cpu", torch.float32, False)
RECORDS = [
    {"instruction": "Vem stiftar lagar?", "output": "Riksdagen stiftar lagar i Sverige."},
    {
        "instruction": "Sammanfatta",
        "input": "Kommun 3",
        "output": "Kommunerna ansvarar för skolan.",
    },
    {"text": "Riksdagen beslutar om budget och lagar. Åäö!"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    folder = cached_tiny(tmp_path_factory.mktemp("tiny"), "Tiny-Llama", "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer


def test_spans_are_the_runs_of_targets_after_the_first_token() -> None:
    assert spans([1, 1, 0, 1, 1, 0, 0, 1]) == [(1, 2), (3, 5), (7, 8)]
    assert spans([0, 0, 0]) == []


def test_bits_per_byte_is_the_summed_target_loss_in_bits_over_the_target_texts_bytes(
    tiny: tuple[object, object],
) -> None:
    model, tokenizer = tiny
    encoder = Encoder(tokenizer, 256)
    rows = [encoder.encode(r) for r in RECORDS]
    data = Encoded([r.ids for r in rows], [r.mask for r in rows], [r.nbytes for r in rows])
    held = held_out(data, data, 10_000)
    got = measure(model, held, tokenizer.pad_token_id, 2, World(), False, CPU)

    # by hand: one row at a time, no padding, the log-probability of each target token
    nats, hits, tokens = 0.0, 0, 0
    record_nats = []
    with torch.no_grad():
        for row in rows:
            logp = torch.log_softmax(model(torch.tensor([row.ids])).logits[0].double(), -1)
            before = nats
            for j in range(1, len(row.ids)):
                if row.mask[j]:
                    nats -= float(logp[j - 1, row.ids[j]])
                    hits += int(int(logp[j - 1].argmax()) == row.ids[j])
                    tokens += 1
            record_nats.append(nats - before)
    # the target texts: the outputs and the whole text record but its first token, which is
    # predicted from nothing; each closing eos one byte
    first = tokenizer.decode(rows[2].ids[:1])
    text = RECORDS[2]["text"]
    assert text.startswith(first)
    assert held.target_bytes == [
        len(RECORDS[0]["output"].encode()) + 1,
        len(RECORDS[1]["output"].encode()) + 1,
        len(text.encode()) - len(first.encode()) + 1,
    ]
    nbytes = sum(held.target_bytes)
    assert got.tokens == tokens and got.bytes == nbytes
    assert got.bits_per_byte == pytest.approx(nats / math.log(2) / nbytes, rel=1e-5)
    assert got.loss == pytest.approx(nats / tokens, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    assert got.accuracy == hits / tokens
    # each row's, in the rows' order, for the gate's record-by-record comparison
    assert got.record_bits == pytest.approx([n / math.log(2) for n in record_nats], rel=1e-5)
    assert held.describe()["record_bytes"] == held.target_bytes


def test_the_chunked_figures_equal_those_of_the_whole_logits(
    tiny: tuple[object, object],
) -> None:
    model, tokenizer = tiny
    encoder = Encoder(tokenizer, 256)
    long = [{"text": " ".join(["Riksdagen beslutar om lagar"] * n)} for n in (40, 3, 25)]
    rows = [encoder.encode(r) for r in RECORDS + long]
    data = Encoded([r.ids for r in rows], [r.mask for r in rows], [r.nbytes for r in rows])
    held = held_out(data, data, 10_000)
    assert max(len(r.ids) for r in rows) > 128  # several chunks of 128 positions a row pair
    got = measure(model, held, tokenizer.pad_token_id, 2, World(), False, CPU)

    # what evaluation computed before it was chunked: each batch's whole logits
    nats, hits = 0.0, 0.0
    with torch.no_grad():
        for batch_rows in evaluate._batches(data, 2):
            batch = collate(data, batch_rows, tokenizer.pad_token_id)
            labels = batch.pop("labels")
            loss, hit = evaluate.scored(model(**batch, use_cache=False).logits, labels)
            nats, hits = nats + float(loss.sum()), hits + float(hit.sum())
    assert got.loss * got.tokens == pytest.approx(nats, rel=1e-6)
    assert got.accuracy * got.tokens == hits


def test_evaluation_never_needs_more_memory_than_a_training_step() -> None:
    # Llama 3's vocabulary on a tiny Llama, one row of 2048 tokens: the whole logits tensor
    # would be 2048 x 128,256 x 4 B = 1 GiB (and its log-softmax another)
    vocab, length = 128_256, 2048
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=length,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(0))
    held = HeldOut(Encoded([ids[0].tolist()]), [4 * length], "validation")

    def step() -> None:
        model.train()
        summed, _ = ChunkedCausalLM(model)(input_ids=ids, labels=ids)
        summed.backward()

    def evaluation() -> None:
        measure(model, held, 0, 1, World(), False, CPU)

    trained, evaluated = peak_bytes(step), peak_bytes(evaluation)
    assert evaluated <= trained
    assert evaluated < length * vocab * 4 / 2  # never the whole logits, not even in bf16


def test_the_evaluated_rows_are_capped_by_tokens_in_split_order() -> None:
    data = Encoded(
        [[1, 5, 6], [1, 7, 8, 9], [1, 5]],
        [[1, 1, 1], [0, 1, 1, 1], [1, 1]],
        [[0, 2, 3], [5, 1, 1, 4], [0, 2]],
    )
    assert len(held_out(data, data, 7).data.ids) == 2  # 3 + 4 tokens
    assert len(held_out(data, data, 6).data.ids) == 1
    assert len(held_out(data, data, 1).data.ids) == 1  # never none
    empty = Encoded([], [])
    only_train = held_out(empty, data, 100)
    assert only_train.source == "train" and len(only_train.data.ids) == 3
    # the bytes the labelled tokens after the first hold
    assert only_train.target_bytes == [5, 6, 2]


def test_final_weights_from_bits_per_byte_do_not_favour_a_finer_tokenizer() -> None:
    # model a's tokenizer cuts text into twice as many tokens: half the loss per token, the
    # same bits per byte; per-token weighting prefers it, bits per byte does not
    losses = {"a": 1.0, "b": 2.0}
    bpb: dict[str, float | None] = {"a": 1.5, "b": 1.5}
    fair = final_weights(weight_inputs(losses, bpb, "bits_per_byte"), "bits_per_byte")
    assert fair == {"a": 0.5, "b": 0.5}
    token = final_weights(weight_inputs(losses, bpb, "val_loss"), "val_loss")
    assert token["a"] == pytest.approx(math.e / (1 + math.e))
    # one bit per byte better: twice the weight (2^-b)
    better = final_weights({"a": 1.0, "b": 2.0}, "bits_per_byte")
    assert better["a"] == pytest.approx(2 / 3)
    # a model without bits per byte (trained before they were measured): per-token for all
    assert weight_inputs(losses, {"a": 1.5, "b": None}, "bits_per_byte") == losses


# 12 held-out records of 100 bytes, each a little easier or harder than the average
SPREAD = [1.0 + (i % 4 - 1.5) / 100 for i in range(12)]


def _figures(bpb: float) -> dict[str, object]:
    """Figures of a model at `bpb` bits per byte, the per-record bits as uneven as SPREAD."""
    bits = [bpb * 100 * x for x in SPREAD]
    return {"bits_per_byte": sum(bits) / 1200, "record_bits": bits}


class _M:
    def __init__(self, key: str, base: float, trained: float, now: float | None = None) -> None:
        self.key = key
        self.evaluation: dict[str, object] = {
            "held_out": {
                "split": "validation",
                "rows": 12,
                "target_bytes": 1200,
                "record_bytes": [100] * 12,
            },
            "base": _figures(base),
            "epochs": [_figures(trained + 1), _figures(trained)],
        }
        if now is not None:
            self.evaluation["current"] = {
                "dna": "OneSeek-7B-Zero.v1.0.abcdef",
                "run_id": "run-1",
                "figures": _figures(now),
            }


def test_the_gate_wants_every_model_to_beat_its_base_and_none_worse_than_current() -> None:
    assert judge([_M("a", 3.0, 2.5), _M("b", 3.0, 2.0, now=2.1)], True).made_current
    verdict = judge([_M("a", 3.0, 3.0), _M("b", 3.0, 2.0)], True)
    assert (verdict.beat_base, verdict.made_current) == (False, False)
    assert verdict.reasons == [
        "a: held-out bits per byte 3.0000 does not measurably beat the base model's 3.0000: "
        "+0.0000 bits per byte (95 % interval +0.0000 to +0.0000)"
    ]
    worse = judge([_M("a", 3.0, 2.5, now=2.4)], True)
    assert (worse.beat_base, worse.not_worse, worse.made_current) == (True, False, False)
    assert worse.reasons == [
        "a: held-out bits per byte 2.5000 is worse than the current model's 2.4000 "
        "(OneSeek-7B-Zero.v1.0.abcdef, run run-1) on this run's held-out data: +0.1000 bits "
        "per byte (95 % interval +0.0993 to +0.1006)"
    ]
    assert judge([_M("a", 3.0, 2.5, now=2.4)], True, compare=False).made_current
    held = judge([_M("a", 3.0, 2.5)], False)
    assert (held.beat_base, held.made_current) == (True, False)
    assert held.reasons == ["[certify] make_current is false: left to `oneseekctl promote`"]


def test_the_smoothed_curve_starts_at_the_data_and_validation_sits_at_epoch_ends() -> None:
    assert smoothed([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])
    assert smoothed([4.0, 2.0])[0] == 4.0
    assert epoch_steps(12, 3) == [4, 8, 12]


def test_a_model_without_figures_cannot_show_it_beat_its_base() -> None:
    bare = _M("a", 3.0, 2.0)
    bare.evaluation = {}
    verdict = judge([bare], True)
    assert not verdict.made_current
    assert verdict.reasons == [
        "a: has no held-out bits per byte of each record to compare with its base"
    ]
    # figures measured before the gate compared record by record: none either
    old = _M("a", 3.0, 2.0)
    old.evaluation["base"] = {"bits_per_byte": 3.0}
    assert judge([old], True).reasons == verdict.reasons


def test_held_out_rows_are_chosen_without_a_model(tmp_path: Path) -> None:
    """The selection is a pure function of the split (the same for base, trained, current)."""
    data = Encoded([[1, 2], [1, 3, 4]], [[1, 1], [1, 1, 1]])  # no bytes: one a token
    a, b = held_out(data, data, 4), held_out(data, data, 4)
    assert a == b and a.target_bytes == [1]


def test_the_certify_settings_have_defaults_and_are_checked(tmp_path: Path) -> None:
    from oneseekd.config import load_config
    from oneseekd.errors import ConfigError

    got = load_config(tmp_path, env={}).certify
    assert (got.require_improvement, got.compare_with_current, got.eval_tokens) == (
        False,
        True,
        50_000,
    )
    (tmp_path / "oneseekd.toml").write_text(
        "[certify]\nrequire_improvement = true\ncompare_with_current = false\n"
        "eval_tokens = 2000\nsample_prompts = 0\n"
    )
    got = load_config(tmp_path, env={}).certify
    assert (got.require_improvement, got.compare_with_current, got.eval_tokens) == (
        True,
        False,
        2000,
    )
    assert got.sample_prompts == 0
    assert (got.min_held_out_records, got.min_held_out_bytes) == (10, 256)  # the gate's own
    (tmp_path / "oneseekd.toml").write_text(
        '[certify]\nrequire_improvement = "yes"\neval_tokens = 0\nmin_held_out_records = 1\n'
    )
    with pytest.raises(ConfigError) as bad:
        load_config(tmp_path, env={})
    assert bad.value.problems == [
        "certify.require_improvement must be true or false, got 'yes'",
        "certify.eval_tokens must be a whole number >= 1, got 0",
        "certify.min_held_out_records must be a whole number >= 2, got 1",
    ]


def test_the_last_progress_line_says_a_certified_run_was_held_back() -> None:
    from oneseekd.cli.status import describe_progress

    dna = "OneSeek-7B-Zero.v1.0.abcdef"
    assert describe_progress({"state": "certified", "dna": dna}) == f"certified as {dna}"
    held = {"state": "certified", "dna": dna, "not_current": "a: {odd} does not beat"}
    assert describe_progress(held) == (
        f"certified as {dna}, not made current: a: {{odd}} does not beat"
    )


def test_promote_overrides_a_measured_verdict_not_an_operators_make_current_false() -> None:
    from oneseekd.certify.gate import not_current_note, overridden

    by_config = judge([_M("a", 3.0, 2.5)], False).as_dict()
    assert overridden(by_config) is None
    assert not_current_note(by_config) == (
        "[certify] make_current is false: left to `oneseekctl promote`"
    )
    measured = judge([_M("a", 3.0, 3.0)], False).as_dict()
    assert overridden(measured) == (
        "a: held-out bits per byte 3.0000 does not measurably beat the base model's 3.0000: "
        "+0.0000 bits per byte (95 % interval +0.0000 to +0.0000)"
    )
    assert overridden(judge([_M("a", 3.0, 2.5)], True).as_dict()) is None
    assert overridden(None) is None  # a folder certified before the gate

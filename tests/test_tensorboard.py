"""TensorBoard curves per run (issue 29): `report_to: ["tensorboard"]` (or `[trainer]
report_to`) leaves event files under HOME/runs/<run_id>/tensorboard/<key>/ whose scalars, read
back with TensorBoard's own event reader, are the run's figures in training_results.json; a run
without it writes none and never imports the writer; where a run reports changes no DNA; a
reporter oneseekd does not write is refused by name."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gloo import recipe, spawn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX import event_file_writer
from trainhomes import TinyHome, cached_tiny

from oneseekd.certify.dna import canonical_hash
from oneseekd.config import load_config
from oneseekd.errors import ConfigError
from oneseekd.intake.schema import parse_request
from oneseekd.spec.request import build, parse_options, trained_config
from oneseekd.trainer.curves import Curves
from oneseekd.trainer.run import train_run
from oneseekd.trainer.world import World

# the runs train in the precision "auto" picks: CI runs them with ONESEEK_CPU_BF16 both ways
pytestmark = pytest.mark.precision

MODELS = ["tiny-llama", "qwen2.5"]
HELD_OUT = ("loss", "bits_per_byte", "accuracy", "perplexity")


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the event files in `folder`: (step, value), in step order, as
    TensorBoard shows them (a resumed run's purged steps left out)."""
    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    reader.Reload()
    return {
        tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]
    }


def values(curve: list[tuple[int, float]]) -> list[float]:
    return [value for _, value in curve]


def close(a: list[float], b: list[Any]) -> bool:
    """Event files hold 32-bit floats."""
    return a == pytest.approx([float(x) for x in b], rel=1e-6, abs=1e-7)


@pytest.mark.timeout(600)
def test_the_curves_are_the_runs_own_figures(two: TinyHome) -> None:
    run_id, dna = two.train(MODELS, epochs=2, report_to=["tensorboard"])
    assert dna
    results = two.results(run_id)
    assert results["tensorboard"] == f"runs/{run_id}/tensorboard"
    folder = two.root / results["tensorboard"]
    keys = results["trained_models"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(keys) and len(keys) == 2
    for key in keys:  # one folder per model
        metrics = results["metrics"][key]
        curves = scalars(folder / key)
        assert {tag.split("/")[0] for tag in curves} == {key}  # the model's own tag prefix
        steps = metrics["steps"]
        # per step: the loss, the learning rate, tokens/s and the gradient norm
        loss = curves[f"{key}/train/loss"]
        assert [step for step, _ in loss] == list(range(1, steps + 1))
        assert close(values(loss), metrics["step_losses"])
        rates = values(curves[f"{key}/train/learning_rate"])
        assert len(rates) == steps and max(rates) == pytest.approx(5e-3)  # FAST's peak
        for tag in ("tokens_per_s", "grad_norm"):
            got = curves[f"{key}/train/{tag}"]
            assert [step for step, _ in got] == list(range(1, steps + 1)), tag
            assert all(v > 0 for v in values(got)), tag
        # per epoch, at the step it ended on: the training loss, the held-out figures
        ev = metrics["evaluation"]
        assert close(values(curves[f"{key}/epoch/train_loss"]), metrics["train_losses"])
        assert close(values(curves[f"{key}/held_out/loss"]), metrics["val_losses"])
        for name in HELD_OUT:
            got = curves[f"{key}/held_out/{name}"]
            assert close(values(got), [e[name] for e in ev["epochs"]]), name
            assert got[-1][0] == steps
            # the base model's line: from step 0 to the last epoch's end
            base = curves[f"{key}/base/{name}"]
            assert [step for step, _ in base] == [0] + [step for step, _ in got]
            assert close(values(base), [ev["base"][name]] * len(base)), name


@pytest.mark.timeout(600)
def test_the_homes_default_none_and_the_same_dna(
    one: TinyHome, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a home asking for curves by default ([trainer] report_to; the line lands in the
    # [trainer] table tiny_home writes last)
    other = TinyHome(
        tmp_path / "other", cache, {"Tiny-Llama": "llama"}, 'report_to = ["tensorboard"]\n'
    )
    try:
        asked, with_curves = other.train(
            ["tiny-llama"], epochs=1, version="1.0", report_to=["tensorboard"]
        )
        assert other.results(asked)["tensorboard"] == f"runs/{asked}/tensorboard"
        # a request that says nothing takes the home's default
        default, _ = other.train(["tiny-llama"], epochs=1)
        assert (other.root / "runs" / default / "tensorboard" / "tiny-llama").is_dir()
        assert other.results(default)["tensorboard"] == f"runs/{default}/tensorboard"
        # and one that says none writes none
        quiet, _ = other.train(["tiny-llama"], epochs=1, report_to="none")
        assert not (other.root / "runs" / quiet / "tensorboard").exists()
        assert "tensorboard" not in other.results(quiet)
    finally:
        other.engine.dispose()
    # without report_to (and no default), the writer is never imported: importing it fails
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    run_id, without = one.train(["tiny-llama"], epochs=1, version="1.0")
    assert not (one.root / "runs" / run_id / "tensorboard").exists()
    assert "tensorboard" not in one.results(run_id)
    # the same training in two homes, one reporting its curves: the same DNA
    assert with_curves == without


class Crash(Exception):
    """The trainer dying between two checkpoints."""


@pytest.mark.timeout(600)
def test_a_resumed_model_shows_each_step_once(
    one: TinyHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both attempts within one second (an event file is named by its second and host): the
    # second must not overwrite the first's file
    monkeypatch.setattr(event_file_writer, "time", SimpleNamespace(time=lambda: 1_765_000_000.0))
    run_id = one.start(["tiny-llama"], epochs=1, report_to=["tensorboard"])
    calls = {"n": 0}

    def crash_after_step_5() -> bool:  # asked after every step; checkpoints every 2 (FAST)
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash
        return False

    with pytest.raises(Crash):
        train_run(one.engine, one.config.home, run_id, should_stop=crash_after_step_5)
    folder = one.root / "runs" / run_id / "tensorboard" / "tiny-llama"
    assert [s for s, _ in scalars(folder)["tiny-llama/train/loss"]] == [1, 2, 3, 4, 5]
    train_run(one.engine, one.config.home, run_id)  # resumed from step 4's checkpoint
    metrics = one.results(run_id)["metrics"]["tiny-llama"]
    loss = scalars(folder)["tiny-llama/train/loss"]
    # step 5 was logged by both attempts: TensorBoard shows the second's alone
    assert [s for s, _ in loss] == list(range(1, metrics["steps"] + 1))
    assert close(values(loss), metrics["step_losses"])
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2


RECORDS = [{"text": " ".join(["Riksdagen beslutar om lagar"] * n)} for n in (1, 5, 2, 4, 3, 6)]


def norms(world: World, model: Path, out: Path, hyper: dict[str, Any]) -> None:
    """Train a recipe over RECORDS with curves (rank 0's, in out/tb) and the gradient norms
    measured on every rank, as train_one sets them."""
    world_or_none = world if world.distributed else None
    hyper = {"gradient_accumulation_steps": 1, **hyper}  # a step per batch of 2 rows
    r = recipe(model, RECORDS, out / "checkpoints", world_or_none, **hyper)
    r.setup()
    r.grad_norms = True
    r.curves = Curves(out / "tb", "tiny-llama") if world.main else None
    try:
        r.train()
    finally:
        if r.curves is not None:
            r.curves.close()


def grad_norms(out: Path) -> list[float]:
    return values(scalars(out / "tb" / "tiny-llama")["tiny-llama/train/grad_norm"])


@pytest.mark.timeout(600)
def test_the_gradient_norm_is_the_whole_models_clipped_or_not_sharded_or_not(
    tmp_path: Path, cache: Path
) -> None:
    model = cached_tiny(cache, "Tiny-Llama", "llama")
    norms(World(), model, tmp_path / "one", {"epochs": 2})
    clipped = grad_norms(tmp_path / "one")
    assert len(clipped) == 6 and all(n > 0 for n in clipped)  # 3 steps an epoch
    # nothing clipped (max_grad_norm 0): measured for the curves all the same; the first step
    # starts from the same weights
    unclipped_hyper = {"epochs": 2, "max_grad_norm": 0.0}
    norms(World(), model, tmp_path / "unclipped", unclipped_hyper)
    unclipped = grad_norms(tmp_path / "unclipped")
    assert len(unclipped) == 6 and unclipped[0] == pytest.approx(clipped[0], rel=1e-5)
    # sharded over two ranks, each holding half of every LoRA weight: the norm of the whole
    # gradient, not of rank 0's shard (no clipping made it whole), and no rank waits on a
    # collective the other skipped
    sharded = {**unclipped_hyper, "sharding": "fsdp"}
    spawn(norms, 2, tmp_path / "ranks", model, tmp_path / "fsdp", sharded)
    assert grad_norms(tmp_path / "fsdp") == pytest.approx(unclipped, rel=1e-4)


def test_where_a_run_reports_is_not_hashed_into_its_dna() -> None:
    def config(**fields: Any) -> dict[str, Any]:
        options, problems = parse_options(fields)
        assert options is not None, problems
        return build(options, ["tiny-llama"], "1.0").to_config()

    plain, reporting = config(), config(report_to=["tensorboard"])
    assert plain != reporting and reporting["report_to"] == ["tensorboard"]
    assert canonical_hash(trained_config(plain)) == canonical_hash(trained_config(reporting))
    assert canonical_hash(trained_config(plain)) != canonical_hash(trained_config(config(seed=7)))


def _problems(**fields: Any) -> list[str]:
    request, problems = parse_request({"base_models": ["m"], "dataset": "d.jsonl", **fields})
    assert request is None
    return problems


def test_a_reporter_oneseekd_does_not_write_is_refused_by_name(tmp_path: Path) -> None:
    assert _problems(report_to=["tensorbord"]) == [
        "report_to: 'tensorbord' is not a reporter oneseekd writes (did you mean "
        "'tensorboard'?); known: tensorboard (got ['tensorbord'])"
    ]
    assert _problems(reportTo=["wandb"]) == [
        "report_to: 'wandb' is not a reporter oneseekd writes; known: tensorboard (got ['wandb'])"
    ]
    assert _problems(report_to=["tensorboard", "tensorboard"]) == [
        "report_to: names a reporter twice (got ['tensorboard', 'tensorboard'])"
    ]
    assert _problems(report_to=5)[0].startswith('report_to: must be a list of reporters like ["')
    assert _problems(per_model={"m": {"report_to": ["tensorboard"]}}) == [
        "per_model.m.report_to: is the same for every model of a run"
    ]
    # accepted: a list, one name, "none", camelCase, absent (the home's default)
    for given, read in (
        (["tensorboard"], ["tensorboard"]),
        ("tensorboard", ["tensorboard"]),
        ("none", []),
        ([], []),
    ):
        for name in ("report_to", "reportTo"):
            request, problems = parse_request(
                {"base_models": ["m"], "dataset": "d.jsonl", name: given}
            )
            assert request is not None and request.report_to == read, problems
    request, _ = parse_request({"base_models": ["m"], "dataset": "d.jsonl"})
    assert request is not None and request.report_to is None
    # the home's default is checked as strictly
    (tmp_path / "oneseekd.toml").write_text('[trainer]\nreport_to = ["tensorbaord"]\n')
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path, env={})
    assert refused.value.problems == [
        "trainer.report_to: 'tensorbaord' is not a reporter oneseekd writes "
        "(did you mean 'tensorboard'?) (known: tensorboard)"
    ]
    (tmp_path / "oneseekd.toml").write_text('[trainer]\nreport_to = ["tensorboard"]\n')
    assert load_config(tmp_path, env={}).trainer.report_to == ("tensorboard",)
    assert load_config(tmp_path / "nothing", env={}).trainer.report_to == ()

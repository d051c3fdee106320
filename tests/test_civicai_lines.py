"""What `oneseekctl train` prints for CivicAI's admin panel (issue 30, item 6): `Epoch i/N`
never runs backwards over several models, every epoch's end has its `loss:`, and a run the
gate held back says so in a line none of the panel's patterns match."""

from __future__ import annotations

import re
from pathlib import Path

import civic
from homes import open_home, request, take, training_home
from sqlalchemy import select

from oneseekd.cli.train import EpochLines, not_made_current, planned_epochs
from oneseekd.db.engine import read_session
from oneseekd.db.models import Run
from oneseekd.intake.accept import Intake


def _progress(model: str, index: int, epoch: int, step: int, losses: list[float]) -> dict:
    return {
        "model": model,
        "model_index": index,
        "models": 2,
        "epoch": epoch,
        "epochs": 2,
        "step": step,
        "steps": 4,
        "loss": 2.0,
        "epoch_losses": losses,
    }


def test_epochs_count_over_the_whole_run_and_each_end_has_its_loss() -> None:
    lines = EpochLines([("a", 2), ("b", 2)])
    out: list[str] = []
    out += lines.progress(_progress("a", 1, 1, 1, []))
    out += lines.progress(_progress("a", 1, 1, 2, []))
    # the end of a's first epoch was not seen: the next report's epoch_losses carries it
    out += lines.progress(_progress("a", 1, 2, 3, [1.5]))
    # a's last epoch ended unseen; its row gives it before b's first line
    out += lines.trained([("a", [1.5, 1.25])])
    out += lines.progress(_progress("b", 2, 1, 1, []))
    out += lines.progress(_progress("b", 2, 1, 1, []))  # the same step: no second line
    out += lines.progress(_progress("b", 2, 2, 3, [1.75]))
    out += lines.trained([("a", [1.5, 1.25]), ("b", [1.75, 1.5])])
    epochs = [tuple(map(int, m.groups())) for m in map(civic.EPOCH.search, out) if m]
    assert [i for i, _ in epochs] == [1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert {n for _, n in epochs} == {4}
    ends = [line for line in out if "epoch end" in line]
    assert [civic.LOSS.search(line).group(1) for line in ends] == [  # type: ignore[union-attr]
        "1.50000",
        "1.25000",
        "1.75000",
        "1.50000",
    ]
    assert ends[1] == "Epoch 2/4  model 1/2  a  epoch end  loss: 1.25000"


def test_the_models_planned_epochs_come_from_the_runs_stored_config(tmp_path: Path) -> None:
    home = training_home(tmp_path / "home")
    config, engine = open_home(home)
    try:
        body = request(epochs=3, per_model={"KB-Llama-3.1-8B-Swedish": {"epochs": 2}})
        verdict = take(Intake(engine, config.home), body)
        assert verdict.run_id is not None, verdict.problems
        with read_session(engine) as session:
            run = session.scalars(select(Run).where(Run.run_id == verdict.run_id)).one()
            planned = planned_epochs(run.base_models, run.config)
    finally:
        engine.dispose()
    assert planned == [(run.base_models[0], 2)]


def test_not_made_current_matches_none_of_the_panels_patterns() -> None:
    reason = "a: loss: 2.1 does not beat Epoch 1/2 of DNA: OneSeek-7B-Zero.v1.0.abc loss=3"
    line = not_made_current(reason)
    assert line.startswith("Not made current: a: loss 2.1 does not beat epoch 1 of 2")
    for pattern in (civic.EPOCH, civic.LOSS, civic.DNA):
        assert not pattern.search(line), pattern
    assert not re.search(r"\n", not_made_current("one\ntwo"))

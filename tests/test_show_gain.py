"""Issue 29, "the gain, shown": `show`, `status` and the demo's last screen print each model's
held-out figures (base -> trained bits per byte, the change in percent with the gate's
interval, next-token accuracy) as the certified folder records them, and a run or model
without held-out figures says why instead of printing zeros.

Here on certified folders written by hand beside fake runs (no training: every case in
milliseconds); tests/test_cli_names.py checks the same lines on two really trained runs.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from demos import load_demo
from homes import ctl

from oneseekd.certify.gate import IMPROVED, TOO_FEW

MODEL = "qwen-2-5-7b"


def submitted(home: Path) -> str:
    result = ctl(home, "submit", "--base-models", "qwen", "--dataset", "civic.jsonl", "--json")
    assert result.exit_code == 0, result.output
    return str(json.loads(result.stdout)["run_id"])


def evaluation(split: str = "validation", rows: int = 12) -> dict[str, Any]:
    """A model's held-out evaluation as oneseek_dna.json records it (certify/certified.py)."""
    return {
        "held_out": {"split": split, "rows": rows, "target_bytes": 480},
        "base": {"loss": 2.0, "bits_per_byte": 2.5, "accuracy": 0.2},
        "trained": {"loss": 1.8, "bits_per_byte": 2.25, "accuracy": 0.25},
        "trained_epoch": 2,
        "bits_per_byte_gain": 0.25,
    }


def gate(model: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict as certified (certify/gate.py), for one model."""
    return {
        "made_current": True,
        "reasons": [],
        "models": {MODEL: model},
        "method": {"confidence": 0.95},
    }


IMPROVED_GATE = gate(
    {"records": 12, "base": {"difference": -0.25, "interval": [-0.3, -0.2], "verdict": IMPROVED}}
)


def certified_run(
    home: Path, record: dict[str, Any], dna: str = "OneSeek-7B-Zero.v1.0.abc123"
) -> str:
    """A submitted run marked succeeded, with a certified folder holding `record` as its
    oneseek_dna.json and the run's link to it; its run id."""
    run_id = submitted(home)
    con = sqlite3.connect(home / "oneseek.db")
    with con:
        con.execute(
            "UPDATE runs SET state = 'succeeded', outcome = 'succeeded' WHERE run_id = ?", (run_id,)
        )
    con.close()
    certified = home / "models" / "oneseek-certified"
    (certified / dna).mkdir(parents=True)
    (certified / dna / "oneseek_dna.json").write_text(json.dumps({"run_id": run_id, **record}))
    (certified / run_id).symlink_to(dna)
    return run_id


def shown_figures(home: Path, run_id: str) -> list[str]:
    result = ctl(home, "show", run_id)
    assert result.exit_code == 0, result.output
    return [line for line in result.stdout.splitlines() if line.startswith("  figures:  ")]


def test_show_prints_base_to_trained_the_change_with_its_interval_and_accuracy(
    fake_home: Path,
) -> None:
    run_id = certified_run(fake_home, {"evaluation": {MODEL: evaluation()}, "gate": IMPROVED_GATE})
    assert shown_figures(fake_home, run_id) == [
        f"  figures:  {MODEL}: bits per byte 2.5000 -> 2.2500, -10.00% (95 % interval -12.00% "
        "to -8.00%: improved), next-token accuracy 20.0% -> 25.0%"
    ]
    [figures] = json.loads(ctl(fake_home, "show", run_id, "--json").stdout)["figures"].values()
    assert (figures["base_bits_per_byte"], figures["trained_bits_per_byte"]) == (2.5, 2.25)
    assert (figures["base_accuracy"], figures["trained_accuracy"]) == (0.2, 0.25)
    assert round(figures["change_percent"], 9) == -10.0
    assert [round(x, 9) for x in figures["change_interval_percent"]] == [-12.0, -8.0]
    assert (figures["verdict"], figures["held_out_records"], figures["no_figures"]) == (
        IMPROVED,
        12,
        None,
    )


def test_too_few_held_out_records_print_the_change_without_an_interval(fake_home: Path) -> None:
    too_few = gate({"verdict": TOO_FEW, "records": 4, "target_bytes": 100, "val_fraction": 0.5})
    run_id = certified_run(fake_home, {"evaluation": {MODEL: evaluation(rows=4)}, "gate": too_few})
    assert shown_figures(fake_home, run_id) == [
        f"  figures:  {MODEL}: bits per byte 2.5000 -> 2.2500, -10.00% (too few held-out data: "
        "no interval), next-token accuracy 20.0% -> 25.0%"
    ]


def test_figures_on_the_rows_it_trained_on_are_not_shown_as_held_out(fake_home: Path) -> None:
    """val_fraction 0: the evaluation falls back to training rows (trainer/evaluate.py), whose
    figures say nothing of what the model learned."""
    run_id = certified_run(fake_home, {"evaluation": {MODEL: evaluation(split="train")}})
    assert shown_figures(fake_home, run_id) == [
        f"  figures:  {MODEL}: no held-out figures: the run held out no validation rows "
        "(val_fraction 0, or every record a copy of one); its figures are on the rows it "
        "trained on, which say nothing of what it learned"
    ]
    [figures] = json.loads(ctl(fake_home, "show", run_id, "--json").stdout)["figures"].values()
    assert figures["trained_bits_per_byte"] is None and figures["gain_share"] is None
    assert ctl(fake_home, "runs").stdout.splitlines()[1].split()[-1] == "-"  # no GAIN either


def test_a_run_without_a_held_out_evaluation_says_so(fake_home: Path) -> None:
    queued = submitted(fake_home)
    assert shown_figures(fake_home, queued) == [
        "  figures:  no held-out figures: the run has not trained yet; they are measured on its "
        "held-out records after training and certified with it"
    ]
    data = json.loads(ctl(fake_home, "show", queued, "--json").stdout)
    assert data["figures"] == {} and data["no_figures"].startswith("the run has not trained")
    assert ctl(fake_home, "cancel", queued).exit_code == 0
    assert shown_figures(fake_home, queued) == [
        "  figures:  no held-out figures: the run was cancelled before it was certified"
    ]
    old = certified_run(fake_home, {"gate": None}, dna="OneSeek-7B-Zero.v1.1.def456")
    assert shown_figures(fake_home, old) == [
        "  figures:  no held-out figures: its certified folder records no held-out evaluation "
        "(certified by a version of oneseekd before it measured one)"
    ]


def test_status_shows_the_newest_certified_runs_figures_when_nothing_is_current(
    fake_home: Path,
) -> None:
    assert ctl(fake_home, "db", "upgrade").exit_code == 0
    assert json.loads(ctl(fake_home, "status", "--json").stdout)["certified_figures"] is None
    run_id = certified_run(fake_home, {"evaluation": {MODEL: evaluation()}, "gate": IMPROVED_GATE})
    result = ctl(fake_home, "status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = lines.index(
        f"newest:   OneSeek-7B-Zero.v1.0.abc123 (run {run_id}), certified, not current"
    )
    assert lines[at - 1].startswith("current:  none (")
    assert lines[at + 1] == (
        f"figures:  {MODEL}: bits per byte 2.5000 -> 2.2500, -10.00% (95 % interval -12.00% "
        "to -8.00%: improved), next-token accuracy 20.0% -> 25.0%"
    )
    assert not any("[" in line for line in lines)  # a status text line never holds one
    held = json.loads(ctl(fake_home, "status", "--json").stdout)["certified_figures"]
    assert (held["run_id"], held["current"], held["no_figures"]) == (run_id, False, None)
    assert held["figures"][MODEL]["trained_accuracy"] == 0.25


def test_the_demos_last_screen_says_when_a_run_has_no_figures(fake_home: Path) -> None:
    queued = submitted(fake_home)
    data = json.loads(ctl(fake_home, "show", queued, "--json").stdout)
    assert load_demo("gain").screen(data)[1:] == [
        "no held-out figures: the run has not trained yet; they are measured on its held-out "
        "records after training and certified with it"
    ]

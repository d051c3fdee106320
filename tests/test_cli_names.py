"""Issue 30, items 7 and 8: any name for a run (one resolver for show, logs, cancel and
promote), and `show` / `runs` saying what a run was; issue 29: the held-out figures `show`,
`status` and the demo's last screen print; on a home with two real certified runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from crashharness import crash_home, drop, small_request
from daemon import run_until_idle
from demos import load_demo
from homes import ctl, request

CURRENT = "OneSeek-7B-Zero-CURRENT"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with two certified runs, v1.0 then v1.1; v1.1 is current."""
    root = tmp_path_factory.mktemp("names")
    home = crash_home(root / "home", root / "cache")
    drop(home, "one.json", small_request(3))
    drop(home, "two.json", small_request(5))  # seed 5, as test_promote: it beats v1.0
    done = run_until_idle(home, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return home


def runs_of(home: Path) -> list[dict]:
    """`runs --json`, oldest first."""
    result = ctl(home, "runs", "--json")
    assert result.exit_code == 0, result.output
    return list(reversed(json.loads(result.stdout)))


def shown_run(home: Path, name: str) -> str:
    result = ctl(home, "show", name, "--json")
    assert result.exit_code == 0, (name, result.output)
    return str(json.loads(result.stdout)["run_id"])


def _copy(home: Path, where: Path) -> Path:
    shutil.copytree(home, where, symlinks=True)
    txt = where / "models" / "oneseek-certified" / f"{CURRENT}.txt"  # an absolute path
    txt.write_text(txt.read_text().replace(str(home), str(where)))
    return where


def test_a_run_is_named_by_any_of_its_names(two_runs: Path) -> None:
    first, second = runs_of(two_runs)
    assert (first["version"], second["version"]) == ("1.0", "1.1")
    assert second["current"] and not first["current"]
    names = {
        first["run_id"]: first["run_id"],
        first["dna"]: first["run_id"],
        "v1.0": first["run_id"],
        "1.1": second["run_id"],
        first["run_id"][-6:]: first["run_id"],  # the end of a run id
        second["dna"][-6:]: second["run_id"],  # the end of a DNA
        "latest": second["run_id"],
        "current": second["run_id"],
        "LATEST": second["run_id"],
    }
    for name, run_id in names.items():
        assert shown_run(two_runs, name) == run_id, name
    # logs and cancel take the same names
    assert ctl(two_runs, "logs", "v1.0", "--json").exit_code == 0
    assert ctl(two_runs, "logs", first["dna"][-6:], "--json").stdout == (
        (two_runs / "logs" / f"{first['run_id']}.log").read_text()
    )


def test_cancel_of_an_ended_run_is_done_already(two_runs: Path) -> None:
    result = ctl(two_runs, "cancel", "v1.0")
    assert result.exit_code == 0, result.output
    first = runs_of(two_runs)[0]
    assert result.stdout == f"Run {first['run_id']} had already ended (succeeded).\n"
    data = json.loads(ctl(two_runs, "cancel", "latest", "--json").stdout)
    assert (data["state"], data["ended"]) == ("succeeded", True)


def test_promote_takes_a_version_and_show_tells_the_pointers_history(
    two_runs: Path, tmp_path: Path
) -> None:
    home = _copy(two_runs, tmp_path / "home")
    first, second = runs_of(home)
    promoted = ctl(home, "promote", "v1.0", "--json")
    assert promoted.exit_code == 0, promoted.output
    assert json.loads(promoted.stdout)["dna"] == first["dna"]
    assert shown_run(home, "current") == first["run_id"]
    again = ctl(home, "promote", "current")
    assert again.exit_code == 0, again.output
    assert "is current already" in again.stdout
    moves = json.loads(ctl(home, "show", "v1.0", "--json").stdout)["promotions"]
    assert [(m["what"], m["by"]) for m in moves] == [
        ("certified and made current", None),
        ("replaced", second["run_id"]),
        ("promoted", None),
    ]
    text = ctl(home, "show", "v1.0").stdout
    assert f"replaced as current by {second['run_id']}" in text
    listing = ctl(home, "runs").stdout.splitlines()
    marked = [line for line in listing if line.startswith("*")]
    assert len(marked) == 1 and first["run_id"] in marked[0]


def test_show_says_what_a_run_was(two_runs: Path) -> None:
    second = runs_of(two_runs)[1]
    data = json.loads(ctl(two_runs, "show", "latest", "--json").stdout)
    assert data["settings"] == {
        "tiny-llama": {
            "epochs": 2,
            "learning_rate": 0.005,
            "lora_r": 4,
            "max_seq_len": 48,
            "precision": "auto",
            "quantization": None,
        }
    }
    figures = data["figures"]["tiny-llama"]
    assert figures["base_loss"] > 0 and figures["trained_loss"] > 0
    assert figures["gain_bits_per_byte"] == pytest.approx(
        figures["base_bits_per_byte"] - figures["trained_bits_per_byte"]
    )
    assert data["tokens_per_s"]["tiny-llama"] > 0
    assert data["duration_s"] > 0
    text = ctl(two_runs, "show", "latest").stdout
    assert re.search(
        r"^  settings: tiny-llama: epochs 2, learning rate 0.005, LoRA r 4, max_seq_len 48, "
        r"precision auto \((bf16|fp32)\), no quantization$",
        text,
        re.M,
    ), text
    assert re.search(r"^  took:     \d+s \(tiny-llama [\d.]+ tok/s\)$", text, re.M), text
    assert re.search(
        r"^  figures:  tiny-llama: bits per byte [\d.]+ -> [\d.]+, [+-][\d.]+% \(95 % interval "
        r"[+-][\d.]+% to [+-][\d.]+%: [a-z ]+\), next-token accuracy [\d.]+% -> [\d.]+%$",
        text,
        re.M,
    ), text
    assert "  current:  " in text and "certified and made current" in text
    # times in the one human format, never ISO with microseconds
    assert re.search(r"queued \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, started ", text), text
    assert ".000" not in text and "Z\n" not in text
    assert f"run {second['run_id']}: succeeded\n" in text  # the outcome, once


def results_of(home: Path, run_id: str) -> dict[str, Any]:
    """The training_results.json of a certified run."""
    path = home / "models" / "oneseek-certified" / run_id / "training_results.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def figures_line(results: dict[str, Any], model: str = "tiny-llama") -> str:
    """What show, status and the demo print for a model, written out from the run's
    training_results.json: base -> trained bits per byte, the gate's difference and interval
    as shares of the base's, its verdict, and next-token accuracy."""
    ev = results["metrics"][model]["evaluation"]
    against = results["gate"]["models"][model]["base"]
    base, trained = ev["base"], ev["trained"]
    low, high = against["interval"]

    def share(bits: float) -> str:
        return f"{bits / base['bits_per_byte'] * 100:+.2f}%"

    return (
        f"{model}: bits per byte {base['bits_per_byte']:.4f} -> {trained['bits_per_byte']:.4f}, "
        f"{share(against['difference'])} (95 % interval {share(low)} to {share(high)}: "
        f"{against['verdict']}), next-token accuracy {base['accuracy'] * 100:.1f}% -> "
        f"{trained['accuracy'] * 100:.1f}%"
    )


def test_show_prints_the_figures_of_the_certified_run(two_runs: Path) -> None:
    """Issue 29: each model's held-out figures, as the certified folder records them."""
    for run in runs_of(two_runs):
        results = results_of(two_runs, run["run_id"])
        text = ctl(two_runs, "show", run["run_id"]).stdout
        assert f"\n  figures:  {figures_line(results)}\n" in text, text
        shown = json.loads(ctl(two_runs, "show", run["run_id"], "--json").stdout)
        ev = results["metrics"]["tiny-llama"]["evaluation"]
        figures = shown["figures"]["tiny-llama"]
        assert (figures["base_bits_per_byte"], figures["trained_bits_per_byte"]) == (
            ev["base"]["bits_per_byte"],
            ev["trained"]["bits_per_byte"],
        )
        assert (figures["base_accuracy"], figures["trained_accuracy"]) == (
            ev["base"]["accuracy"],
            ev["trained"]["accuracy"],
        )
        assert figures["verdict"] == results["gate"]["models"]["tiny-llama"]["base"]["verdict"]
        assert shown["no_figures"] is None


def test_status_prints_the_current_models_figures(two_runs: Path) -> None:
    second = runs_of(two_runs)[1]  # current
    results = results_of(two_runs, second["run_id"])
    lines = ctl(two_runs, "status").stdout.splitlines()
    at = lines.index(f"current:  {second['dna']} (run {second['run_id']})")
    assert lines[at + 1] == f"figures:  {figures_line(results)}"
    assert not any("[" in line for line in lines)  # a status text line never holds one
    held = json.loads(ctl(two_runs, "status", "--json").stdout)["certified_figures"]
    assert (held["run_id"], held["dna"], held["current"]) == (second["run_id"], second["dna"], True)
    figures = held["figures"]["tiny-llama"]
    ev = results["metrics"]["tiny-llama"]["evaluation"]
    assert figures["trained_bits_per_byte"] == ev["trained"]["bits_per_byte"]
    assert figures["trained_accuracy"] == ev["trained"]["accuracy"]


def test_the_demos_last_screen_prints_the_figures(two_runs: Path) -> None:
    demo = load_demo("gain")
    second = runs_of(two_runs)[1]
    shown = json.loads(ctl(two_runs, "show", second["run_id"], "--json").stdout)
    screen = demo.screen(shown)
    assert second["run_id"] in screen[0]
    assert screen[1:] == [figures_line(results_of(two_runs, second["run_id"]))]


def test_runs_says_dna_current_and_gain_in_one_state_column(two_runs: Path) -> None:
    first, second = runs_of(two_runs)
    lines = ctl(two_runs, "runs").stdout.splitlines()
    header = lines[0].split()
    assert header == ["RUN", "STATE", "VERSION", "DNA", "MODELS", "QUEUED", "FINISHED", "GAIN"]
    assert "OUTCOME" not in lines[0]
    newest, older = lines[1].split(), lines[2].split()
    assert newest[:5] == ["*", second["run_id"], "succeeded", "1.1", second["dna"]]
    assert older[:4] == [first["run_id"], "succeeded", "1.0", first["dna"]]
    assert re.fullmatch(r"[+-]\d+\.\d%", newest[-1]), newest
    assert older.count("succeeded") == 1


def test_a_name_that_means_several_runs_is_refused_with_them(fake_home: Path) -> None:
    ids = ["run-alpha-318fcc", "run-beta-318fcc"]
    for run_id in ids:
        body = json.dumps(request(run_id=run_id))
        path = fake_home.parent / f"{run_id}.json"
        path.write_text(body)
        assert ctl(fake_home, "submit", str(path)).exit_code == 0
    for command in ("show", "logs", "cancel", "promote"):
        result = ctl(fake_home, command, "318fcc")
        assert result.exit_code == 1, (command, result.output)
        assert result.stderr.splitlines() == [
            "Error: '318fcc' names 2 runs; name one of them by its run id or DNA",
            "  - run-beta-318fcc (v1.1, queued)",
            "  - run-alpha-318fcc (v1.0, queued)",
        ], command
    assert shown_run(fake_home, "alpha-318fcc") == "run-alpha-318fcc"
    none = ctl(fake_home, "show", "v9.9")
    assert none.exit_code == 1
    assert none.stderr.startswith("Error: no run 'v9.9'\n")

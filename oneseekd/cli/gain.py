"""The held-out gain of a certified run, as `show`, `status`, `runs` and the demo's last screen
print it: per model, base -> trained bits per byte, the change in percent with its interval
once the gate has one, and next-token accuracy.

Read, never measured again: the figures are those the certified folder's oneseek_dna.json
signs (`evaluation`: trainer/evaluate.py's figures of the base and of the shipped epoch, the
same as training_results.json's `metrics.<key>.evaluation`) and the gate's verdict beside them
(`gate.models.<key>.base`: certify/gate.py's paired bootstrap). Only the unit changes: the
difference and its interval, in bits per byte, are shown as shares of the base's bits per byte.
A run or model without held-out figures says why ("no held-out figures: ...") instead of
printing zeros. One formatter for every surface, so they print the same words.
"""

from __future__ import annotations

import json
from typing import Any

from oneseekd.certify.gate import unmeasured
from oneseekd.certify.layout import certified_dir
from oneseekd.cli.display import shown
from oneseekd.home import HomePaths

NOT_CERTIFIED = {
    "queued": "the run has not trained yet; they are measured on its held-out records after "
    "training and certified with it",
    "running": "the run has not finished training; they are measured on its held-out records "
    "after training and certified with it",
    "failed": "the run failed before it was certified",
    "cancelled": "the run was cancelled before it was certified",
}
NO_LINK = "the run has no certified folder (oneseek-certified/{run_id} names none)"
UNREADABLE = "its certified folder's oneseek_dna.json cannot be read ({problem})"
NO_EVALUATION = (
    "its certified folder records no held-out evaluation (certified by a version of oneseekd "
    "before it measured one)"
)
TRAINING_ROWS = (
    "the run held out no validation rows (val_fraction 0, or every record a copy of one); "
    "its figures are on the rows it trained on, which say nothing of what it learned"
)
FIGURES = (
    *("base_loss", "trained_loss", "base_bits_per_byte", "trained_bits_per_byte"),
    *("gain_bits_per_byte", "gain_share", "change_percent", "change_interval_percent"),
    *("confidence", "verdict", "base_accuracy", "trained_accuracy", "held_out_records"),
)


def held_out(paths: HomePaths, run_id: str, state: str | None, dna: str | None) -> dict[str, Any]:
    """`figures` (per model: FIGURES, and `no_figures`, why a model has none, or None) and
    `no_figures` (why the run has none at all, or None), as `show --json` and `status --json`
    carry them."""
    if dna is None:
        why = NOT_CERTIFIED.get(str(state)) or NO_LINK.format(run_id=run_id)
        return {"figures": {}, "no_figures": why}
    try:
        record = json.loads((certified_dir(paths, dna) / "oneseek_dna.json").read_bytes())
    except (OSError, ValueError) as exc:
        return {"figures": {}, "no_figures": UNREADABLE.format(problem=exc)}
    record = record if isinstance(record, dict) else {}
    evaluation = _mapping(record.get("evaluation"))
    if not evaluation:
        return {"figures": {}, "no_figures": NO_EVALUATION}
    gate = _mapping(record.get("gate"))
    found = {key: _model(_mapping(ev), gate, key) for key, ev in evaluation.items() if _mapping(ev)}
    return {"figures": found, "no_figures": None if found else NO_EVALUATION}


def _model(ev: dict[str, Any], gate: dict[str, Any], key: str) -> dict[str, Any]:
    """One model's figures: base and trained as certified, the gain (base minus trained, more
    is better) and the change (trained against base, in percent: below 0 is better) with the
    gate's interval and verdict."""
    empty: dict[str, Any] = dict.fromkeys(FIGURES)
    if unmeasured(ev):
        return empty | {"no_figures": TRAINING_ROWS}
    base, trained = _mapping(ev.get("base")), _mapping(ev.get("trained"))
    base_bpb, trained_bpb = (
        _number(base.get("bits_per_byte")),
        _number(trained.get("bits_per_byte")),
    )
    if base_bpb is None or trained_bpb is None:
        return empty | {"no_figures": NO_EVALUATION}
    gain = _number(ev.get("bits_per_byte_gain"))
    gain = base_bpb - trained_bpb if gain is None else gain
    judged = _mapping(_mapping(gate.get("models")).get(key))
    against = _mapping(judged.get("base"))  # the gate's comparison with the base, if any
    difference = _number(against.get("difference"))
    interval = against.get("interval")
    low, high = (
        (_share(_number(interval[0]), base_bpb), _share(_number(interval[1]), base_bpb))
        if isinstance(interval, list) and len(interval) == 2
        else (None, None)
    )
    held = _mapping(ev.get("held_out"))
    return {
        "base_loss": _number(base.get("loss")),
        "trained_loss": _number(trained.get("loss")),
        "base_bits_per_byte": base_bpb,
        "trained_bits_per_byte": trained_bpb,
        "gain_bits_per_byte": gain,
        "gain_share": gain / base_bpb if base_bpb else None,
        # the gate's difference (trained minus base) when it has one, else the figures' own
        "change_percent": _share(difference if difference is not None else -gain, base_bpb),
        "change_interval_percent": None if low is None or high is None else [low, high],
        "confidence": _number(_mapping(gate.get("method")).get("confidence")),
        "verdict": against.get("verdict") or judged.get("verdict"),
        "base_accuracy": _number(base.get("accuracy")),
        "trained_accuracy": _number(trained.get("accuracy")),
        "held_out_records": held.get("rows") if isinstance(held.get("rows"), int) else None,
        "no_figures": None,
    }


def line(key: str, f: dict[str, Any]) -> str:
    """`tiny-llama: bits per byte 3.7608 -> 3.5120, -6.62% (95 % interval -7.10% to -6.01%:
    improved), next-token accuracy 12.3% -> 15.0%`; or `tiny-llama: no held-out figures: ...`."""
    if f.get("no_figures"):
        return shown(f"{key}: no held-out figures: {f['no_figures']}")
    text = (
        f"{key}: bits per byte {_num(f.get('base_bits_per_byte'))} -> "
        f"{_num(f.get('trained_bits_per_byte'))}"
    )
    change = f.get("change_percent")
    if change is not None:
        text += f", {change:+.2f}%"
        interval, verdict = f.get("change_interval_percent"), f.get("verdict")
        if interval:
            level = f"{f['confidence'] * 100:g} % " if f.get("confidence") else ""
            text += f" ({level}interval {interval[0]:+.2f}% to {interval[1]:+.2f}%"
            text += f": {verdict})" if verdict else ")"
        elif verdict:  # the gate gave no interval: too few held-out data, or not measured
            text += f" ({verdict}: no interval)"
    return shown(
        f"{text}, next-token accuracy {_percent(f.get('base_accuracy'))} -> "
        f"{_percent(f.get('trained_accuracy'))}"
    )


def lines(held: dict[str, Any]) -> list[str]:
    """The text of `held_out`: a line per model, or one saying why there are no figures."""
    if not held.get("figures"):
        return [shown(f"no held-out figures: {held.get('no_figures') or NO_EVALUATION}")]
    return [line(key, f) for key, f in held["figures"].items()]


def gain_cell(found: dict[str, dict[str, Any]]) -> str:
    """The `runs` GAIN column: the held-out gain in bits per byte of the run's least improved
    model, as a share of its base's (`+0.6%`); `-` when not measured."""
    shares = [f["gain_share"] for f in found.values() if f.get("gain_share") is not None]
    if not shares:
        return "-"
    return f"{min(shares) * 100:+.1f}%"


def _share(bits: float | None, base: float) -> float | None:
    """Bits per byte as a percentage of the base's."""
    return bits / base * 100 if bits is not None and base else None


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:.4f}"


def _percent(value: Any) -> str:
    return "?" if value is None else f"{value * 100:.1f}%"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

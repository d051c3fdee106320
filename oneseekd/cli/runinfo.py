"""What a run was, as `show` and `runs` tell it: its settings, how long it took and how fast,
and the history of the CURRENT pointer's moves to it and away from it (its held-out figures:
cli/gain.py, shared with `status` and the demo).

Read from what is already recorded, without the ORM: the run spec (runs.config), the
model_trainings rows and the ledger's signed events (a certification that made the run
current, a `model_promoted`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from oneseekd.cli.read import Reader, Row
from oneseekd.times import utcnow

# the ledger events that move the CURRENT pointer (certify/certified.py, certify/current.py)
COMPLETED_EVENT = "dna_v2_training_completed"
PROMOTED_EVENT = "model_promoted"


def settings(run: Row) -> dict[str, dict[str, Any]]:
    """Per model, the settings an operator asks about first, from the run spec."""
    models = run.config.get("models") if isinstance(run.config, dict) else None
    found: dict[str, dict[str, Any]] = {}
    for key, spec in (models or {}).items():
        if not isinstance(spec, dict):
            continue
        lora = _mapping(spec.get("lora"))
        found[key] = {
            "epochs": spec.get("epochs"),
            "learning_rate": spec.get("learning_rate"),
            "lora_r": lora.get("r"),
            "max_seq_len": spec.get("max_seq_len"),
            "precision": spec.get("precision"),
            "quantization": _quantization(spec),
        }
    return found


def _quantization(spec: dict[str, Any]) -> str | None:
    if spec.get("load_in_4bit"):
        return f"4-bit {spec.get('quantization_type') or 'nf4'}"
    if spec.get("load_in_8bit"):
        return "8-bit"
    return None


def settings_line(values: dict[str, Any]) -> str:
    """`epochs 3, learning rate 0.0001, LoRA r 8, max_seq_len 512, precision auto, no
    quantization`."""
    quantization = values.get("quantization")
    return (
        f"epochs {values.get('epochs')}, learning rate {values.get('learning_rate')}, "
        f"LoRA r {values.get('lora_r')}, max_seq_len {values.get('max_seq_len')}, "
        f"precision {values.get('precision')}, "
        + (f"quantization {quantization}" if quantization else "no quantization")
    )


def duration_seconds(run: Row, now: datetime | None = None) -> float | None:
    """From the start to the end (to now, while it runs); None before it started."""
    if run.started_at is None:
        return None
    end: datetime | None = run.finished_at or (
        (now or utcnow()) if run.state == "running" else None
    )
    if end is None:
        return None
    return max(0.0, float((end - run.started_at).total_seconds()))


def human_duration(seconds: float | None) -> str:
    """`2h05m`, `3m07s`, `41s`; `-` when unknown."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def throughput(reader: Reader, run: Row) -> dict[str, float | None]:
    """Training tokens per second of each model, as its model_trainings row measured it."""
    rows = reader.rows(
        "SELECT model_key, tokens, seconds FROM model_trainings WHERE run_id = :pk "
        "ORDER BY position",
        pk=run.id,
    )
    return {
        r.model_key: (round(r.tokens / r.seconds, 1) if r.seconds and r.tokens else None)
        for r in rows
    }


def promotions(reader: Reader, run: Row) -> list[dict[str, Any]]:
    """Every move of the CURRENT pointer to this run and away from it, oldest first, from the
    ledger: made current at certification, promoted (with the reason), replaced by another."""
    rows = reader.rows(
        "SELECT e.seq, e.at, e.event, e.payload, r.run_id AS owner FROM ledger_events e "
        "LEFT JOIN runs r ON r.id = e.run_id WHERE e.event IN (:completed, :promoted) "
        "ORDER BY e.seq",
        completed=COMPLETED_EVENT,
        promoted=PROMOTED_EVENT,
    )
    history: list[dict[str, Any]] = []
    holder: str | None = None  # the run the pointer names after each move
    for row in rows:
        payload = _payload(row.payload)
        if row.event == COMPLETED_EVENT and payload.get("current") is not True:
            continue
        target = payload.get("run_id") if row.event == PROMOTED_EVENT else row.owner
        target = target if isinstance(target, str) else row.owner
        if target == run.run_id:
            history.append(
                {
                    "at": row.at,
                    "what": "certified and made current"
                    if row.event == COMPLETED_EVENT
                    else "promoted",
                    "reason": payload.get("reason") if row.event == PROMOTED_EVENT else None,
                    "overrides_gate": payload.get("overrides_gate")
                    if row.event == PROMOTED_EVENT
                    else None,
                    "by": None,
                }
            )
        elif holder == run.run_id:
            history.append(
                {
                    "at": row.at,
                    "what": "replaced",
                    "reason": None,
                    "overrides_gate": None,
                    "by": target,
                }
            )
        holder = target
    return history


def promotion_line(move: dict[str, Any]) -> str:
    if move["what"] == "replaced":
        return f"replaced as current by {move['by']}"
    line = str(move["what"])
    if move.get("reason"):
        line += f": {move['reason']}"
    if move.get("overrides_gate"):
        line += f" (over the gate: {move['overrides_gate']})"
    return line


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _payload(text: Any) -> dict[str, Any]:
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def resolved_precision(log_path: str | None) -> dict[str, str]:
    """Per model, the precision `auto` resolved to, as the run log's `model_sharding` events
    say (the last attempt's); empty when the log cannot be read."""
    if not log_path:
        return {}
    found: dict[str, str] = {}
    try:
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"model_sharding"' not in line:
                    continue
                data = _payload(line)
                if isinstance(data.get("model"), str) and isinstance(data.get("precision"), str):
                    found[data["model"]] = data["precision"]
    except OSError:
        return {}
    return found

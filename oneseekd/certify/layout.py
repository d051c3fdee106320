"""The certified layout under models/oneseek-certified/ (docs/training.md, "The certified
layout"): names, which files are views, and what the CURRENT pointer resolves to.

Pure path logic: no database, no torch, so `oneseekctl status` and `ledger verify` can use it.

    oneseek-certified/
      OneSeek-7B-Zero.v<ver>.<6hex>/     a real directory named by the DNA
        oneseek_dna.json training_results.json live_metrics.json ledger_proof.json
        loss_curve.png                   recorded artifacts (sha256 in the ledger)
        metadata.json                    a view: CivicAI's admin panel rewrites it
        oneseek-7b-zero-v<ver>-<key>     -> ../../oneseek-7b-zero/lora_adapters/<same name>
        base_models/<display name>       -> the base model's folder (relative)
      <run_id>                           -> OneSeek-7B-Zero.v<ver>.<6hex> (during training: a
                                            real folder holding live_metrics.json)
      OneSeek-7B-Zero-CURRENT            -> OneSeek-7B-Zero.v<ver>.<6hex>   (a view)
      OneSeek-7B-Zero-CURRENT.txt        that folder's absolute path           (a view)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseekd.home import HomePaths

DNA_PREFIX = "OneSeek-7B-Zero.v"
CURRENT_LINK = "OneSeek-7B-Zero-CURRENT"
CURRENT_TXT = f"{CURRENT_LINK}.txt"
METADATA_FILE = "metadata.json"
LIVE_METRICS_FILE = "live_metrics.json"
BASE_MODELS_DIR = "base_models"
# An intent note written before a pointer move commits and removed once the move is done
# (certify/current.py): a dot-name, like every staging name, so no reader takes it for a view.
PENDING_NOTE = f".{CURRENT_LINK}.pending"
# Held from an intent note to the end of its transaction, and through every settle
# (certify/pointerlock.py): a dot-name too.
POINTER_LOCK = f".{CURRENT_LINK}.lock"
# Files other programs may rewrite (CivicAI's admin panel rewrites metadata.json after a run,
# its "Set as Active" re-points the link and rewrites the .txt): never artifacts, so a rewrite
# is not tampering. metadata.json is a view inside a certified folder; the other two sit
# directly in oneseek-certified/.
VIEW_NAMES = frozenset({METADATA_FILE, CURRENT_LINK, CURRENT_TXT})
CERTIFIED_FILES = (
    "oneseek_dna.json",
    "training_results.json",
    LIVE_METRICS_FILE,
    "ledger_proof.json",
    "loss_curve.png",
    "samples.json",
)

_DNA = re.compile(r"^OneSeek-7B-Zero\.v(\d+\.\d+)\.([0-9a-f]{6})$")


def is_dna(name: str) -> bool:
    """Whether name is a DNA (`OneSeek-7B-Zero.v1.0.abc123`), hence a certified folder's name."""
    return _DNA.match(name) is not None


def dna_version(dna: str) -> str:
    """The version a DNA carries: `OneSeek-7B-Zero.v1.0.abc123` -> `1.0`."""
    match = _DNA.match(dna)
    if match is None:
        raise ValueError(f"{dna!r} is not a DNA (OneSeek-7B-Zero.v<MAJOR.MINOR>.<6 hex>)")
    return match.group(1)


def certified_dir_name(dna: str) -> str:
    """The certified folder of a run is named by its DNA, exactly."""
    dna_version(dna)  # refuse anything that is not one: the name becomes a path
    return dna


def certified_dir(paths: HomePaths, dna: str) -> Path:
    return paths.certified / certified_dir_name(dna)


def run_link(paths: HomePaths, run_id: str) -> Path:
    """oneseek-certified/<run_id>: the live folder while the run trains, then a link to its
    certified folder."""
    return paths.certified / run_id


def live_metrics_path(paths: HomePaths, run_id: str) -> Path:
    """Where CivicAI's live leaderboard polls a run's metrics, during training and after."""
    return run_link(paths, run_id) / LIVE_METRICS_FILE


def current_link(paths: HomePaths) -> Path:
    return paths.certified / CURRENT_LINK


def current_txt(paths: HomePaths) -> Path:
    return paths.certified / CURRENT_TXT


def is_view(paths: HomePaths, path: Path) -> bool:
    """Whether path (absolute, or relative to the home) is a view other programs may rewrite:
    the CURRENT link or .txt in oneseek-certified/, or metadata.json in a certified folder."""
    full = path if path.is_absolute() else paths.root / path
    if full.parent == paths.certified:
        return full.name in (CURRENT_LINK, CURRENT_TXT)
    return full.name == METADATA_FILE and full.parent.parent == paths.certified


def is_certified_dir(path: Path) -> bool:
    """A real directory (not a link) named by a DNA: what CivicAI lists as a certified model."""
    return is_dna(path.name) and path.is_dir() and not path.is_symlink()


def certified_dirs(paths: HomePaths) -> list[Path]:
    """Every certified folder in place (staging dot-names and links aside), by name."""
    if not paths.certified.is_dir():
        return []
    return sorted(p for p in paths.certified.iterdir() if is_certified_dir(p))


@dataclass(frozen=True)
class Current:
    """What oneseek-certified/OneSeek-7B-Zero-CURRENT resolves to right now.

    `dna` is the certified folder it names when that is a certified folder of this home;
    otherwise None and `problem` says why (no pointer, a dangling link, a folder elsewhere).
    `source` is "link" or "txt" (CivicAI reads the link first, then the .txt)."""

    dna: str | None
    source: str | None
    target: str | None  # what the link or .txt says, as written
    problem: str | None = None


def resolve_current(paths: HomePaths) -> Current:
    """The current certified run, read the way CivicAI's inference service reads it: the
    link's resolved target, else the path in the .txt. No database."""
    link, txt = current_link(paths), current_txt(paths)
    if os.path.lexists(link):
        written = os.readlink(link) if link.is_symlink() else str(link)
        return _judge(paths, link.resolve(), "link", written)
    if txt.is_file():
        try:
            written = txt.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return Current(None, "txt", None, f"{CURRENT_TXT} cannot be read: {exc}")
        target = Path(written)
        full = target if target.is_absolute() else paths.certified / target
        return _judge(paths, full.resolve(), "txt", written)
    return Current(None, None, None, f"there is no {CURRENT_LINK} in {paths.certified}")


def _judge(paths: HomePaths, resolved: Path, source: str, written: str) -> Current:
    where = CURRENT_LINK if source == "link" else CURRENT_TXT
    if not resolved.exists():
        return Current(None, source, written, f"{where} points at {written}, which does not exist")
    if resolved.parent != paths.certified.resolve() or not is_certified_dir(resolved):
        return Current(
            None, source, written, f"{where} points at {written}, which is not a certified folder"
        )
    return Current(resolved.name, source, written)


def current_dna(paths: HomePaths) -> str | None:
    """The DNA the CURRENT pointer names, or None (for `status`, `runs` and `show`)."""
    return resolve_current(paths).dna


def run_dna(paths: HomePaths, run_id: str) -> str | None:
    """The DNA a certified run's <run_id> link names (None while it trains or if it never
    certified): how `runs` marks the current run without the database."""
    link = run_link(paths, run_id)
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    return target if is_dna(target) else None


def certified_run_id(paths: HomePaths, dna: str) -> str | None:
    """The run a certified folder belongs to, as its oneseek_dna.json says (an artifact, not a
    view: metadata.json may have been rewritten by another program)."""
    run_id = _dna_record(paths, dna).get("run_id")
    return run_id if isinstance(run_id, str) else None


def _dna_record(paths: HomePaths, dna: str) -> dict[str, Any]:
    """A certified folder's oneseek_dna.json; empty when it cannot be read as an object."""
    import json

    try:
        data = json.loads((certified_dir(paths, dna) / "oneseek_dna.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def current_summary(paths: HomePaths) -> dict[str, str | None]:
    """What `status`, `runs` and `show` report as current: the DNA CURRENT names, its run,
    which pointer said so, and what is wrong when it names nothing usable. No database."""
    now = resolve_current(paths)
    return {
        "dna": now.dna,
        "run_id": certified_run_id(paths, now.dna) if now.dna else None,
        "pointer": now.source,
        "problem": now.problem,
    }


def run_gate(paths: HomePaths, dna: str | None) -> dict[str, Any] | None:
    """The gate's verdict a certified run's oneseek_dna.json records (certify/gate.py): for
    `status`, `runs` and `show`, without the database. None before the gate existed."""
    gate = _dna_record(paths, dna).get("gate") if dna is not None else None
    return gate if isinstance(gate, dict) else None

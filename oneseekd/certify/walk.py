"""`ledger verify`'s walk of models/oneseek-certified/ and the adapter links: every folder,
file and link there must be one the signed ledger accounts for.

- A certified folder (a real directory named by a DNA) must be the DNA of a
  `dna_v2_training_completed` event; every regular file in it must be a recorded artifact,
  except the views other programs rewrite (metadata.json, layout.VIEW_NAMES) and
  ledger_proof.json (it holds the event that certifies the folder, so it cannot be recorded by
  it: it is checked against the chain instead, and must prove this folder's DNA).
- Every link in a certified folder must stay inside the home: an adapter link must lead to
  the recorded adapter folder of its name, a base model link to a model folder.
- A `<run id>` entry is a link to the DNA its run was certified as, or, for a run not (yet)
  certified, a live folder holding only live_metrics.json.
- `lora_adapters/<key>-adapter` must lead to the newest recorded adapter folder of that key.
- OneSeek-7B-Zero-CURRENT (or its .txt) must name a certified folder of this home; which one
  is reported. Re-pointing it at another certified run is not tampering (CivicAI's "Set as
  Active" does it); pointing it elsewhere is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneseekd.certify.layout import (
    BASE_MODELS_DIR,
    CURRENT_LINK,
    CURRENT_TXT,
    LIVE_METRICS_FILE,
    METADATA_FILE,
    is_dna,
    resolve_current,
)
from oneseekd.certify.live import LIVE_OWNER
from oneseekd.home import HomePaths

COMPLETED_EVENT = "dna_v2_training_completed"
ARTIFACT_EVENT = "artifact_recorded"
PROOF_FILE = "ledger_proof.json"
# files in a certified folder that are not recorded artifacts, and why
EXCEPTED = {
    METADATA_FILE: "a view other programs rewrite",
    PROOF_FILE: "checked against the ledger's chain",
}


@dataclass
class Signed:
    """What the (verified) chain says about the certified layout."""

    certified: dict[str, str] = field(default_factory=dict)  # dna -> run id
    runs: dict[str, str] = field(default_factory=dict)  # run id -> dna
    artifacts: set[str] = field(default_factory=set)  # home-relative paths recorded
    adapters: dict[str, str] = field(default_factory=dict)  # key -> newest adapter folder

    @classmethod
    def of(cls, events: list[tuple[str, Any]]) -> Signed:
        """From (event, payload) pairs in chain order."""
        signed = cls()
        for event, payload in events:
            if not isinstance(payload, dict):
                continue
            if event == COMPLETED_EVENT:
                dna, run_id = payload.get("dna"), payload.get("run_id")
                if isinstance(dna, str) and isinstance(run_id, str):
                    signed.certified[dna] = run_id
                    signed.runs[run_id] = dna
            elif event == ARTIFACT_EVENT and isinstance(payload.get("path"), str):
                path = payload["path"]
                signed.artifacts.add(path)
                key = payload.get("model_key")
                if payload.get("kind") == "adapter" and isinstance(key, str):
                    signed.adapters[key] = path.rsplit("/", 1)[0]
        return signed

    def holds_artifacts(self, folder: str) -> bool:
        prefix = folder.rstrip("/") + "/"
        return any(p.startswith(prefix) for p in self.artifacts)


def check_layout(paths: HomePaths, signed: Signed) -> tuple[list[str], str | None]:
    """Every problem of the certified layout, and which certified run CURRENT names."""
    problems = list(_walk_certified(paths, signed))
    problems.extend(_check_adapter_links(paths, signed))
    current, problem = _current(paths, signed)
    if problem:
        problems.append(problem)
    return problems, current


def _rel(paths: HomePaths, path: Path) -> str:
    return path.relative_to(paths.root).as_posix()


def _walk_certified(paths: HomePaths, signed: Signed) -> Iterator[str]:
    top = paths.certified
    try:
        names = sorted(os.listdir(top))
    except FileNotFoundError:
        names = []
    for name in names:
        entry = top / name
        shown = _rel(paths, entry)
        if name.startswith(".") or name in (CURRENT_LINK, CURRENT_TXT):
            continue  # staging names; the CURRENT views are judged below
        if entry.is_symlink():
            yield from _check_run_link(paths, signed, name, shown)
        elif not entry.is_dir():
            yield f"{shown} is not part of the certified layout (no ledger event accounts for it)"
        elif is_dna(name):
            if name not in signed.certified:
                yield (
                    f"{shown} is a certified folder that no ledger event certified (no "
                    f"{COMPLETED_EVENT} names DNA {name})"
                )
            yield from _check_folder(paths, signed, entry)
        else:
            yield from _check_live_folder(paths, signed, name, entry, shown)


def _check_run_link(paths: HomePaths, signed: Signed, name: str, shown: str) -> Iterator[str]:
    target = os.readlink(paths.certified / name)
    dna = signed.runs.get(name)
    if dna is None:
        yield f"{shown} is a link to {target}, but no ledger event certified a run {name}"
    elif target != dna:
        yield f"{shown} points at {target}, but run {name} was certified as {dna}"


def _check_live_folder(
    paths: HomePaths, signed: Signed, name: str, entry: Path, shown: str
) -> Iterator[str]:
    """A run's folder while it trains: live_metrics.json, a view, and nothing else."""
    for path in sorted(entry.rglob("*")):
        if path.parent == entry and (
            path.name in (LIVE_METRICS_FILE, LIVE_OWNER)
            or (path.name.startswith(f".{LIVE_METRICS_FILE}") and path.name.endswith(".tmp"))
        ):
            continue  # the view, or its replacement cut short by a crash
        rel = _rel(paths, path)
        if path.is_dir() and not path.is_symlink():
            continue
        if rel not in signed.artifacts:
            inner = path.relative_to(entry).as_posix()
            yield f"{shown} holds {inner}, which no ledger event recorded"


def _check_folder(paths: HomePaths, signed: Signed, folder: Path) -> Iterator[str]:
    shown = _rel(paths, folder)
    for here, dirs, names in os.walk(folder):  # links are not followed: each is judged
        base = Path(here)
        for name in sorted(dirs + names):
            path = base / name
            inner = path.relative_to(folder).as_posix()
            if path.is_symlink():
                yield from _check_link(paths, signed, folder, path)
            elif name in dirs or inner in EXCEPTED:
                continue
            elif _rel(paths, path) not in signed.artifacts:
                yield f"{shown} holds {inner}, which no ledger event recorded"


def _check_link(paths: HomePaths, signed: Signed, folder: Path, link: Path) -> Iterator[str]:
    shown = _rel(paths, link)
    root = paths.root.resolve()
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        yield f"{shown} is a link to {os.readlink(link)}, which does not resolve"
        return
    if link.parent.name == BASE_MODELS_DIR and link.parent.parent == folder:
        if not (target / "config.json").is_file():
            yield f"{shown} leads to {target}, which is not a model folder (no config.json)"
        return
    if not target.is_relative_to(root):
        yield f"{shown} leads outside the home, to {target}"
        return
    rel = target.relative_to(root).as_posix()
    expected = _rel(paths, paths.zero / "lora_adapters" / link.name)
    if link.parent != folder or rel != expected or not signed.holds_artifacts(rel):
        yield f"{shown} leads to {rel}, not to the recorded adapter folder {expected}"


def _check_adapter_links(paths: HomePaths, signed: Signed) -> Iterator[str]:
    folder = paths.zero / "lora_adapters"
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    root = paths.root.resolve()
    for name in names:
        link = folder / name
        if not (name.endswith("-adapter") and link.is_symlink()):
            continue
        shown = _rel(paths, link)
        key = name.removesuffix("-adapter")
        expected = signed.adapters.get(key)
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):
            yield f"{shown} is a link to {os.readlink(link)}, which does not resolve"
            continue
        rel = target.relative_to(root).as_posix() if target.is_relative_to(root) else str(target)
        if expected is None:
            yield f"{shown} leads to {rel}, but no adapter of {key} was recorded"
        elif rel != expected:
            yield (
                f"{shown} leads to {rel}, not to the newest recorded adapter of {key}, {expected}"
            )


def _current(paths: HomePaths, signed: Signed) -> tuple[str | None, str | None]:
    """(the DNA CURRENT names, the problem with it)."""
    now = resolve_current(paths)
    if now.source is None:
        return None, None  # nothing certified yet, or never made current
    if now.dna is None:
        return None, f"{now.problem}: CivicAI would load no certified model of this home"
    if now.dna not in signed.certified:
        where = CURRENT_LINK if now.source == "link" else CURRENT_TXT
        return now.dna, f"{where} names {now.dna}, which this ledger never certified"
    return now.dna, None

"""The last `oneseekctl ledger verify`'s result, kept beside the ledger's tip (HOME/ledger.verified)
so that the daemon's metrics can report it: the daemon never verifies the ledger itself (that
reads every artifact back), an operator or a timer runs `ledger verify`, and an alert watches
what it found. Light: the CLI writes it, the metrics' snapshot reads it; no prometheus_client."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneseekd import boundedjson
from oneseekd.home import HomePaths
from oneseekd.times import read_time, utc_text, utcnow

VERIFIED_FILE = "ledger.verified"
MAX_BYTES = 4096


@dataclass(frozen=True)
class Verified:
    at: float  # seconds since the epoch
    ok: bool
    events: int
    artifacts: int
    problems: int


def verified_path(paths: HomePaths) -> Path:
    return paths.root / VERIFIED_FILE


def record(paths: HomePaths, ok: bool, events: int, artifacts: int, problems: int) -> str | None:
    """Replace the record with this verify's result; the reason when it cannot be written (a
    verify run by a user who may read the home but not write it still verifies)."""
    path = verified_path(paths)
    data = {
        "at": utc_text(utcnow()),
        "ok": ok,
        "events": events,
        "artifacts": artifacts,
        "problems": problems,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return f"{path}: {exc.strerror or exc}"
    return None


def last(paths: HomePaths) -> Verified | None:
    """The recorded result, or None when there is none or it does not read as one."""
    try:
        data: Any = boundedjson.read(verified_path(paths), max_bytes=MAX_BYTES, what=VERIFIED_FILE)
        at = read_time(data["at"]).timestamp()
        ok, counts = data["ok"], [data[k] for k in ("events", "artifacts", "problems")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(ok, bool) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in counts
    ):
        return None
    return Verified(at, ok, *counts)

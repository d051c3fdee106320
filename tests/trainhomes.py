"""Homes with tiny generated models for the trainer's tests, and TinyHome: one migrated and
scanned, whose runs a test trains in its own process (train_run)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result
from homes import ctl, migrated
from sqlalchemy import Engine

from oneseekd import queue
from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.config import Config
from oneseekd.db.models import Run
from oneseekd.intake.accept import Intake
from oneseekd.intake.incoming import Verdict
from oneseekd.trainer.hubless import import_bitsandbytes

# before peft: the crash harness's processes import this module first, before the trainer's
# own entry would import bitsandbytes without its Hub kernel lookup
import_bitsandbytes()

from oneseekd.trainer.run import train_run  # noqa: E402
from oneseekd.trainer.tiny import tiny_model  # noqa: E402

_CACHE: dict[tuple[str, str], Path] = {}


def cached_tiny(cache_root: Path, name: str, arch: str) -> Path:
    """Build each tiny model once per session; tests get copies."""
    key = (name, arch)
    if key not in _CACHE:
        _CACHE[key] = tiny_model(cache_root / arch, name, arch)
    return _CACHE[key]


def civic_dataset(path: Path, n: int = 48) -> None:
    lines = []
    for i in range(n):
        if i % 3 == 0:
            rec: dict[str, object] = {"text": f"Riksdagen beslutar om lagar och budget {i % 7}."}
        elif i % 3 == 1:
            rec = {
                "instruction": "Sammanfatta",
                "input": f"Kommun {i % 5}",
                "output": "Kommunerna ansvarar för skolan.",
            }
        else:
            rec = {
                "messages": [
                    {"role": "user", "content": "Vem stiftar lagar?"},
                    {"role": "assistant", "content": "Riksdagen stiftar lagar."},
                ]
            }
        lines.append(json.dumps(rec, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_home(root: Path, cache_root: Path, models: dict[str, str]) -> Path:
    """A home whose base_models/ holds copies of tiny models {folder name: arch}."""
    base = root / "models" / "oneseek-7b-zero" / "base_models"
    base.mkdir(parents=True, exist_ok=True)
    for name, arch in models.items():
        shutil.copytree(cached_tiny(cache_root, name, arch), base / name)
    civic_dataset(root / "datasets" / "civic.jsonl")
    (root / "oneseekd.toml").write_text(
        "[catalog]\nsettle_seconds = 0\nrescan_interval_seconds = 3600\n"
        "[intake]\nsettle_seconds = 0\n[trainer]\nheartbeat_seconds = 0.2\n"
    )
    return root


FAST = {
    "epochs": 3,
    "batch_size": 4,
    "learning_rate": 5e-3,
    "max_seq_len": 64,
    "val_fraction": 0.25,
    "checkpoint_every": 2,
    "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
}


class TinyHome:
    """A migrated, scanned home with tiny models {folder name: arch}; `toml` is appended to
    its oneseekd.toml. Every request it submits starts from FAST."""

    def __init__(self, root: Path, cache: Path, models: dict[str, str], toml: str = "") -> None:
        tiny_home(root, cache, models)
        if toml:
            with (root / "oneseekd.toml").open("a") as fh:
                fh.write(toml)
        self.config: Config
        self.engine: Engine
        self.config, self.engine = migrated(root)
        self.scan()

    @property
    def root(self) -> Path:
        return self.config.home.root

    @property
    def models(self) -> Path:
        return self.root / "models"

    def scan(self) -> None:
        Catalog(self.engine, model_roots(self.config), settle=0).full_scan()

    def take(self, models: list[str], **fields: object) -> Verdict:
        """The intake's verdict on a request for `models` (FAST, then `fields`)."""
        body = {"base_models": models, "dataset": "civic.jsonl", **FAST, **fields}
        return Intake(self.engine, self.config.home).take_bytes(
            json.dumps(body).encode(), source="submit"
        )

    def submit(self, models: list[str], **fields: object) -> str:
        """Queue a request; its run id."""
        verdict = self.take(models, **fields)
        assert verdict.run_id, verdict.problems
        return verdict.run_id

    def refused(self, models: list[str], **fields: object) -> list[str]:
        """The problems the intake refuses a request with."""
        return list(self.take(models, **fields).problems)

    def claim(self, run_id: str) -> Run:
        """Claim the run, as the supervisor does before it starts the trainer."""
        claimed = queue.claim_next(self.engine, None)
        assert claimed is not None and claimed.run_id == run_id
        return claimed

    def start(self, models: list[str], **fields: object) -> str:
        """Queue a request and claim its run."""
        run_id = self.submit(models, **fields)
        self.claim(run_id)
        return run_id

    def train(self, models: list[str], **fields: object) -> tuple[str, str]:
        """Queue, claim and train a run in this process, and end it `succeeded` as the
        supervisor does when the trainer exits 0; its run id and DNA."""
        run_id = self.submit(models, **fields)
        claimed = self.claim(run_id)
        dna = train_run(self.engine, self.config.home, run_id)
        queue.finish(self.engine, claimed.id, queue.Ending("succeeded", "succeeded"))
        return run_id, dna

    def certified_json(self, name: str, run_id: str | None = None) -> Any:
        """A JSON file of the run's certified folder, or of the home's only one."""
        certified = self.models / "oneseek-certified"
        if run_id is not None:
            folder = certified / run_id  # the run's link to its folder
        else:  # the CURRENT pointer (a link and its .txt) and live folders sit beside it
            [folder] = [
                p
                for p in certified.iterdir()
                if p.name.startswith("OneSeek-7B-Zero.v") and p.is_dir() and not p.is_symlink()
            ]
        return json.loads((folder / name).read_text())

    def results(self, run_id: str | None = None) -> dict[str, Any]:
        """The training_results.json of the run, or of the home's only certified run."""
        data: dict[str, Any] = self.certified_json("training_results.json", run_id)
        return data

    def events(self, name: str) -> list[dict[str, Any]]:
        """The payloads of the ledger's `name` events, oldest first."""
        rows = self.rows("SELECT payload FROM ledger_events WHERE event = ? ORDER BY seq", name)
        return [json.loads(str(payload)) for (payload,) in rows]

    def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        con = sqlite3.connect(self.config.home.db_file)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def ctl(self, *args: str) -> Result:
        return ctl(self.root, *args)


def stop_at(n: int) -> Callable[[], bool]:
    """A trainer's should_stop that says yes the n-th time it is asked (after every optimizer
    step and epoch): a run stopped at a deterministic point, never by racing it."""
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    return should_stop

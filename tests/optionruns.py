"""A home with tiny models where a run is submitted, claimed and trained in this process (the
trainer's train_run, no daemon): for the tests of the training options end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from trainhomes import FAST, tiny_home

from oneseekd import queue
from oneseekd.catalog.live import Catalog
from oneseekd.catalog.scan import model_roots
from oneseekd.config import Config, load_config
from oneseekd.db.engine import make_engine
from oneseekd.db.migrate import upgrade
from oneseekd.intake.accept import Intake
from oneseekd.trainer.run import train_run


class OptionHome:
    def __init__(self, root: Path, cache: Path, models: dict[str, str]) -> None:
        tiny_home(root, cache, models)
        self.config: Config = load_config(root, env={})
        self.config.home.ensure()
        self.engine: Engine = make_engine(self.config.db_url)
        upgrade(self.engine)
        Catalog(self.engine, model_roots(self.config), settle=0).full_scan()
        self.root = self.config.home.root

    def refused(self, models: list[str], **fields: object) -> list[str]:
        body = {"base_models": models, "dataset": "civic.jsonl", **FAST, **fields}
        verdict = Intake(self.engine, self.config.home).take_bytes(
            json.dumps(body).encode(), source="submit"
        )
        return list(verdict.problems)

    def train(self, models: list[str], **fields: object) -> str:
        """Submit, claim and train a run; its DNA."""
        body = {"base_models": models, "dataset": "civic.jsonl", **FAST, **fields}
        verdict = Intake(self.engine, self.config.home).take_bytes(
            json.dumps(body).encode(), source="submit"
        )
        assert verdict.run_id, verdict.problems
        claimed = queue.claim_next(self.engine, None)
        assert claimed is not None and claimed.run_id == verdict.run_id
        self.run_id = verdict.run_id
        return train_run(self.engine, self.config.home, verdict.run_id)

    def certified(self, name: str) -> Any:
        """A JSON file of the home's only certified run."""
        folder = self.root / "models" / "oneseek-certified"
        [run] = [
            p
            for p in folder.iterdir()
            if p.name.startswith("OneSeek-7B-Zero.v") and p.is_dir() and not p.is_symlink()
        ]
        return json.loads((run / name).read_text())

    def events(self, name: str) -> list[dict[str, Any]]:
        con = sqlite3.connect(self.config.home.db_file)
        try:
            rows = con.execute("SELECT payload FROM ledger_events WHERE event = ?", (name,))
            return [json.loads(p) for (p,) in rows.fetchall()]
        finally:
            con.close()

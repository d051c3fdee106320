"""oneseekctl status."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click
from sqlalchemy import select

from oneseekd.catalog.store import load_rows
from oneseekd.cli.context import Context, emit_json
from oneseekd.db.engine import read_session
from oneseekd.db.models import Daemon


def gather(obj: Context) -> dict[str, Any]:
    lock = obj.daemon()
    scanned = obj.fresh_catalog()
    engine = obj.engine()
    with read_session(engine) as session:
        last = session.scalars(select(Daemon).order_by(Daemon.id.desc()).limit(1)).first()
    states = Counter(r.state for r in load_rows(engine))
    return {
        "home": str(obj.config.home.root),
        "database": engine.url.render_as_string(hide_password=True),
        "daemon": {
            "running": lock.held,
            "pid": lock.pid,
            "host": last.host if last else None,
            "activity": (last.activity if lock.held else "not running") if last else None,
            "heartbeat_at": last.heartbeat_at.isoformat() if last else None,
            "started_at": last.started_at.isoformat() if last and lock.held else None,
        },
        "catalog": {
            "source": "scanned by oneseekctl (no daemon)" if scanned else "kept by oneseekd",
            "models": sum(v for k, v in states.items() if k != "missing"),
            "by_state": {
                s: states.get(s, 0) for s in ("ready", "incomplete", "invalid", "missing")
            },
        },
    }


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
def status_cmd(obj: Context, as_json: bool) -> None:
    """Is the daemon alive, what does the catalog hold."""
    data = gather(obj)
    if as_json:
        emit_json(data)
        return
    d, c = data["daemon"], data["catalog"]
    if d["running"]:
        click.echo(
            f"oneseekd: running (pid {d['pid']}), {d['activity']}, "
            f"last heartbeat {d['heartbeat_at']}"
        )
    else:
        click.echo(f"oneseekd: not running (start it with `oneseekd --home {data['home']}`)")
    click.echo(f"home:     {data['home']}")
    click.echo(f"database: {data['database']}")
    by = c["by_state"]
    click.echo(
        f"catalog:  {c['models']} models ({by['ready']} ready, {by['incomplete']} "
        f"incomplete, {by['invalid']} invalid; {by['missing']} missing), {c['source']}"
    )

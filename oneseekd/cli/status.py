"""oneseekctl status: light (oneseekd/cli/read.py), it imports no SQLAlchemy on a SQLite home."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any

import click

from oneseekd import cachedir
from oneseekd.certify.gate import interval_notes, not_current_note
from oneseekd.certify.layout import current_summary, run_dna, run_gate
from oneseekd.cli import gain
from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import columns, iso, shown
from oneseekd.cli.pull import download_dict, progress_text
from oneseekd.cli.read import Row, open_reader
from oneseekd.cli.requests import last_refusal, refusal_line
from oneseekd.home import HomePaths
from oneseekd.times import human_age, human_text, utcnow

RUN_NOW_COLUMNS = (
    *("run_id", "host", "base_models", "version", "attempts", "started_at", "heartbeat_at"),
    *("cancel_requested", "progress"),
)


def _run_now(run: Row) -> dict[str, Any]:
    return columns(run, RUN_NOW_COLUMNS)


def gather(obj: Context) -> dict[str, Any]:
    lock = obj.daemon()
    # the certified run oneseek-certified/OneSeek-7B-Zero-CURRENT names (not the running one)
    now = current_summary(obj.config.home)
    reader, scanned = open_reader(obj, catalog=True)
    try:  # closed at once: `--watch` reads again every few seconds for hours
        host = obj.config.catalog.host
        last = reader.last_daemon(host)
        rows = reader.models()
        running = reader.running()
        recent = reader.recent(5)
        counts = reader.queue_counts()
        downloads = reader.downloads()
        refusal = last_refusal(reader)  # the newest of the last day, if any
        # nothing current: the newest certified run's figures instead
        succeeded = [] if now["dna"] else reader.runs(NEWEST_CERTIFIED, "succeeded")
    finally:
        reader.close()
    states = Counter(r.state for r in rows if r.host == host)
    others = Counter(r.host for r in rows if r.host != host and r.state == "ready")
    # this host's run first: on a shared database other hosts' daemons train theirs
    current = next((r for r in running if r.host in (host, None)), None)
    return {
        "home": str(obj.config.home.root),
        "database": reader.url,
        "host": host,
        "daemon": {
            "running": lock.held,
            "pid": lock.pid,
            "host": last.host if last else None,
            "activity": (last.activity if lock.held else "not running") if last else None,
            "heartbeat_at": iso(last.heartbeat_at) if last else None,
            "started_at": iso(last.started_at) if last and lock.held else None,
        },
        "catalog": {
            "source": "scanned by oneseekctl (no daemon)" if scanned else "kept by oneseekd",
            "models": sum(v for k, v in states.items() if k != "missing"),
            "by_state": {
                s: states.get(s, 0) for s in ("ready", "incomplete", "invalid", "missing")
            },
            "other_hosts_ready": dict(sorted(others.items())),
        },
        "queue": {"queued": counts.get("queued", 0), "running": counts.get("running", 0)},
        # model_downloads rows pending or running (oneseekctl pull, or the admin panel's rows)
        "downloads": [download_dict(d) for d in downloads],
        # the newest rejected or duplicate request of the last day (cli/requests.py), or null
        "last_refusal": refusal,
        "current_run": None if current is None else _run_now(current),
        "current_model": now,
        # the held-out figures of the current model, else of the newest certified run
        # (cli/gain.py), or null when no run is certified
        "certified_figures": _certified_figures(obj.config.home, now, succeeded),
        "other_running_runs": [_run_now(r) for r in running if r is not current],
        "recent_runs": [_recent(obj.config.home, r) for r in recent],
        "tokenization_cache": _tokenization_cache(obj),
    }


NEWEST_CERTIFIED = 10  # the succeeded runs status looks through for one certified


def _certified_figures(
    home: HomePaths, now: dict[str, Any], succeeded: list[Row]
) -> dict[str, Any] | None:
    """The held-out figures `status` shows: the current model's, else the newest certified
    run's; None when neither is."""
    if now["dna"]:
        run_id, dna = str(now["run_id"] or "?"), str(now["dna"])
    else:
        found = next(((r.run_id, d) for r in succeeded if (d := run_dna(home, r.run_id))), None)
        if found is None:
            return None
        run_id, dna = found
    held = gain.held_out(home, run_id, "succeeded", dna)
    return {"run_id": run_id, "dna": dna, "current": bool(now["dna"])} | held


def _tokenization_cache(obj: Context) -> dict[str, int]:
    entries, size = cachedir.size(obj.config.home.cache)
    return {"entries": entries, "bytes": size, "limit_bytes": obj.config.trainer.cache_bytes}


def _recent(home: HomePaths, r: Row) -> dict[str, Any]:
    gate = run_gate(home, run_dna(home, r.run_id))
    return {
        "run_id": r.run_id,
        "state": r.state,
        "outcome": r.outcome,
        "version": r.version,
        "base_models": r.base_models,
        "finished_at": iso(r.finished_at),
        # a failed run's cause, the first line of its error (daemon/outcome.py), else null
        "reason": _cause(r.error) if r.state == "failed" else None,
        # why a certified run was not made current (certify/gate.py), else null
        "held_back": not_current_note(gate),
        # the gate's verdict at certification, each model's differences with their intervals
        # (null before the run was certified)
        "gate": gate,
    }


def _cause(error: str | None) -> str | None:
    lines = (error or "").strip().splitlines()
    return lines[0] if lines else None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# what a run does outside its training steps, as its progress names it (oneseekd/trainer/run.py)
PHASES = {
    "certifying": "certifying: hashing the inputs and outputs, writing the certified folder "
    "and the ledger",
    "certified": "certified as {dna}",
}


def describe_progress(p: dict[str, Any]) -> str:
    """`model (1/2) [#####.....] epoch 1/3, step 5/12, loss 4.365, 812 tok/s, ETA 2m49s`, with
    the phase under way outside the steps named first (`evaluating held-out: trained 3/12
    batches, ...`, trainer/phases.py), or the phase a run is in after its models
    (certifying, certified)."""
    if p.get("step") is None:
        phase = PHASES.get(str(p.get("state")), str(p.get("state") or "starting"))
        text = phase.format(**{"dna": "?", **p})
        if p.get("not_current"):  # the gate held it back (trainer/run.py)
            text += f", not made current: {p['not_current']}"
        return shown(text)
    done, total = int(p.get("step", 0)), max(int(p.get("steps", 1)), 1)
    filled = round(20 * min(done / total, 1.0))
    bar = "#" * filled + "." * (20 - filled)
    now = ""
    if p.get("phase"):
        count = f" {p.get('done')}/{p.get('total')} {p.get('unit')}" if p.get("total") else ""
        now = f"{p['phase']}{count}, "
    loss = f"loss {p.get('loss')}, " if p.get("loss") is not None else ""
    excluded = p.get("eta_excludes") or []
    return shown(
        f"{p.get('model')} ({p.get('model_index', 1)}/{p.get('models', 1)}) [{bar}] {now}"
        f"epoch {p.get('epoch')}/{p.get('epochs')}, step {done}/{total}, "
        f"{loss}{p.get('tokens_per_s')} tok/s, "
        f"ETA {_duration(float(p.get('eta_s', 0)))}"
        + (f" (not counting {', '.join(map(str, excluded))})" if excluded else "")
        + f" on {p.get('device', '?')}"
    )


MIN_WATCH_SECONDS = 0.5  # below it, --watch is refused: a refresh loop, not a busy one


@click.command("status")
@json_option
@click.option(
    "--watch",
    "watch",
    is_flag=False,
    flag_value=2.0,
    type=click.FloatRange(min=MIN_WATCH_SECONDS),
    default=None,
    metavar="SECONDS",
    help=(
        f"Refresh every SECONDS (default 2, at least {MIN_WATCH_SECONDS}) until Ctrl-C. On a "
        "terminal the screen is redrawn; piped, each refresh follows a time line; with --json, "
        "one compact JSON object per line (NDJSON)."
    ),
)
@click.pass_obj
def status_cmd(obj: Context, as_json: bool, watch: float | None) -> None:
    """Is the daemon alive, the catalog, the queue and the run in progress."""
    if watch is None:
        show_status(obj, as_json)
        return
    redraw = sys.stdout.isatty() and not as_json
    try:
        while True:
            if as_json:  # NDJSON: one object a line, for `jq` or a program reading the pipe
                click.echo(json.dumps(gather(obj), separators=(",", ":"), default=str))
            else:
                if redraw:
                    click.clear()
                else:  # piped: the refreshes stay apart, each with its time
                    click.echo(f"--- {human_text(utcnow())} ---")
                show_status(obj, False)
            sys.stdout.flush()
            time.sleep(watch)
    except KeyboardInterrupt:
        pass


def show_status(obj: Context, as_json: bool) -> None:
    data = gather(obj)
    if as_json:
        emit_json(data)
        return
    d, c = data["daemon"], data["catalog"]
    run = data["current_run"]
    if d["running"]:
        activity = str(d["activity"])
        if run and activity.startswith("training "):
            # the run's own line below is the one source of its progress on this screen
            activity = activity.split(":", 1)[0]
        click.echo(
            f"oneseekd: running (pid {d['pid']}), {shown(activity)}, "
            f"last heartbeat {human_age(d['heartbeat_at'])}"
        )
    else:
        home = shown(data["home"])
        click.echo(f"oneseekd: not running (start it with `oneseekd --home {home}`)")
    click.echo(f"home:     {shown(data['home'])}")
    click.echo(f"database: {shown(data['database'])}")
    by = c["by_state"]
    click.echo(
        f"catalog:  {c['models']} models ({by['ready']} ready, {by['incomplete']} "
        f"incomplete, {by['invalid']} invalid; {by['missing']} missing), {c['source']}"
    )
    for other, ready in c["other_hosts_ready"].items():
        click.echo(f"          {ready} ready on host {shown(other)}")
    now = data["current_model"]
    if now["dna"]:
        click.echo(f"current:  {shown(now['dna'])} (run {shown(now['run_id'] or '?')})")
    else:
        click.echo(f"current:  none ({shown(now['problem'])})")
    held = data["certified_figures"]
    if held and not held["current"]:
        click.echo(
            f"newest:   {shown(held['dna'])} (run {shown(held['run_id'])}), certified, not current"
        )
    for text in gain.lines(held) if held else []:
        click.echo(f"figures:  {text}")
    q = data["queue"]
    click.echo(f"queue:    {q['queued']} queued, {q['running']} running")
    for dl in data["downloads"]:
        what = f"{dl['name']} {dl['repository']}" + (
            f"@{dl['revision']}" if dl["revision"] not in (None, "main") else ""
        )
        doing = (
            progress_text(_Attrs(dl))
            if dl["status"] == "running"
            else "waiting for a daemon" + ("" if d["running"] else " (none runs here)")
        )
        cancel = ", cancel requested" if dl["cancel_requested"] else ""
        click.echo(f"download: {shown(what)}: {doing}{cancel}")
    if data["last_refusal"]:  # `rejected: typo.json 2 min ago — unknown field 'epoch'`
        click.echo(refusal_line(data["last_refusal"]))
    if run and not d["running"]:  # nobody trains it: no live bar, it waits for the daemon
        models = shown(", ".join(run["base_models"] or []))
        click.echo(
            f"waiting:  {shown(run['run_id'])} v{shown(run['version'])} ({models}), attempt "
            f"{run['attempts']}: the daemon is down; the run resumes from its last checkpoint "
            "when oneseekd starts"
        )
    elif run:
        models = shown(", ".join(run["base_models"] or []))
        click.echo(
            f"running:  {shown(run['run_id'])} v{shown(run['version'])} "
            f"({models}), attempt {run['attempts']}"
            + (", cancel requested" if run["cancel_requested"] else "")
        )
        progress = run["progress"] if isinstance(run["progress"], dict) else {}
        if progress:
            click.echo("          " + describe_progress(progress))
    for r in data["other_running_runs"]:
        models = shown(", ".join(r["base_models"] or []))
        click.echo(
            f"elsewhere: {shown(r['run_id'])} v{shown(r['version'])} ({models}) on host "
            f"{shown(r['host'])}, attempt {r['attempts']}"
        )
    for r in data["recent_runs"]:
        models = shown(", ".join(r["base_models"] or []))
        click.echo(
            f"recent:   {shown(r['run_id'])} {shown(r['state'])} v{shown(r['version'])} "
            f"({models}) {human_text(r['finished_at']) if r['finished_at'] else ''}"
            + (f" \u2014 {shown(r['reason'])}" if r["reason"] else "")
        )
        if r["held_back"]:
            click.echo(f"          not made current: {shown(r['held_back'])}")
        for note in interval_notes(r["gate"]):
            click.echo(f"          gate: {shown(note)}")
    t = data["tokenization_cache"]
    click.echo(
        f"tokenization cache: {t['entries']} dataset encoding{'' if t['entries'] == 1 else 's'}, "
        f"{_bytes(t['bytes'])} of {_bytes(t['limit_bytes'])} (cache/tokenized/, bounded by "
        "trainer.cache_bytes)"
    )


class _Attrs(dict[str, Any]):
    def __getattr__(self, name: str) -> Any:
        return self.get(name)


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

"""oneseekctl pull: a base model from the Hugging Face Hub, into the catalog (oneseekd/hub/).

The command is one more door to the `model_downloads` table: it inserts a row (source `pull`)
and follows it, as `train` follows a run, printing the bytes, the rate and the ETA until the
row ends. The daemon carries the download out beside training; with no daemon on the home,
this process claims the row and carries it out itself (the same code), so a daemon started
meanwhile never runs it twice. `--detach` returns at once with the row's id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from oneseekd.cli.context import Context, emit_json, json_option
from oneseekd.cli.display import shown
from oneseekd.errors import EXIT_REFUSED, OneseekError

if TYPE_CHECKING:  # `pull --help` imports none of the machinery
    from sqlalchemy import Engine

    from oneseekd.db.models import ModelDownload

POLL_SECONDS = 0.25
PRINT_SECONDS = 1.0
ENDED = ("succeeded", "failed", "cancelled")


class PullFailed(OneseekError):
    exit_code = EXIT_REFUSED


def human_size(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def progress_text(row: Any) -> str:
    """`model.safetensors: 1.2 MiB of 3.0 MiB (40%), 512.0 KiB/s, ETA 4s`: a download's
    progress as its row holds it (`status` shows the same line)."""
    total, done = row.bytes_total, row.bytes_done or 0
    p = row.progress if isinstance(row.progress, dict) else {}
    if not total:
        return "pinning the revision and listing its files"
    share = f" ({100 * done / total:.0f}%)" if total else ""
    rate = p.get("rate")
    eta = p.get("eta_s")
    parts = [f"{human_size(done)} of {human_size(total)}{share}"]
    if isinstance(rate, int | float) and rate > 0:
        parts.append(f"{human_size(rate)}/s")
    if isinstance(eta, int | float):
        parts.append(f"ETA {eta:.0f}s")
    file = p.get("file")
    return (f"{shown(str(file))}: " if file else "") + ", ".join(parts)


@click.command("pull")
@click.argument("ref", metavar="REPO[@REVISION]")
@click.option(
    "--name",
    "folder",
    metavar="FOLDER",
    help="The folder under base_models/ (default: the repository's name).",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Fetch pickled weights (*.bin, *.pt) of a repository without safetensors weights "
    "(a pickle can run code when loaded: only from a publisher you trust).",
)
@click.option("--detach", is_flag=True, help="Queue the download and return at once.")
@json_option
@click.pass_obj
def pull_cmd(
    obj: Context, ref: str, folder: str | None, allow_pickle: bool, detach: bool, as_json: bool
) -> None:
    """Download a base model from the Hugging Face Hub into the catalog, pinned and verified.

    REPO is ORG/NAME on the Hub (or the mirror in [hub] endpoint / HF_ENDPOINT); REVISION a
    branch, tag or commit (default main), resolved to a commit before the first byte. Only
    safetensors weights, config, tokenizer and generation files are fetched, each checked
    against the Hub's sha256 or git blob id; the folder appears in base_models/ only when
    whole. A killed or cancelled pull resumes from the bytes on disk. A gated or private
    repository needs a token in HOME/keys/hf_token (mode 0600).
    """
    from oneseekd.hub.downloads import check_folder
    from oneseekd.hub.repo import parse

    parsed = parse(ref)
    if folder is not None:
        folder = check_folder(folder)
    obj.create_database = obj.config.home.models.is_dir()  # a prepared home, like submit
    engine = obj.engine()
    # this host's daemon (or this process) downloads it: the model is wanted where it was pulled
    row_id = _insert(
        engine, parsed.repo, parsed.revision, folder, allow_pickle, obj.config.catalog.host
    )
    name = f"download-{row_id}"
    if detach:
        if as_json:
            emit_json({"download": row_id, "id": name, "status": "pending"})
        else:
            click.echo(
                f"Queued {name}: {shown(str(parsed))}. Follow it with `oneseekctl status`; "
                f"cancel it with `oneseekctl cancel {name}`."
            )
        return
    worker = None
    if not obj.daemon().held:
        if not as_json:  # with --json, stderr holds nothing but an error
            click.echo(
                f"No daemon runs on {shown(str(obj.config.home.root))}: downloading here.",
                err=True,
            )
        worker = _carry_out_here(obj, engine, row_id)
    row = _follow(engine, row_id, quiet=as_json, worker=worker)
    if as_json:
        emit_json(download_dict(row))
    if row.status == "succeeded":
        if not as_json:
            state, reason = _catalog_state(engine, row.model_key, obj.config.catalog.host)
            click.echo(
                f"Pulled {shown(str(parsed))} at commit {shown(str(row.commit))} into "
                f"base_models/{shown(folder or parsed.folder)}: catalog key "
                f"{shown(str(row.model_key))}, {shown(state)}"
                + (f" ({shown(reason)})." if reason else ".")
            )
        return
    if row.status == "cancelled":
        raise PullFailed(f"{name} was cancelled", ["what arrived is kept: pull again to resume"])
    raise PullFailed(row.error or f"{name} failed", list(row.problems or []))


def _insert(
    engine: Engine,
    repository: str,
    revision: str,
    folder: str | None,
    allow_pickle: bool,
    host: str,
) -> int:
    from oneseekd.db.engine import write_session
    from oneseekd.db.models import ModelDownload, utcnow

    with write_session(engine) as session:
        row = ModelDownload(
            repository=repository,
            revision=revision,
            folder=folder,
            allow_pickle=allow_pickle,
            status="pending",
            source="pull",
            host=host,
            cancel_requested=False,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return row.id


def _carry_out_here(obj: Context, engine: Engine, row_id: int) -> _Here | None:
    """Claim the row as this process and download in a thread; None when a daemon claimed
    it first."""
    from oneseekd.catalog.live import Catalog
    from oneseekd.catalog.scan import model_roots
    from oneseekd.certify.ledger import Ledger
    from oneseekd.hub.downloads import Downloads

    cfg = obj.config
    cfg.home.ensure()
    catalog = Catalog(engine, model_roots(cfg), cfg.catalog.settle_seconds, host=cfg.catalog.host)
    downloads = Downloads(engine, cfg, ledger=Ledger.for_home(engine, cfg.home), catalog=catalog)
    downloads.log = _Quiet()  # this command says how it ended itself, once
    job = downloads.claim(row_id)
    if job is None:
        return None
    thread = threading.Thread(target=downloads.carry_out, args=(job,), daemon=True)
    thread.start()
    return _Here(thread, job.cancel)


class _Quiet:
    """A logger that says nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Here:
    """A download this process carries out: its thread, and the flag that stops it."""

    def __init__(self, thread: threading.Thread, cancel: threading.Event) -> None:
        self.thread = thread
        self.cancel = cancel

    def is_alive(self) -> bool:
        return self.thread.is_alive()


def _catalog_state(engine: Engine, key: str | None, host: str) -> tuple[str, str | None]:
    """The installed model's state in the catalog, and why when it is not `ready`."""
    from sqlalchemy import select

    from oneseekd.db.engine import read_session
    from oneseekd.db.models import BaseModel

    with read_session(engine) as session:
        found = session.execute(
            select(BaseModel.state, BaseModel.state_reason).where(
                BaseModel.key == key, BaseModel.host == host
            )
        ).first()
    return ("not in the catalog", None) if found is None else (found[0], found[1])


def _read(engine: Engine, row_id: int) -> ModelDownload:
    from oneseekd.db.engine import read_session
    from oneseekd.db.models import ModelDownload

    with read_session(engine) as session:
        return session.get_one(ModelDownload, row_id)


def _follow(engine: Engine, row_id: int, *, quiet: bool, worker: _Here | None) -> ModelDownload:
    last_print = 0.0
    last_line = ""
    try:
        while True:
            row = _read(engine, row_id)
            if row.status in ENDED and (worker is None or not worker.is_alive()):
                if not quiet and row.status == "succeeded" and row.bytes_total:
                    click.echo(progress_text(row))
                return row
            now = time.monotonic()
            line = progress_text(row) if row.status == "running" else "waiting for the daemon"
            if not quiet and line != last_line and now - last_print >= PRINT_SECONDS:
                click.echo(line)
                last_print, last_line = now, line
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        if worker is None:
            click.echo(
                f"\nStopped following download-{row_id}; it goes on in the daemon "
                f"(`oneseekctl cancel download-{row_id}` stops it).",
                err=True,
            )
        else:  # this process was the download: it ends cancelled, its bytes kept
            worker.cancel.set()
            worker.thread.join(10.0)
            click.echo(
                f"\nCancelled download-{row_id}; what arrived is kept, and a pull of the same "
                "repository resumes from it.",
                err=True,
            )
        raise SystemExit(130) from None


def follow_request(
    engine: Engine, request_pk: int, stopped: Callable[[], bool], *, alive: Callable[[], bool]
) -> tuple[str, str | None, list[str]]:
    """Follow a request that waits for the download of a model it names (`train
    --base-models hf:ORG/NAME`), printing the download's progress as `pull` does, until the
    daemon decides it: (its status, its run's id, its problems). Returns ("pending", None, [])
    when `stopped()` or when no daemon serves the home any more (`alive()` false)."""

    from oneseekd.db.engine import read_session
    from oneseekd.db.models import ModelDownload, Run, TrainingRequest

    last_print = 0.0
    last_line = ""
    while not stopped() and alive():
        with read_session(engine) as session:
            request = session.get_one(TrainingRequest, request_pk)
            if request.status != "pending":
                run = session.get(Run, request.run_id) if request.run_id is not None else None
                return request.status, run.run_id if run else None, list(request.problems or [])
            row = session.get(ModelDownload, request.download_id or -1)
            line = (
                "waiting for the daemon"
                if row is None or row.status != "running"
                else f"download-{row.id} {shown(row.repository)}: {progress_text(row)}"
            )
        now = time.monotonic()
        if line != last_line and now - last_print >= PRINT_SECONDS:
            click.echo(line)
            last_print, last_line = now, line
        time.sleep(POLL_SECONDS)
    return "pending", None, []


DOWNLOAD_COLUMNS = (
    *("id", "repository", "revision", "folder", "allow_pickle", "status", "source", "host"),
    *("pid", "commit", "bytes_total", "bytes_done", "progress", "error", "problems"),
    *("cancel_requested", "model_key", "created_at", "started_at", "finished_at"),
    "heartbeat_at",
)


def download_dict(row: Any) -> dict[str, Any]:
    """A download's row as --json prints it (an ORM row or the light reader's), with its id
    as `cancel` takes it."""
    from datetime import datetime

    from oneseekd.cli.display import iso

    values = {n: getattr(row, n) for n in DOWNLOAD_COLUMNS}
    out = {n: iso(v) if isinstance(v, datetime) else v for n, v in values.items()}
    return {"name": f"download-{row.id}", **out}

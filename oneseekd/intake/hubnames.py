"""Requests that name a Hub repository in base_models: `hf:ORG/NAME[@REV]`.

Every door reaches this through the validator (accept.py), so a file, `submit`, `train` and an
INSERTed row get the same answer. A name whose model is already on the box is that catalog
model and nothing is downloaded: a folder a pull installed from the same repository (and the
same commit, when the revision named is a commit; a branch or tag other than `main` only through
a download of that revision), or a folder copied in by hand whose key is the repository's name
normalized. Any other name makes the request wait, `pending`, for a `model_downloads` row
(`source` = `request`; one already pending or running for the same repository and revision is
shared), named in the request's `download_id`. When that download ends the rows door decides
the request again (rows.py): through the whole validator once the model is in the catalog, or
rejected with the download's reason. Both rows are in the database, so a restart loses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.db.models import ModelDownload, TrainingRequest
from oneseekd.hub.repo import HubError, RepoRef, is_hub_name, parse
from oneseekd.intake.batch import Batch
from oneseekd.naming import normalize_model_name

LIVE = ("pending", "running")  # a download still under way: a request waits for it
SOURCE = "request"  # model_downloads.source of the rows made here
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class HubNames:
    """A request's base_models with each `hf:` name on the box replaced by its catalog key
    (the other names as given), the repositories still to download, and the problems."""

    names: list[str] = field(default_factory=list)
    missing: list[RepoRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def resolve(
    session: Session, batch: Batch, row: TrainingRequest, requested: list[str], host: str
) -> HubNames:
    """Read each `hf:` name of `requested` against the catalog and the download the request
    waited for (if any); nothing is written here. `host`: the deciding one, whose usable
    model wins when several folders hold the repository."""
    out = HubNames()
    awaited = session.get(ModelDownload, row.download_id) if row.download_id else None
    for name in requested:
        if not is_hub_name(name):
            out.names.append(name)
            continue
        try:
            ref = parse(name)
        except HubError as exc:
            out.problems.append(f"base_models: {exc.message}: {'; '.join(exc.problems)}")
            continue
        if awaited is not None and _same(awaited, ref) and awaited.status not in LIVE:
            key, problem = _outcome(awaited, ref, batch)
            if problem is not None:
                out.problems.append(problem)
            elif key is not None:
                out.names.append(key)
            continue
        key = on_the_box(session, batch, ref, host)
        if key is None:
            out.missing.append(ref)
        else:
            out.names.append(key)
    return out


def _same(download: ModelDownload, ref: RepoRef) -> bool:
    return (download.repository or "").lower() == ref.repo.lower() and (
        download.revision or "main"
    ) == ref.revision


def _outcome(download: ModelDownload, ref: RepoRef, batch: Batch) -> tuple[str | None, str | None]:
    """The catalog key an ended download gave the request, or the problem that rejects it:
    the download's own reason when it failed or was cancelled."""
    label = f"download-{download.id} of {ref}"
    if download.status == "succeeded":
        if download.model_key and download.model_key in batch.models:
            return download.model_key, None
        return None, (
            f"base_models: hf:{ref}: {label} succeeded, but its model "
            f"({download.model_key or 'no catalog key'}) is not in the catalog now: "
            "submit the request again to download it again"
        )
    reason = download.error or download.status
    more = [p for p in (download.problems or []) if isinstance(p, str)]
    return None, "; ".join([f"base_models: hf:{ref}: {label} {download.status}: {reason}", *more])


def on_the_box(session: Session, batch: Batch, ref: RepoRef, host: str) -> str | None:
    """The catalog key of a model already here for `ref`, or None: it must be downloaded."""
    repo = ref.repo.lower()
    pulled = [r for r in batch.rows if (r.source_repository or "").lower() == repo]
    if _COMMIT.fullmatch(ref.revision):
        keys = {r.key for r in pulled if r.source_commit == ref.revision}
    elif ref.revision == "main":
        keys = {r.key for r in pulled}
    else:  # a branch or tag: what a download of that very revision installed
        installed = session.scalars(
            select(ModelDownload.model_key).where(
                ModelDownload.status == "succeeded",
                ModelDownload.repository == ref.repo,
                ModelDownload.revision == ref.revision,
            )
        )
        keys = {k for k in installed if k} & {r.key for r in pulled}
    if keys:
        here = batch.usable.get(host, set())
        anywhere = set().union(*batch.usable.values()) if batch.usable else set()
        return min(keys, key=lambda k: (k not in here, k not in anywhere, k))
    # a folder copied in by hand, named as the repository (what an offline refusal advises)
    copied = batch.models.get(normalize_model_name(ref.folder))
    if copied is not None and copied.source_repository is None:
        return copied.key
    return None


def wait(session: Session, refs: list[RepoRef], now: datetime, host: str) -> list[ModelDownload]:
    """A download for each of `refs`: one already pending or running for the same repository
    and revision, else a new row (this host's daemon downloads it, as `pull` asks)."""
    rows: list[ModelDownload] = []
    for ref in refs:
        found = session.scalars(
            select(ModelDownload)
            .where(
                ModelDownload.repository == ref.repo,
                ModelDownload.revision == ref.revision,
                ModelDownload.status.in_(LIVE),
            )
            .order_by(ModelDownload.id)
        ).first()
        if found is None:
            found = ModelDownload(
                repository=ref.repo,
                revision=ref.revision,
                folder=None,
                allow_pickle=False,
                status="pending",
                source=SOURCE,
                host=host,
                cancel_requested=False,
                created_at=now,
            )
            session.add(found)
            session.flush()
        if all(r.id != found.id for r in rows):
            rows.append(found)
    return rows

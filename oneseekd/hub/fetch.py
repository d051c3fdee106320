"""Fetching a pinned repository into a staging folder, checking it, and moving it into place.

The staging folder (`models/.incoming/<FOLDER>@<commit>/`, which the catalog never scans) is
named by the commit, so a pull killed at any point resumes where it stopped: a file arrives
as `.parts/<name>.part`, fsynced as it grows, and the next try asks only for the bytes after
it (`Range`); a file already checked is recorded in `.oneseek-checked.json` and never fetched
or hashed again. A file found in place but not recorded (a kill between its move out of
`.parts/` and the record, or before the rename into base_models/, which clears the record) is
checked again from disk rather than fetched again. The transfer is our own ranged GET of
the Hub's `resolve/<commit>/<file>` (huggingface_hub's pins the revision): huggingface_hub
2.x downloads into a file unique to each process and never reuses one a killed process left,
so it cannot resume after a kill. Files stored with Xet on the Hub are served over the same URL.

Every file is checked as soon as it is whole: an LFS file's sha256, a small file's git blob id,
and every size, against the Hub's metadata taken when the revision was pinned. A file that
does not match is deleted and the pull fails naming it. Only when every file is checked is the
folder renamed into `models/oneseek-7b-zero/base_models/<FOLDER>/` (one rename on one file
system), with `.oneseek-pull.json` in it saying which repository, commit and sha256s it holds,
so the catalog never sees half a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from oneseekd.hub.pin import HubFile, Pinned, Retryable, hub_call
from oneseekd.hub.repo import HubError

CHECKED = ".oneseek-checked.json"  # in the staging folder: files whose bytes were checked
MANIFEST = ".oneseek-pull.json"  # in the installed folder: where it came from
PARTS = ".parts"  # in the staging folder: files still arriving
SYNC_EVERY = 64 * 2**20  # bytes between fsyncs of a growing part file
MARGIN_FRACTION = 0.02  # room kept free beyond the files themselves
MARGIN_MIN_BYTES = 256 * 2**20


@dataclass
class Transfer:
    """How far a pull is, for `status` and `pull`'s own line."""

    total_bytes: int
    done_bytes: int = 0
    file: str = ""
    started: float = 0.0
    fetched_bytes: int = 0  # arrived over the network in this pull (not found on disk)

    @property
    def rate(self) -> float:
        seconds = time.monotonic() - self.started
        return self.fetched_bytes / seconds if seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.rate
        return (self.total_bytes - self.done_bytes) / rate if rate > 0 else None


def staging_folder(incoming: Path, pinned: Pinned, folder: str) -> Path:
    return incoming / f"{folder}@{pinned.commit}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_id(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, expected: HubFile) -> str:
    """The file's sha256 when its bytes are the Hub's; HubError naming the mismatch if not."""
    size = path.stat().st_size
    problem = None
    if size != expected.size:
        problem = f"{size} bytes where the Hub lists {expected.size}"
    digest = sha256_of(path)
    if problem is None and expected.sha256 is not None and digest != expected.sha256:
        problem = f"sha256 {digest[:16]}… where the Hub lists {expected.sha256[:16]}…"
    if problem is None and expected.sha256 is None and expected.blob_id is not None:
        blob = git_blob_id(path)
        if blob != expected.blob_id:
            problem = f"git blob id {blob[:16]}… where the Hub lists {expected.blob_id[:16]}…"
    if problem is not None:
        raise HubError(
            f"{expected.name} arrived damaged: {problem}; it was deleted and nothing was installed",
            [
                "pull again (a mirror or proxy may have served a bad copy); if it repeats, the "
                "repository's metadata and file disagree: report it to its publisher"
            ],
        )
    return digest


def room_needed(pinned: Pinned, staging: Path) -> int:
    """Bytes still to arrive, plus a margin."""
    have = 0
    for f in pinned.files:
        for candidate in (staging / f.name, *_incomplete(staging, f.name)):
            if candidate.exists():
                have += min(candidate.stat().st_size, f.size)
    missing = max(pinned.total_bytes - have, 0)
    return missing + max(int(pinned.total_bytes * MARGIN_FRACTION), MARGIN_MIN_BYTES)


def _incomplete(staging: Path, name: str) -> list[Path]:
    return [_part(staging, name)]


def _part(staging: Path, name: str) -> Path:
    return staging / PARTS / f"{name}.part"


def check_room(pinned: Pinned, staging: Path, free_bytes: Callable[[Path], int]) -> None:
    need = room_needed(pinned, staging)
    free = free_bytes(staging)
    if free < need:
        raise HubError(
            f"not enough disk space for {pinned.ref}: it needs {_gib(need)} more "
            f"(files and a margin), and {staging.parent} has {_gib(free)} free",
            [f"free {_gib(need - free)} on that file system, then pull again"],
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _read_checked(staging: Path) -> dict[str, str]:
    try:
        data = json.loads((staging / CHECKED).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def download(
    url: str,
    staging: Path,
    name: str,
    size: int,
    *,
    token: str | None,
    on_bytes: Callable[[int, bool], None],
) -> Path:
    """Fetch one file into its part file, from the bytes already there; the part's path.
    `on_bytes(n, fetched)` counts bytes on disk: found there (False) or arrived (True)."""
    from huggingface_hub import get_session, hf_raise_for_status

    part = _part(staging, name)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not this file's bytes
        part.unlink()
        have = 0
    on_bytes(have, False)
    if have == size:
        return part
    headers = {"Range": f"bytes={have}-"} if have else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with get_session().stream(
        "GET", url, headers=headers, follow_redirects=True, timeout=60.0
    ) as response:
        if response.status_code >= 400:
            response.read()
            hf_raise_for_status(response)
        mode = "ab" if have and response.status_code == 206 else "wb"
        if mode == "wb" and have:
            on_bytes(-have, False)  # the server ignored the range: start again
        with part.open(mode) as out:
            unsynced = 0
            for chunk in response.iter_bytes():  # as it arrives: a drop loses nothing written
                out.write(chunk)
                unsynced += len(chunk)
                if unsynced >= SYNC_EVERY:
                    out.flush()
                    os.fsync(out.fileno())
                    unsynced = 0
                on_bytes(len(chunk), True)
            out.flush()
            os.fsync(out.fileno())
    got = part.stat().st_size
    if got != size:
        raise Retryable(f"{name} ended after {got} of {size} bytes")
    return part


def fetch(
    pinned: Pinned,
    staging: Path,
    *,
    endpoint: str,
    token: str | None,
    token_file: Path,
    progress: Callable[[Transfer], None] = lambda t: None,
    cancelled: Callable[[], bool] = lambda: False,
    attempts: int = 5,
    backoff_s: float = 2.0,
    free_bytes: Callable[[Path], int] = _free,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Fetch and check every file of `pinned` into `staging`; their sha256s by name."""
    staging.mkdir(parents=True, exist_ok=True)
    check_room(pinned, staging, free_bytes)
    checked = _read_checked(staging)
    transfer = Transfer(pinned.total_bytes, started=time.monotonic())
    transfer.done_bytes = sum(
        f.size for f in pinned.files if f.name in checked and (staging / f.name).is_file()
    )
    for f in pinned.files:
        if f.name in checked and (staging / f.name).is_file():
            continue
        if cancelled():
            raise Cancelled(f"the pull of {pinned.ref} was cancelled")
        transfer.file = f.name
        base = transfer.done_bytes
        if _checked_in_place(staging, f, checked):
            transfer.done_bytes = base + f.size
            progress(transfer)
            continue
        url = f"{endpoint.rstrip('/')}/{pinned.ref.repo}/resolve/{pinned.commit}/{quote(f.name)}"

        def on_bytes(n: int, fetched: bool, base: int = base, size: int = f.size) -> None:
            transfer.done_bytes = min(max(transfer.done_bytes + n, base), base + size)
            transfer.fetched_bytes += n if fetched else 0
            progress(transfer)
            if cancelled():
                raise Cancelled(f"the pull of {pinned.ref} was cancelled")

        for attempt in range(1, attempts + 1):
            transfer.done_bytes = base
            try:
                part = hub_call(
                    pinned.ref,
                    endpoint,
                    token_file,
                    lambda f=f, url=url, on_bytes=on_bytes: download(  # type: ignore[misc]
                        url, staging, f.name, f.size, token=token, on_bytes=on_bytes
                    ),
                )
                break
            except Retryable as exc:
                if attempt == attempts:
                    raise HubError(
                        f"the pull of {pinned.ref} failed after {attempts} tries: {exc}",
                        [
                            "check the network and HF_ENDPOINT / [hub] endpoint; what arrived "
                            "is kept and the next pull resumes from it"
                        ],
                    ) from None
                sleep(min(backoff_s * 2 ** (attempt - 1), 60.0))
        try:
            checked[f.name] = check_file(part, f)
        except HubError:
            part.unlink(missing_ok=True)
            raise
        final = staging / f.name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        _write_json(staging / CHECKED, checked)
        transfer.done_bytes = base + f.size
        progress(transfer)
    return {f.name: checked[f.name] for f in pinned.files}


def _checked_in_place(staging: Path, f: HubFile, checked: dict[str, str]) -> bool:
    """Whether a file already in place in the staging folder, whose check was not recorded,
    is the Hub's (then recorded); one that is not is deleted, to be fetched again."""
    final = staging / f.name
    if not final.is_file():
        return False
    try:
        checked[f.name] = check_file(final, f)
    except HubError:
        final.unlink(missing_ok=True)
        return False
    _write_json(staging / CHECKED, checked)
    return True


class Cancelled(HubError):
    """`oneseekctl cancel` asked the pull to stop; what arrived is kept for a later pull."""


def installed_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def install(pinned: Pinned, staging: Path, target: Path, sha256s: dict[str, str]) -> None:
    """Move a checked staging folder into the catalog's folder, in one rename."""
    manifest = {
        "repository": pinned.ref.repo,
        "revision": pinned.ref.revision,
        "commit": pinned.commit,
        "files": {f.name: {"size": f.size, "sha256": sha256s[f.name]} for f in pinned.files},
    }
    shutil.rmtree(staging / PARTS, ignore_errors=True)
    (staging / CHECKED).unlink(missing_ok=True)
    _write_json(staging / MANIFEST, manifest)
    if target.exists():
        raise HubError(
            f"{target} already exists and holds another model",
            [f"pull with --name to give {pinned.ref} another folder, or move that one away"],
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, target)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Where a request file ends: accepted/ or rejected/ (with NAME.error.json), under a name
that never overwrites another file and never exceeds what the file system takes."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
from pathlib import Path

from oneseekd.intake.incoming import Verdict

# The longest file name (bytes) kept as it is in .claimed/, accepted/ and rejected/: with a
# claim token (18), a number (.NN), ".error.json" and a temporary suffix it stays under the
# 255 bytes of every Linux file system. A longer one gets a short name; the row keeps the
# original (NAME.error.json and `oneseekctl show` name it).
MAX_KEPT_NAME = 200


def short_name(name: str) -> str:
    """name, or when its UTF-8 form is longer than MAX_KEPT_NAME bytes, its start plus a
    digest of the whole, ending in .json like the original."""
    raw = os.fsencode(name)
    if len(raw) <= MAX_KEPT_NAME:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return f"{os.fsdecode(raw[: MAX_KEPT_NAME - 32])}~{digest}.json"


def _same(a: Path, b: Path) -> bool:
    """Whether two names are one file (links themselves compared, never their targets)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _error_is_free(target: Path, request_pk: int) -> bool:
    """Whether target's NAME.error.json is absent or already explains this request."""
    try:
        body = json.loads(error_path(target).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False  # someone's, unreadable: leave it and take another name
    return isinstance(body, dict) and body.get("request") == request_pk


def place(src: Path, folder: Path, name: str, rejected: tuple[Verdict, str] | None = None) -> Path:
    """Move src into folder as name, or name.2, name.3 ... : never over an existing file
    (os.link fails on an existing target, so two writers cannot pick the same name).

    `rejected` (the verdict and the original name) writes NAME.error.json before the file is
    linked in, so no crash leaves a rejected file unexplained; a name whose error file
    explains another request is passed over. A target that already is src (a crash between
    link and unlink) is kept: one request never gets two verdict files. Links are moved as
    links, never followed."""
    name = short_name(name)
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    for n in itertools.count(1):
        candidate = name if n == 1 else f"{stem}.{n}{dot}{suffix}"
        target = folder / candidate
        if _same(src, target):
            if rejected is not None:
                write_error(target, *rejected)
            os.unlink(src)
            return target
        if os.path.lexists(target):
            continue
        if rejected is not None:
            if not _error_is_free(target, rejected[0].request_pk):
                continue
            write_error(target, *rejected)
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            continue
        os.unlink(src)
        return target
    raise AssertionError("unreachable")


def error_path(target: Path) -> Path:
    stem = target.name[: -len(".json")] if target.name.endswith(".json") else target.name
    return target.with_name(f"{stem}.error.json")


def write_error(target: Path, verdict: Verdict, original: str) -> None:
    body = {
        "file": original,
        "status": verdict.status,
        "request": verdict.request_pk,
        "problems": verdict.problems,
        "duplicate_of_run": verdict.duplicate_of,
        "fix": (
            verdict.fix or "this request repeats an earlier one: see problems"
            if verdict.status == "duplicate"
            else "correct every problem listed, then drop the file into requests/ again "
            "(write NAME.json.tmp, then rename it to NAME.json)"
        ),
    }
    path = error_path(target)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)

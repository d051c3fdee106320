"""A request as it arrived at a door, decoded; and the verdict it gets.

Files, `oneseekctl submit` and rows INSERTed by other programs arrive as bytes or text;
nothing here raises on bad input: what stops a request is a problem in its list.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

log = structlog.get_logger("oneseekd.intake")

MAX_REQUEST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    # queued | rejected | duplicate; or waiting: no verdict yet, the request stays `pending`
    # until the download of a model it names (`hf:ORG/NAME`) ends (hubnames.py)
    status: str
    request_pk: int
    run_id: str | None = None
    problems: list[str] = field(default_factory=list)
    duplicate_of: str | None = None
    fix: str | None = None  # a duplicate's: what to do to train again (NAME.error.json)
    download: int | None = None  # waiting: the model_downloads row it waits for
    waiting_for: str | None = None  # waiting: `download-N (ORG/NAME)`, for people

    @property
    def accepted(self) -> bool:
        return self.status == "queued"


def decode(raw: bytes) -> tuple[Any, list[str]]:
    """Bytes to a JSON value, or the problems that stop it."""
    if len(raw) > MAX_REQUEST_BYTES:
        return None, [
            f"the request is {len(raw)} bytes; a request is at most "
            f"{MAX_REQUEST_BYTES} bytes (1 MiB): put data in datasets/, not here"
        ]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [f"the request is not UTF-8 text (invalid byte at offset {exc.start})"]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [
            f"the request is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ]
    except RecursionError:
        return None, ["the request is nested too deeply to be a training request"]
    if not isinstance(data, dict):
        return None, [f"a request is a JSON object ({{...}}), got {type(data).__name__}"]
    if _has_lone_surrogate(data):
        return None, ["the request holds invalid Unicode (a lone surrogate \\ud800-\\udfff)"]
    return data, []


def _has_lone_surrogate(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(
            _has_lone_surrogate(k, depth + 1) or _has_lone_surrogate(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_lone_surrogate(v, depth + 1) for v in value)
    return False


def safe_text(text: str) -> str:
    """Text that any database accepts (file names may carry undecodable bytes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def new_run_id(now: datetime) -> str:
    return f"run-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class Incoming:
    """One request as it arrived, decoded (or with the problems that stopped decoding)."""

    payload: str
    data: Any
    problems: list[str]
    source: str
    source_name: str | None = None
    claim: str | None = None
    sha: str | None = None
    row_id: int | None = None

    @classmethod
    def of_bytes(
        cls, raw: bytes, source: str, source_name: str | None = None, claim: str | None = None
    ) -> Incoming:
        data, problems = decode(raw)
        payload = raw.decode("utf-8", "backslashreplace")[:MAX_REQUEST_BYTES]
        return cls(
            payload, data, problems, source, source_name, claim, hashlib.sha256(raw).hexdigest()
        )

    @classmethod
    def refused(
        cls, problem: str, source: str, source_name: str | None = None, claim: str | None = None
    ) -> Incoming:
        """A request that was not read at all (a file that is a link, a FIFO)."""
        return cls("", None, [problem], source, source_name, claim)

    @classmethod
    def of_row(cls, row_id: int, payload: Any) -> Incoming:
        """A row's payload. SQLite hands back bytes for a BLOB (what another program binds
        as bytes), and TEXT that is not UTF-8 with its bytes as surrogates (the engine's
        text_factory): both are decoded as UTF-8 exactly as a file's content is."""
        if isinstance(payload, bytes):
            data, problems = decode(payload)
            text = payload.decode("utf-8", "backslashreplace")[:MAX_REQUEST_BYTES]
        else:
            text = payload if isinstance(payload, str) else str(payload)
            try:  # TEXT that was not UTF-8 comes back with its bytes kept as surrogates
                raw = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = text.encode("utf-8", "backslashreplace")
            data, problems = decode(raw)
            text = raw.decode("utf-8", "backslashreplace")[:MAX_REQUEST_BYTES]
        return cls(text, data, problems, "database", row_id=row_id)


def log_verdict(verdict: Verdict, source: str, source_name: str | None) -> None:
    name = safe_text(source_name) if source_name else None
    if verdict.status == "waiting":
        log.info(
            "request_waiting",
            request=verdict.request_pk,
            source=source,
            name=name,
            download=verdict.download,
            detail=f"waiting for {verdict.waiting_for}: decided when it ends",
        )
        return
    if verdict.status == "queued":
        log.info(
            "request_accepted",
            request=verdict.request_pk,
            run_id=verdict.run_id,
            source=source,
            name=name,
        )
    else:
        # a refused file or row is news no one saw coming: a warning, in the daemon's journal
        # under any level. `submit` tells its own person at once on the terminal; its CLI logs
        # warnings to stderr, which would repeat the refusal there as a JSON line.
        refused = log.info if source == "submit" else log.warning
        refused(
            "request_" + ("rejected" if verdict.status == "rejected" else "duplicate"),
            request=verdict.request_pk,
            source=source,
            name=name,
            problems=verdict.problems,
        )

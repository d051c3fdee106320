"""A Hugging Face Hub on loopback, for the tests of `oneseekctl pull` (no network here).

It serves exactly what huggingface_hub calls to pin and fetch a model repository:

- `GET /api/models/{repo}/revision/{rev}?blobs=true`: the repository's commit for a revision
  and every file's size, git blob id and, for large files, the LFS sha256;
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: the file, with `X-Repo-Commit`, `ETag`,
  `X-Linked-Etag` and `X-Linked-Size`, and byte ranges (`Range: bytes=N-`) for a resume;
- the Hub's errors: 401 for a private repository without the right token, 404 with
  `X-Error-Code` RepoNotFound / RevisionNotFound / EntryNotFound.

Tests build repositories in memory (`HubServer.add`), move a branch (`move`), serve a file
corrupted (`corrupt`), cut a response short after N bytes (`cut_after`), hold one after N
bytes until the test releases it (`hold_after`, `holding`, `release`: a download stopped at a
known byte, to kill or cancel it there), and read what was served (`served_bytes`, `gets`,
`requests`). No real mirror server (olah) is used: none serves a local repository without
reaching huggingface.co first.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_THRESHOLD = 1024  # bytes; files this large or larger are LFS files, as on the Hub (10 MB)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # a private or gated repository: this token only


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.corrupted: set[tuple[str, str]] = set()  # (repo, file) served with a flipped byte
        self.cuts: dict[tuple[str, str], int] = {}  # (repo, file) -> bytes before a drop
        self.served_bytes: dict[str, int] = {}  # file name -> body bytes sent, all repos
        self.gets: list[list[Any]] = []  # [file name, first byte, bytes sent] of every GET
        self.bytes_per_second: float | None = None  # a slow link, for killing mid-file
        self.holds: dict[tuple[str, str], int] = {}  # (repo, file) -> bytes before a wait
        self.holding = threading.Event()  # a held GET has sent its bytes and waits
        self._released = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- the repositories -----------------------------------------------------------------
    def add(
        self, repo: str, files: dict[str, bytes], *, branch: str = "main", token: str | None = None
    ) -> str:
        """A new commit of `repo` on `branch`; its 40-hex commit id."""
        r = self.repos.setdefault(repo, Repo(token=token))
        listing = json.dumps(sorted((k, git_blob_id(v)) for k, v in files.items()))
        commit = hashlib.sha1(f"{repo}{listing}{len(r.commits)}".encode()).hexdigest()
        r.commits[commit] = dict(files)
        r.branches[branch] = commit
        return commit

    def move(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Push a new commit onto a branch (a revision moved after it was pinned)."""
        return self.add(repo, files, branch=branch, token=self.repos[repo].token)

    def corrupt(self, repo: str, name: str) -> None:
        self.corrupted.add((repo, name))

    def cut_after(self, repo: str, name: str, nbytes: int) -> None:
        """The next GET of the file drops the connection after nbytes of its body."""
        self.cuts[(repo, name)] = nbytes

    def hold_after(self, repo: str, name: str, nbytes: int) -> None:
        """The next GET of the file sends nbytes of its body (a multiple of 4096), sets
        `holding` and waits for `release()` (two minutes at most) before it sends the rest."""
        self.holds[(repo, name)] = nbytes
        self.holding.clear()
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    # --- serving --------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @contextmanager
    def running(self) -> Iterator[HubServer]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release()  # a held GET ends (its client may be gone)
            self._server.shutdown()
            self._server.server_close()

    def _resolve(self, repo: str, rev: str) -> str | None:
        r = self.repos[repo]
        if rev in r.commits:
            return rev
        return r.branches.get(rev)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None, text: str) -> None:
        body = json.dumps({"error": text}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _authorized(self, h: BaseHTTPRequestHandler, repo: str) -> bool:
        want = self.repos[repo].token
        return want is None or h.headers.get("Authorization") == f"Bearer {want}"

    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self.lock:
            self.requests.append((h.command, path))
        info = re.fullmatch(r"/api/models/(.+)/revision/(.+)", path)
        if info:
            return self._info(h, info.group(1), info.group(2))
        resolve = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
        if resolve:
            return self._file(h, *resolve.groups(), head=head)
        self._error(h, 404, None, f"no route {path}")

    def _repo_or_error(self, h: BaseHTTPRequestHandler, repo: str) -> bool:
        if repo not in self.repos:
            self._error(h, 404, "RepoNotFound", f"Repository Not Found for url: {h.path}")
            return False
        if not self._authorized(h, repo):
            self._error(h, 401, None, "Invalid credentials in Authorization header")
            return False
        return True

    def _info(self, h: BaseHTTPRequestHandler, repo: str, rev: str) -> None:
        if not self._repo_or_error(h, repo):
            return
        commit = self._resolve(repo, rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        siblings = []
        for name, data in sorted(self.repos[repo].commits[commit].items()):
            entry: dict[str, Any] = {"rfilename": name, "size": len(data)}
            entry["blobId"] = git_blob_id(data)
            if len(data) >= LFS_THRESHOLD:
                entry["lfs"] = {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            siblings.append(entry)
        body = json.dumps(
            {"id": repo, "modelId": repo, "sha": commit, "private": False, "siblings": siblings}
        ).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _file(
        self, h: BaseHTTPRequestHandler, repo: str, rev: str, name: str, *, head: bool
    ) -> None:
        if not self._repo_or_error(h, repo):
            return
        commit = self._resolve(repo, rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = self.repos[repo].commits[commit]
        if name not in files:
            return self._error(h, 404, "EntryNotFound", f"{name} does not exist at {rev}")
        data = files[name]
        lfs = len(data) >= LFS_THRESHOLD
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_id(data)
        if (repo, name) in self.corrupted:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if ranged and not head:
            start = int(ranged.group(1))
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", commit)
        h.send_header("ETag", f'"{etag}"')
        if lfs:
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(body) if not head else len(data)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if head:
            return
        cut = self.cuts.pop((repo, name), None)
        if cut is not None:
            body = body[:cut]
        hold = self.holds.pop((repo, name), None)
        get: list[Any] = [name, start, 0]
        with self.lock:
            self.gets.append(get)
        chunk = 4096
        for i in range(0, len(body), chunk):
            piece = body[i : i + chunk]
            if hold is not None and i >= hold:
                hold = None
                self.holding.set()
                self._released.wait(120)
            try:
                h.wfile.write(piece)
                h.wfile.flush()
            except OSError:  # the client went away (killed): what it was sent is counted
                return
            with self.lock:
                self.served_bytes[name] = self.served_bytes.get(name, 0) + len(piece)
                get[2] += len(piece)
            if self.bytes_per_second:
                time.sleep(len(piece) / self.bytes_per_second)
        if cut is not None:
            h.close_connection = True
            h.wfile.flush()
            h.connection.shutdown(2)

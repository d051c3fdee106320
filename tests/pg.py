"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary folder, a server on
loopback and a free port, one fresh database per test.

The binaries come from ONESEEK_PG_BIN, else the newest /usr/lib/postgresql/*/bin, else PATH.
Without them the PostgreSQL variants skip, unless ONESEEK_REQUIRE_POSTGRES=1 (CI), where a
missing PostgreSQL is an error. PostgreSQL refuses to run as root, so as root the cluster runs
as the `postgres` user (the distribution's packages create it).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ENV = "ONESEEK_REQUIRE_POSTGRES"
SUPERUSER = "oneseek"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def find_bin() -> Path | None:
    configured = os.environ.get("ONESEEK_PG_BIN")
    if configured:
        return Path(configured)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for folder in reversed(versions):
        if (folder / "initdb").exists():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError(
                    "running as root, and there is no `postgres` user to run PostgreSQL as"
                ) from exc
            os.chown(root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres", "postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_cluster(root: Path) -> Cluster | None:
    """A running cluster; None (skip) when PostgreSQL is not installed and not required."""
    bin_dir = find_bin()
    if bin_dir is None:
        if required():
            pytest.fail(f"{REQUIRE_ENV}=1 but no PostgreSQL binaries (initdb) were found")
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if required():
            pytest.fail(f"{REQUIRE_ENV}=1 but psycopg is not installed (pip install -e '.[dev]')")
        return None
    cluster = Cluster(bin_dir, root)
    cluster.start()
    return cluster


class Outsider:
    """Another program's connection to the database (autocommit, `?` placeholders), for tests
    that read or tamper with it the way an outsider would, on SQLite or PostgreSQL alike."""

    def __init__(self, url: str | None, sqlite_file: Path) -> None:
        self.url = url
        self.sqlite_file = sqlite_file
        self._conn: Any = None

    @property
    def postgresql(self) -> bool:
        return self.url is not None and self.url.startswith("postgresql")

    def _connect(self) -> Any:
        if self._conn is None:
            if self.postgresql:
                import psycopg

                assert self.url is not None
                self._conn = psycopg.connect(self.url.replace("+psycopg", ""), autocommit=True)
            else:
                self._conn = sqlite3.connect(self.sqlite_file, isolation_level=None, timeout=30)
        return self._conn

    def execute(self, sql: str, *args: object) -> Any:
        if self.postgresql:
            return self._connect().execute(sql.replace("?", "%s"), args)
        return self._connect().execute(sql, args)

    def mappings(self, sql: str, *args: object) -> list[dict[str, Any]]:
        cursor = self.execute(sql, *args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def foreign_keys_off(self) -> None:
        if self.postgresql:
            self.execute("SET session_replication_role = replica")
        else:
            self.execute("PRAGMA foreign_keys = OFF")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

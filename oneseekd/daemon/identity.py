"""Which daemon a `daemons` row is: its host name, home and machine, and whether one with this
host name is alive elsewhere.

A host name is the fleet's name for one daemon's catalog rows and claims (docs/scale-out.md).
A second daemon under the same name would take the first one's running run for its own, left
behind, and stop its trainer; so a daemon refuses to start while another row of its host name
has beaten its heart within a lease, unless that row is a predecessor on the same home and
machine (dead, since this daemon holds the home's lock) or names a process on this machine
that no longer exists.
"""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneseekd.daemon import procs
from oneseekd.db.models import Daemon
from oneseekd.errors import DaemonAlreadyRunning

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def machine_id() -> str:
    """This machine, as systemd names it (stable across reboots and host name changes); the
    kernel's host name where there is no machine id."""
    for path in MACHINE_ID_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return f"hostname:{socket.gethostname()}"


def is_predecessor(row: Daemon, home: str, machine: str) -> bool:
    """A daemon of this home on this machine: dead, since this one holds the home's lock."""
    return row.home == home and row.machine == machine


def live_namesake(
    session: Session, host: str, home: str, machine: str, now: datetime, window_s: float
) -> Daemon | None:
    """Another daemon with this host name that beat its heart within `window_s` and is not
    provably dead; None when there is none."""
    rows = session.scalars(
        select(Daemon)
        .where(
            Daemon.host == host,
            Daemon.stopped_at.is_(None),
            Daemon.heartbeat_at > now - timedelta(seconds=window_s),
        )
        .order_by(Daemon.heartbeat_at.desc())
    ).all()
    for row in rows:
        if is_predecessor(row, home, machine):
            continue
        if row.machine == machine and not procs.alive(row.pid):
            continue  # another home's daemon on this machine that died without a word
        return row
    return None


class HostNameInUse(DaemonAlreadyRunning):
    """A live daemon elsewhere has this daemon's host name."""


def refuse(host: str, other: Daemon, machine: str) -> HostNameInUse:
    where = "this machine" if other.machine == machine else f"machine {other.machine or '?'}"
    home = other.home or "an unrecorded home"
    return HostNameInUse(
        f"host name {host} is in use by a live daemon (pid {other.pid}, home {home}, on "
        f"{where}; its last heartbeat at {other.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)",
        [
            'give this host its own name: `[catalog] host = "..."` in oneseekd.toml or '
            "ONESEEK_HOST; names must be unique per database",
            "or stop that daemon first: two daemons under one name would stop each other's "
            "trainers",
        ],
    )

"""The rules that check oneseekd.toml's values (config.py's schema names one per setting): each
takes (value, where, home) and returns the value as the daemon uses it, or raises Problem worded
for the operator; config.py's validator gathers every problem at once. The vocabularies they
check against live here too; config.py keeps the defaults.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oneseekd.spec import REPORTERS  # the request field's vocabulary: where curves may go

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_HOST_LENGTH = 255
METRICS_LOOPBACK = "127.0.0.1"  # [metrics] listen given as a bare port binds here


class Problem(Exception):
    """A value a rule refused, worded for the operator."""


Rule = Callable[[Any, str, Path], Any]  # (value, where, home) -> the value as the daemon uses it


def seconds(minimum: float) -> Rule:
    def check(value: Any, where: str, _home: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Problem(f"{where} must be a number of seconds, got {value!r}")
        if value < minimum:
            raise Problem(f"{where} must be at least {minimum:g}, got {value!r}")
        return float(value)

    return check


def whole(minimum: int, what: str) -> Rule:
    def check(value: Any, where: str, _home: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise Problem(f"{where} must be {what}, got {value!r}")
        return value

    return check


def boolean(value: Any, where: str, _home: Path) -> bool:
    if not isinstance(value, bool):
        raise Problem(f"{where} must be true or false, got {value!r}")
    return value


def log_level(value: Any, where: str, _home: Path) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise Problem(f"{where} must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.lower()


def host(value: Any, where: str, _home: Path) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_HOST_LENGTH:
        raise Problem(
            f"{where} must be a host name of 1 to {MAX_HOST_LENGTH} characters, got {value!r}"
        )
    return value.strip()


def command(value: Any, where: str, _home: Path) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(c, str) and c for c in value)):
        raise Problem(f"{where} must be a non-empty list of strings (an argv), got {value!r}")
    return tuple(value)


def roots(value: Any, where: str, home: Path) -> tuple[Path, ...]:
    """Folders, relative to the home when not absolute; each must exist."""
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise Problem(f"{where} must be a list of folder paths, got {value!r}")
    roots: list[Path] = []
    problems: list[str] = []
    for raw in value:
        root = Path(raw).expanduser()
        root = root if root.is_absolute() else home / root
        if root.is_dir():
            roots.append(root)
        else:
            problems.append(
                f"{where}: {raw!r} is not a folder ({root}); create it or remove it from the list"
            )
    if problems:
        raise Problem(*problems)
    return tuple(roots)


def endpoint(value: Any, where: str, _home: Path) -> str:
    if (
        not isinstance(value, str)
        or not value.strip().startswith(("http://", "https://"))
        or any(c.isspace() for c in value.strip())
    ):
        raise Problem(
            f"{where} must be the URL of the Hub or of a mirror (http:// or https://), "
            f"got {value!r}"
        )
    return value.strip().rstrip("/")


_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*$")


def listen(value: Any, where: str, _home: Path) -> tuple[str, int] | None:
    """`HOST:PORT` (`[::1]:9464` for IPv6), or a bare port on loopback; "" turns it off. A
    name is resolved when the daemon binds, not here (the configuration never asks DNS)."""
    example = (
        f'e.g. "{METRICS_LOOPBACK}:9464" for this host only, "0.0.0.0:9464" for every '
        'interface, "[::1]:9464" for IPv6 loopback'
    )
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise Problem(f"{where} must be HOST:PORT as a string ({example}), got {value!r}")
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        host, port = METRICS_LOOPBACK, text
    elif text.startswith("["):
        host, closed, port = text[1:].partition("]:")
        if closed and not _is_ip(host, 6):
            raise Problem(f"{where}: {host!r} is not an IPv6 address ({example}), got {value!r}")
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            host, port = text, ""  # no port: said below
        elif ":" in host:
            raise Problem(
                f'{where}: an IPv6 address goes in brackets, as in "[{host}]:{port}", got {value!r}'
            )
        if colon and not host:
            raise Problem(f"{where} must name the address to listen on ({example}), got {value!r}")
        if not (_is_ip(host, 4) or _HOST_NAME.match(host)):
            raise Problem(f"{where}: {host!r} is neither an IP address nor a host name ({example})")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        # 0: any free port, named in the log's metrics_listening (for tests, not Prometheus)
        raise Problem(f"{where} must end in a port from 1 to 65535 ({example}), got {value!r}")
    return host, int(port)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def reporters(value: Any, where: str, _home: Path) -> tuple[str, ...]:
    """[trainer] report_to: the reporters a run writes to when its request names none."""
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise Problem(f'{where} must be a list of reporters like ["tensorboard"], got {value!r}')
    unknown = [r for r in value if r not in REPORTERS]
    if unknown:
        raise Problem(
            f"{where}: {unknown[0]!r} is not a reporter oneseekd writes"
            f"{did_you_mean(unknown[0], set(REPORTERS))} (known: {', '.join(REPORTERS)})"
        )
    return tuple(dict.fromkeys(value))


def did_you_mean(key: str, known: set[str]) -> str:
    """' (did you mean 'settle_seconds'?)' for a close known setting, else ''."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

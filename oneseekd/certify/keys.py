"""The ledger's signing key and the public keys pinned outside the database.

The private key lives in HOME/keys/ledger_ed25519.pem (mode 0600). Its public key is pinned at
first use: HOME/keys/oneseekd.pub (PEM) names the key the daemon must sign with, and
HOME/keys/trusted_keys lists every key whose signatures `ledger verify` accepts, one
`<key_id> <public key hex>` a line. A key that is only in the database's `ledger_keys` table is
not trusted: whoever can write the database could add one. The daemon refuses to start when
its private key is not the pinned one (a replaced key file), with the fix.

A deliberate change of key: move oneseekd.pub away; the next start pins the new key and adds
it to trusted_keys, where the old key stays, so the events it signed keep verifying.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import structlog

from oneseekd.certify.ed25519 import KeyFormatError, PrivateKey, PublicKey
from oneseekd.certify.staging import fsync_dir
from oneseekd.errors import OneseekError
from oneseekd.home import HomePaths

log = structlog.get_logger("oneseekd.ledger")

KEY_FILE = "ledger_ed25519.pem"
PUBLIC_FILE = "oneseekd.pub"
TRUSTED_FILE = "trusted_keys"


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def raw_public(key: PrivateKey | PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, PrivateKey) else key
    return public.raw


def key_path(paths: HomePaths) -> Path:
    return paths.root / "keys" / KEY_FILE


def public_path(paths: HomePaths) -> Path:
    return paths.root / "keys" / PUBLIC_FILE


def trusted_path(paths: HomePaths) -> Path:
    return paths.root / "keys" / TRUSTED_FILE


def load_or_create_key(paths: HomePaths) -> PrivateKey:
    """The home's signing key, created on first use and pinned; one open to other users, or
    one that is not the pinned key, is refused."""
    path = key_path(paths)
    if not path.exists():
        _create_key(path)
    key = _load_key(path)
    _check_pin(paths, key)
    return key


# --- pinning -----------------------------------------------------------------------------------
def trusted_keys(paths: HomePaths) -> tuple[dict[str, PublicKey], list[str]]:
    """key_id -> public key of every pinned key, and the problems of lines that are not."""
    keys: dict[str, PublicKey] = {}
    problems: list[str] = []
    path = trusted_path(paths)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return keys, problems
    except (OSError, UnicodeDecodeError) as exc:
        return keys, [f"keys/{TRUSTED_FILE} cannot be read: {exc}"]
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key_id, public_hex = line.split()
            raw = bytes.fromhex(public_hex)
            key = PublicKey(raw)
        except ValueError:  # KeyFormatError is one
            problems.append(
                f"keys/{TRUSTED_FILE} line {number} is not `<key_id> <Ed25519 public key hex>`"
            )
            continue
        if key_id_of(raw) != key_id:
            problems.append(
                f"keys/{TRUSTED_FILE} line {number}: {key_id[:16]} is not the sha256 of its key"
            )
            continue
        keys[key_id] = key
    return keys, problems


def pinned_key_id(paths: HomePaths) -> str | None:
    """The key_id of keys/oneseekd.pub, or None when nothing is pinned yet."""
    try:
        pem = public_path(paths).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OneseekError(
            f"cannot read the pinned public key {public_path(paths)}: {exc}"
        ) from exc
    try:
        key = PublicKey.from_pem(pem)
    except KeyFormatError as exc:
        raise OneseekError(
            f"the pinned public key {public_path(paths)} cannot be read: {exc}",
            ["restore it from a backup (or from `oneseekctl ledger tip`'s key_id elsewhere)"],
        ) from exc
    return key_id_of(key.raw)


def _check_pin(paths: HomePaths, key: PrivateKey) -> None:
    raw = raw_public(key)
    key_id = key_id_of(raw)
    pinned = pinned_key_id(paths)
    if pinned is None:
        _pin(paths, key, key_id, raw)
        return
    if pinned != key_id:
        raise OneseekError(
            f"the ledger signing key {key_path(paths)} (key {key_id[:16]}) is not the key "
            f"pinned in {public_path(paths)} (key {pinned[:16]}): the key file was replaced",
            [
                f"restore {key_path(paths)} from a backup; nothing signed with another key "
                "verifies",
                f"to sign with a new key on purpose, move {public_path(paths)} away: the next "
                f"start pins the new key, and keys/{TRUSTED_FILE} keeps the old one for the "
                "events it signed",
            ],
        )
    trusted, _ = trusted_keys(paths)
    if key_id not in trusted:  # a pin from before trusted_keys, or the file lost a line
        _trust(paths, key_id, raw)


def _pin(paths: HomePaths, key: PrivateKey, key_id: str, raw: bytes) -> None:
    pem = key.public_key().to_pem()
    _trust(paths, key_id, raw)
    _replace(public_path(paths), pem, 0o644)
    log.info("ledger_key_pinned", key_id=key_id, path=str(public_path(paths)))


def _trust(paths: HomePaths, key_id: str, raw: bytes) -> None:
    """Append a key to trusted_keys (whole, fsynced: a reader never sees half a line)."""
    path = trusted_path(paths)
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = "# public keys whose ledger signatures `oneseekctl ledger verify` accepts\n"
    _replace(path, f"{old}{key_id} {raw.hex()}\n".encode(), 0o644)


def _replace(path: Path, data: bytes, mode: int) -> None:
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)


# --- the private key ---------------------------------------------------------------------------
def _create_key(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    pem = PrivateKey.generate().to_pem()
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # unlike rename, never replaces a key another process just wrote
        except FileExistsError:
            return  # another process was first: its key is the home's key
        except OSError:  # a file system without hard links
            if path.exists():
                return
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    log.info("ledger_key_created", path=str(path))


def _load_key(path: Path) -> PrivateKey:
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise OneseekError(
                f"the ledger signing key {path} is open to other users (mode {mode:04o})",
                [f"run `chmod 600 {path}` so that only the daemon's user can read it"],
            )
        return PrivateKey.from_pem(path.read_bytes())
    except OSError as exc:
        raise OneseekError(f"cannot read the ledger signing key {path}: {exc.strerror}") from exc
    except KeyFormatError as exc:
        raise OneseekError(
            f"the ledger signing key {path} cannot be used: {exc}",
            [
                "restore the file from a backup, or move it away to sign with a new key "
                "(events signed so far keep verifying with their recorded public key)"
            ],
        ) from exc

"""The Hub token for gated and private repositories: HOME/keys/hf_token, the daemon's own.

Read from that file only (never ~/.cache/huggingface/token or HF_TOKEN, which belong to
whoever else uses the machine), refused when others may read it, never logged or shown.
"""

from __future__ import annotations

import stat
from pathlib import Path

from oneseekd.errors import ConfigError


def read_token(path: Path) -> str | None:
    """The token in `path`; None when there is no such file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} can be read or written by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "the token in it was not used",
            [f"chmod 600 {path}"],
        )
    token = path.read_text(encoding="utf-8", errors="replace").strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError(
            f"{path} does not hold one token",
            [f"write the token alone in {path} (hf_…), then chmod 600 {path}"],
        )
    return token

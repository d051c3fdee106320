"""Whether this CPU computes bf16 natively, without importing torch where the answer is
already known: forced by ONESEEK_CPU_BF16, or remembered in the home from an earlier probe
on this host since its last boot.

oneDNN's answer (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`) costs an import of torch,
about a second. `oneseekctl submit --dry-run` needs the answer (the base is held in bf16
where `precision: auto` picks it), and it should answer in well under two seconds, so the
answer is kept in `cache/host.json` keyed by the host's name, its boot and the torch version:
a CPU does not change without a reboot, and another torch may answer otherwise.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# forces the CPU's native-bf16 answer: "1" as if it had AVX512-BF16 or AMX, "0" as if not
ENV_CPU_BF16 = "ONESEEK_CPU_BF16"
# the memo's name in the home's cache/
MEMO = "host.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class PrecisionRefused(ValueError):
    """A precision this device cannot train in; the message names the fix."""


def forced(env: Mapping[str, str]) -> bool | None:
    """ONESEEK_CPU_BF16's answer, None when it is unset or blank."""
    value = env.get(ENV_CPU_BF16, "").strip()
    if value in ("1", "0"):
        return value == "1"
    if value:
        raise PrecisionRefused(
            f"{ENV_CPU_BF16}={value!r} is neither 1 nor 0: set {ENV_CPU_BF16}=1 to treat this "
            f"CPU as computing bf16 natively, {ENV_CPU_BF16}=0 as not, or unset it to ask the CPU"
        )
    return None


def cpu_bf16(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this CPU computes bf16 natively, as oneDNN (mkldnn) reports it, unless
    ONESEEK_CPU_BF16 forces the answer."""
    answer = forced(env)
    if answer is not None:
        return answer
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def host_key() -> str | None:
    """This host since its last boot, with the torch that answers; None where unknown."""
    try:
        boot = BOOT_ID.read_text(encoding="ascii").strip()
        torch_version = version("torch")
    except (OSError, PackageNotFoundError):
        return None
    return f"{socket.gethostname()} {boot} torch {torch_version}"


def remembered_cpu_bf16(memo: Path, env: Mapping[str, str] = os.environ) -> bool:
    """cpu_bf16, from `memo` when this host answered since its last boot (torch is then not
    imported), else probed and written there. A memo that cannot be read or written is only
    a slower answer, never a wrong one."""
    answer = forced(env)
    if answer is not None:
        return answer
    key = host_key()
    known = read_memo(memo)
    if key is not None and isinstance(known.get(key), dict):
        value = known[key].get("cpu_bf16")
        if isinstance(value, bool):
            return value
    answer = cpu_bf16(env)
    if key is not None:
        # one host per key: older boots of this host are dropped, other hosts' kept (a home
        # on shared storage)
        host = socket.gethostname() + " "
        kept = {k: v for k, v in known.items() if not k.startswith(host)}
        write_atomically(memo, {**kept, key: {"cpu_bf16": answer}})
    return answer


def read_memo(path: Path) -> dict[str, Any]:
    """A memo's JSON object; empty when it is missing, unreadable or not an object (a memo is
    only a faster answer, never the only one)."""
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def write_atomically(path: Path, value: object) -> None:
    """`value` as JSON at `path`, whole or not at all; a failure to write is ignored (the
    callers only remember what they can find out again)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)

"""bitsandbytes imported without its lookup of a kernel on the Hub.

On a CPU with AVX512-BF16, importing bitsandbytes 0.50 asks the `kernels` package for
`kernels-community/quantization-bitsandbytes` (a DNS lookup of the Hub at import time) and,
when that fails, logs "Failed to load CPU gemm_4bit_forward from kernels-community … Set
trust_remote_code=True …". peft imports bitsandbytes whenever it is installed, so every run
on such a CPU reached for the network and gave the operator advice to trust remote code.

A trainer reaches for nothing: while bitsandbytes imports, `kernels` is made unimportable (its
lookup then fails at once, without a connection) and that one warning is dropped;
bitsandbytes then computes with its own kernels, as it did whenever the lookup failed. Call
`import_bitsandbytes()` before anything imports peft or bitsandbytes (the trainer's entry,
the test suite's collection, the benches).

A run that neither quantizes nor steps with an 8-bit optimizer never touches bitsandbytes,
and its import (with torch's compiler stack, which it pulls in) costs about a second of each
trainer start. Such a trainer calls `hide_bitsandbytes()` first: peft then finds none and
imports none.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

# the logger of bitsandbytes/backends/cpu/ops.py and the start of its warning
CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
HUB_FAILURE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropHubFailure(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(HUB_FAILURE)


_hidden = {"now": False}


def hide_bitsandbytes() -> None:
    """Keep bitsandbytes out of this process (a run that does not use it): `import
    bitsandbytes` fails, and peft's check of whether it is installed says no."""
    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
        _hidden["now"] = True


def import_bitsandbytes() -> bool:
    """Import bitsandbytes, if installed, with its Hub kernel lookup off; whether it is
    importable. Does nothing once bitsandbytes is imported (by this or anything else)."""
    if _hidden["now"]:
        raise RuntimeError(
            "bitsandbytes was kept out of this trainer (hide_bitsandbytes), yet the run asks "
            "for it: RunSpec.uses_bitsandbytes must name every option that needs it"
        )
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"] is not None
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    had_kernels = "kernels" in sys.modules
    kernels = sys.modules.get("kernels")
    sys.modules["kernels"] = None  # type: ignore[assignment]  # `import kernels` raises
    logger = logging.getLogger(CPU_OPS_LOGGER)
    dropped = _DropHubFailure()
    logger.addFilter(dropped)
    try:
        importlib.import_module("bitsandbytes")
    except ImportError:
        return False
    finally:
        logger.removeFilter(dropped)
        if had_kernels:
            sys.modules["kernels"] = kernels  # type: ignore[assignment]
        else:
            del sys.modules["kernels"]
    return True

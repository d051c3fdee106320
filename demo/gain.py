"""The demo's last screen: what the run gained on its held-out records, model by model,
`oneseekctl show RUN --json | python demo/gain.py`.

The lines `show` and `status` print (oneseekd/cli/gain.py), from the figures `show --json`
read out of the run's certified folder: base -> trained bits per byte, the change in percent
with the gate's interval, and next-token accuracy. It reads `show --json`, as any script may.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from oneseekd.cli.gain import lines


def screen(run: dict[str, Any]) -> list[str]:
    """The last screen's lines for one run, as `oneseekctl show RUN --json` describes it."""
    return [
        f"== what {run.get('run_id')} gained on held-out data it never trained on "
        "(base -> trained)",
        *lines(run),
    ]


def main() -> None:
    for line in screen(json.load(sys.stdin)):
        print(line)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""CivicAI's training start, handed to oneseekd.

Put this file in place of a CivicAI checkout's scripts/train_dna_v2.py. The admin panel runs it
exactly as before (its flags, BASE_MODELS, RUN_ID, cwd = the project root); it becomes
`oneseekctl --home <project root> train ...`, which queues the run with the daemon serving that
folder, prints the lines the admin panel parses and exits as the old script did. ONESEEK_HOME
overrides the home; ONESEEKCTL names the oneseekctl to run (default: the one on PATH).
"""

import os
import sys
from pathlib import Path

home = os.environ.get("ONESEEK_HOME") or str(Path(__file__).resolve().parent.parent)
ctl = os.environ.get("ONESEEKCTL", "oneseekctl")
# exec: the admin panel's stop signal reaches oneseekctl itself, which cancels the run
os.execvp(ctl, [ctl, "--home", home, "train", *sys.argv[1:]])

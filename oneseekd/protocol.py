"""How the supervisor and the trainer child talk: arguments, environment, exit codes.

Kept free of torch so that both sides (and the fake trainers of the tests) share it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # anything unexpected: the run fails with the tail of the child's log
EXIT_REFUSED = 65  # the run cannot be done as asked (bad model or data): fails, not retried
EXIT_STOPPED = 75  # stopped on SIGTERM after writing a checkpoint: resumable
EXIT_OOM = 76  # out of memory (CUDA or host)

ENV_RUN_ID = "ONESEEK_RUN_ID"
ENV_ATTEMPT = "ONESEEK_ATTEMPT"
ENV_RESUME = "ONESEEK_RESUME"  # "1" when an earlier attempt of the run was interrupted
ENV_PARENT_PID = "ONESEEK_SUPERVISOR_PID"  # the child stops when this process goes away
ENV_HOST = "ONESEEK_HOST"  # whose catalog rows the child trains from

OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError")

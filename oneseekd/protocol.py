"""How the supervisor and the trainer child talk: arguments, environment, exit codes.

Kept free of torch so that both sides (and the fake trainers of the tests) share it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # anything unexpected: the run fails with the tail of the child's log
EXIT_REFUSED = 65  # the run cannot be done as asked (bad model or data): fails, not retried
EXIT_STOPPED = 75  # stopped on SIGTERM after writing a checkpoint: resumable
EXIT_OOM = 76  # out of memory (CUDA or host)
EXIT_RELAUNCH = 77  # the next model asks for another number of processes: start it again

ENV_RUN_ID = "ONESEEK_RUN_ID"
ENV_ATTEMPT = "ONESEEK_ATTEMPT"
ENV_PARENT_PID = "ONESEEK_SUPERVISOR_PID"  # the child stops when this process goes away
# multi-process runs (started through torchrun): {model key: processes}, JSON
ENV_WORLD_SIZES = "ONESEEK_WORLD_SIZES"
ENV_COLLECTIVE_TIMEOUT = "ONESEEK_COLLECTIVE_TIMEOUT"  # seconds a rank waits on the others
# torchrun turns every worker failure into its own exit status 1, so each rank writes the
# status it meant to this folder as rank-<n>; the supervisor reads them back
ENV_EXIT_DIR = "ONESEEK_EXIT_DIR"
ENV_HOST = "ONESEEK_HOST"  # whose catalog rows the child trains from
# [trainer] lease_seconds: the child's database sessions are bounded by it on PostgreSQL, as
# the daemon's are (db/engine.session_limits), so a frozen trainer never holds the run's row
ENV_LEASE_SECONDS = "ONESEEK_LEASE_SECONDS"

OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "MemoryError")

# when ranks end differently, the one that explains the run best wins
_PRECEDENCE = (EXIT_OOM, EXIT_REFUSED, EXIT_ERROR, EXIT_STOPPED, EXIT_RELAUNCH)


def combined_exit(rank_codes: dict[int, int], world_size: int, agent_code: int) -> int:
    """The status of a multi-process trainer: what its ranks wrote, else the launcher's."""
    codes = set(rank_codes.values())
    for code in _PRECEDENCE:
        if code in codes:
            return code
    if len(rank_codes) == world_size and codes == {EXIT_OK}:
        return EXIT_OK
    if codes - {EXIT_OK}:  # an exit status the protocol does not name
        return max(codes - {EXIT_OK})
    return agent_code if agent_code != EXIT_OK else EXIT_ERROR

"""The run state machine: the only writer of run states and events, and the only claim check.

states.py holds the transitions and the check every fenced write makes (the daemon's and its
trainer's); claims.py which daemon trains a run, and for how long unless renewed. Callers use
this package's names: `from oneseekd import queue; queue.claim_next(...)`.
"""

from oneseekd.errors import RunNotFound as RunNotFound  # raised here, defined light
from oneseekd.queue.claims import Claimant as Claimant
from oneseekd.queue.claims import Expired as Expired
from oneseekd.queue.claims import Launchable as Launchable
from oneseekd.queue.claims import adopt as adopt
from oneseekd.queue.claims import claim_next as claim_next
from oneseekd.queue.claims import expired_runs as expired_runs
from oneseekd.queue.claims import other_hosts_alive as other_hosts_alive
from oneseekd.queue.claims import take_over as take_over
from oneseekd.queue.states import TRANSITIONS as TRANSITIONS
from oneseekd.queue.states import CancelResult as CancelResult
from oneseekd.queue.states import ClaimLost as ClaimLost
from oneseekd.queue.states import Ending as Ending
from oneseekd.queue.states import cancel_queued_flagged as cancel_queued_flagged
from oneseekd.queue.states import check_claim as check_claim
from oneseekd.queue.states import find_run as find_run
from oneseekd.queue.states import finish as finish
from oneseekd.queue.states import heartbeat as heartbeat
from oneseekd.queue.states import queue_counts as queue_counts
from oneseekd.queue.states import queued as queued
from oneseekd.queue.states import record_attempt_end as record_attempt_end
from oneseekd.queue.states import request_cancel as request_cancel
from oneseekd.queue.states import running_run as running_run
from oneseekd.queue.states import set_child as set_child

"""The daemon's rooms: the service (wiring, signals, sd_notify, the loop), the supervisor of
one trainer child, how a child is launched, process trees, how an exit becomes an outcome, and
recovery (resume, takeover, leases). Nothing here imports torch (docs/architecture.md)."""

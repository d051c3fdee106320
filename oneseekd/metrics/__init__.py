"""The daemon's Prometheus endpoint, `[metrics] listen` (docs/operations.md, "Metrics").

Off by default, and then nothing here is imported: the daemon imports oneseekd.metrics.server
(and prometheus_client with it) only when the setting is on. Three sources, each cheap at scrape
time:

- events.py: counters of the events the daemon already logs (requests by door and verdict,
  runs started and ended, downloads ended, log lines by level), fed by a structlog processor
  (oneseekd.logs.configure_logging's `observer`), so no intake or queue code counts anything;
- snapshot.py: the catalog, the queue, the running run, the last certification, the ledger
  and the downloads, read from the database by a thread of their own every
  `[metrics] refresh_seconds`, with the same queries as `oneseekctl status`
  (oneseekd/cli/read.py);
- the loop's own marks: when the doors were last polled without an error and when the catalog
  was last scanned in full, so an alert can fire on a stalled loop.

A scrape reads only what is already in memory: it never waits on the database, and nothing here
imports torch. A metric that has no value yet is absent, never a made-up 0.
"""

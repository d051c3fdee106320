"""The run spec's room, without torch: what intake, `oneseekctl` and the trainer all read.
For now the memory estimate (`memory.py`) and the plan built on it from config.json
(`plan.py`); the request's fields and the host check are still
`oneseekd/runspec.py` and `oneseekd/runcheck.py`."""

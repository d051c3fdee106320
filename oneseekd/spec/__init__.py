"""The run spec's room, without torch: what intake, `oneseekctl` and the trainer all read.
For now the memory plan (`memory.py`); the request's fields and the host check are still
`oneseekd/runspec.py` and `oneseekd/runcheck.py`."""

"""Certification, torch-free: artifacts with their sha256, the signed hash-chained ledger
(ledger.py), the DNA (dna.py), the certified layout and its names (layout.py, certified.py),
moving outputs into place (publish.py, staging.py), the CURRENT pointer (current.py,
promote.py, and pointerlock.py, which serializes its moves) and live metrics (live.py).

Nothing is imported here: oneseekctl's light read path imports layout.py alone, without
SQLAlchemy or PyNaCl."""

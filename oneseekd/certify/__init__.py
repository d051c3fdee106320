"""Certification, torch-free: artifacts with their sha256, the signed hash-chained ledger
(ledger.py), the DNA (dna.py), the certified layout and its names (layout.py, certified.py),
moving outputs into place (publish.py, staging.py), the CURRENT pointer (current.py,
promote.py) and live metrics (live.py)."""

from oneseekd.certify.artifacts import FileDigest, file_digest, record_artifact, sha256_file
from oneseekd.certify.ledger import Ledger, VerifyReport, canonical_json, ledger_proof, verify

__all__ = [
    "FileDigest",
    "Ledger",
    "VerifyReport",
    "canonical_json",
    "file_digest",
    "ledger_proof",
    "record_artifact",
    "sha256_file",
    "verify",
]

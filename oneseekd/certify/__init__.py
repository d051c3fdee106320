"""Certification: artifacts with their sha256, and the signed, hash-chained ledger."""

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

"""The ledger's Ed25519 (libsodium through PyNaCl, oneseekd/certify/ed25519.py) against another
implementation (OpenSSL's, through `cryptography`, which the ledger used before): the same
signatures, and PEM files each reads from the other byte for byte, so keys and ledgers written
before verify unchanged."""

from __future__ import annotations

import base64
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oneseekd.certify.ed25519 import BadSignature, KeyFormatError, PrivateKey, PublicKey

PKCS8 = (ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
SPKI = (ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
RAW = (ser.Encoding.Raw, ser.PublicFormat.Raw)


def test_keys_and_signatures_are_those_of_openssl_both_ways() -> None:
    theirs = Ed25519PrivateKey.generate()
    ours = PrivateKey.from_pem(theirs.private_bytes(*PKCS8))
    assert ours.to_pem() == theirs.private_bytes(*PKCS8)
    assert ours.public_key().to_pem() == theirs.public_key().public_bytes(*SPKI)
    assert ours.public_key().raw == theirs.public_key().public_bytes(*RAW)
    digest = bytes(range(32))
    assert ours.sign(digest) == theirs.sign(digest)  # Ed25519 is deterministic
    theirs.public_key().verify(ours.sign(digest), digest)
    PublicKey.from_pem(theirs.public_key().public_bytes(*SPKI)).verify(theirs.sign(digest), digest)

    generated = PrivateKey.generate()
    loaded = ser.load_pem_private_key(generated.to_pem(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    assert loaded.public_key().public_bytes(*RAW) == generated.public_key().raw


def test_a_key_from_the_openssl_command_line_is_read() -> None:
    try:
        pem = subprocess.run(
            ["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no openssl command with Ed25519 here")
    key = PrivateKey.from_pem(pem)
    assert key.to_pem() == pem


def test_a_pkcs8_v2_key_with_its_public_key_is_read_and_a_mismatched_one_refused() -> None:
    key = PrivateKey.generate()
    seed = base64.b64decode("".join(key.to_pem().decode().splitlines()[1:-1]))[-32:]
    public = key.public_key().raw

    def v2(public_key: bytes) -> bytes:
        body = (
            bytes.fromhex("020101300506032b6570")
            + bytes.fromhex("04220420")
            + seed
            + bytes.fromhex("812100")
            + public_key
        )
        der = bytes([0x30, len(body)]) + body
        text = base64.b64encode(der).decode()
        return f"-----BEGIN PRIVATE KEY-----\n{text}\n-----END PRIVATE KEY-----\n".encode()

    assert PrivateKey.from_pem(v2(public)).public_key().raw == public
    other = PrivateKey.generate().public_key().raw
    with pytest.raises(KeyFormatError, match="public key is not its private key's"):
        PrivateKey.from_pem(v2(other))


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        (
            rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(*PKCS8),
            "it is not an Ed25519 key",
        ),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(*PKCS8),
            "it is not an Ed25519 key",
        ),
        (
            Ed25519PrivateKey.generate().private_bytes(
                ser.Encoding.PEM,
                ser.PrivateFormat.PKCS8,
                ser.BestAvailableEncryption(b"a passphrase"),
            ),
            "the key is encrypted",
        ),
        (
            Ed25519PrivateKey.generate().public_key().public_bytes(*SPKI),
            "'PUBLIC KEY', not 'PRIVATE KEY'",
        ),
        (b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "not base64"),
        (b"-----BEGIN PRIVATE KEY-----\nMAA=\n", "no -----END PRIVATE KEY----- line"),
        (b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n", "not an Ed25519"),
        (b"\xff\xfe not text", "not ASCII"),
        (b"just some words", "no -----BEGIN line"),
    ],
    ids=["rsa", "ec", "encrypted", "public", "not-base64", "no-end", "empty", "binary", "text"],
)
def test_what_is_not_an_ed25519_private_key_is_refused_with_what_it_is(
    pem: bytes, reason: str
) -> None:
    with pytest.raises(KeyFormatError, match=reason):
        PrivateKey.from_pem(pem)


def test_a_signature_of_other_bytes_or_another_key_does_not_verify() -> None:
    key, other = PrivateKey.generate(), PrivateKey.generate()
    digest = bytes(32)
    signature = key.sign(digest)
    key.public_key().verify(signature, digest)
    for wrong_key, wrong_sig, message in (
        (other, signature, digest),
        (key, signature, b"\x01" + digest[1:]),
        (key, signature[:-1] + bytes([signature[-1] ^ 1]), digest),
        (key, signature[:32], digest),
    ):
        with pytest.raises(BadSignature):
            wrong_key.public_key().verify(wrong_sig, message)
    with pytest.raises(KeyFormatError):
        PublicKey(bytes(31))

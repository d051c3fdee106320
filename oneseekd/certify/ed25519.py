"""The ledger's Ed25519 keys: signed and verified by libsodium (PyNaCl), kept in the PEM files
everyone else reads (RFC 8410: PKCS#8 `PRIVATE KEY`, SubjectPublicKeyInfo `PUBLIC KEY`), byte for
byte what OpenSSL (`openssl genpkey -algorithm ed25519`) and Python's `cryptography` write.

Why not `cryptography`, which oneseekd used before: its Rust module carries a whole OpenSSL and
stays 7.8 MB resident in the daemon once imported, a tenth of the idle daemon's budget
(docs/reliability.md), for one signature per ledger event. libsodium's Ed25519 is the same
signature (RFC 8032 is deterministic: the same key signs the same bytes alike), so keys and
ledgers written before verify unchanged; tests/test_ledger.py checks both ways against
`cryptography`.

A PEM here is read strictly: one block of the expected label, base64, and the DER of an
Ed25519 key and nothing else. Anything else is refused with what it is (encrypted, another
algorithm, not a key), never guessed at.
"""

from __future__ import annotations

import base64
import binascii

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

SEED_BYTES = 32
PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64
# the DER of RFC 8410's structures for Ed25519 (OID 1.3.101.112), up to the key's own bytes
_ALGORITHM = bytes.fromhex("300506032b6570")
_PRIVATE_PREFIX = bytes.fromhex("302e020100") + _ALGORITHM + bytes.fromhex("04220420")
_PUBLIC_PREFIX = bytes.fromhex("302a") + _ALGORITHM + bytes.fromhex("032100")
_OID = bytes.fromhex("06032b6570")
_PRIVATE_LABEL = "PRIVATE KEY"
_PUBLIC_LABEL = "PUBLIC KEY"


class KeyFormatError(ValueError):
    """Bytes that are not an Ed25519 key of the expected kind; the message says what they are."""


class BadSignature(ValueError):
    """A signature that this key did not make over these bytes."""


class PublicKey:
    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_BYTES:
            raise KeyFormatError(f"an Ed25519 public key is {PUBLIC_BYTES} bytes, not {len(raw)}")
        try:
            self._key = VerifyKey(bytes(raw))
        except (CryptoError, TypeError, ValueError) as exc:
            raise KeyFormatError(f"not an Ed25519 public key: {exc}") from exc
        self.raw = bytes(raw)

    @classmethod
    def from_pem(cls, pem: bytes) -> PublicKey:
        der = _pem_body(pem, _PUBLIC_LABEL)
        if not der.startswith(_PUBLIC_PREFIX) or len(der) != len(_PUBLIC_PREFIX) + PUBLIC_BYTES:
            raise KeyFormatError(_not_ed25519(der))
        return cls(der[len(_PUBLIC_PREFIX) :])

    def to_pem(self) -> bytes:
        return _pem(_PUBLIC_LABEL, _PUBLIC_PREFIX + self.raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        """BadSignature unless `signature` is this key's over `message`."""
        if len(signature) != SIGNATURE_BYTES:
            raise BadSignature(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes")
        try:
            self._key.verify(message, signature)
        except (BadSignatureError, CryptoError, ValueError) as exc:
            raise BadSignature("the signature does not verify") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


class PrivateKey:
    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise KeyFormatError(f"an Ed25519 private key is {SEED_BYTES} bytes, not {len(seed)}")
        self._key = SigningKey(bytes(seed))

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(bytes(SigningKey.generate()))

    @classmethod
    def from_pem(cls, pem: bytes) -> PrivateKey:
        """PKCS#8 v1 (what OpenSSL and cryptography write), or v2 with the public key after
        the private one (which must then be the private key's own)."""
        der = _pem_body(pem, _PRIVATE_LABEL)
        if der.startswith(_PRIVATE_PREFIX) and len(der) == len(_PRIVATE_PREFIX) + SEED_BYTES:
            return cls(der[len(_PRIVATE_PREFIX) :])
        return cls._from_v2(der)

    @classmethod
    def _from_v2(cls, der: bytes) -> PrivateKey:
        body = _sequence(der)
        version, body = _take(body, 0x02)
        algorithm, body = _take(body, 0x30)
        if algorithm != _OID:
            raise KeyFormatError(_not_ed25519(der))
        if version not in (b"\x00", b"\x01"):
            raise KeyFormatError("the PKCS#8 key has an unknown version")
        wrapped, body = _take(body, 0x04)
        seed, rest = _take(wrapped, 0x04)
        if rest or len(seed) != SEED_BYTES:
            raise KeyFormatError("the PKCS#8 Ed25519 key does not hold a 32-byte private key")
        key = cls(seed)
        if body[:1] == b"\xa0":  # [0] attributes: nothing oneseekd uses
            _, body = _take(body, 0xA0)
        if body[:1] == b"\x81":  # [1] the public key, as an implicit BIT STRING
            public, body = _take(body, 0x81)
            if public != b"\x00" + key.public_key().raw:
                raise KeyFormatError("the PKCS#8 key's public key is not its private key's")
        if body:
            raise KeyFormatError("the PKCS#8 key has bytes after its fields")
        return key

    def to_pem(self) -> bytes:
        return _pem(_PRIVATE_LABEL, _PRIVATE_PREFIX + bytes(self._key))

    def public_key(self) -> PublicKey:
        return PublicKey(bytes(self._key.verify_key))

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


def _pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def _pem_body(pem: bytes, label: str) -> bytes:
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError("not a PEM file (it is not ASCII text)") from None
    begin = text.find("-----BEGIN ")
    if begin < 0:
        raise KeyFormatError("not a PEM file (no -----BEGIN line)")
    found = text[begin + len("-----BEGIN ") :].split("-----", 1)[0]
    if found != label:
        if "ENCRYPTED" in found:
            raise KeyFormatError(
                f"the key is encrypted ({found}): the daemon signs unattended, so its key "
                "file holds the key without a passphrase (mode 0600 protects it)"
            )
        raise KeyFormatError(f"the PEM block is {found!r}, not {label!r}")
    end_line = f"-----END {label}-----"
    start = text.index("\n", begin) + 1 if "\n" in text[begin:] else len(text)
    end = text.find(end_line, start)
    if end < 0:
        raise KeyFormatError(f"the PEM block has no {end_line} line")
    try:
        return base64.b64decode("".join(text[start:end].split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError("the PEM block is not base64") from None


def _not_ed25519(der: bytes) -> str:
    if _OID in der[:24]:
        return "the key is Ed25519 but its DER is not RFC 8410's"
    return "it is not an Ed25519 key"


def _length(data: bytes, at: int) -> tuple[int, int]:
    """A DER length at `at`: (length, where the content starts)."""
    if at >= len(data):
        raise KeyFormatError("the key's DER is cut short")
    first = data[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    if count == 0 or count > 2 or at + 1 + count > len(data):
        raise KeyFormatError("the key's DER has a length that is not one")
    return int.from_bytes(data[at + 1 : at + 1 + count], "big"), at + 1 + count


def _take(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """The content of the element with `tag` at the start of data, and what follows it."""
    if not data or data[0] != tag:
        raise KeyFormatError("it is not an Ed25519 key")
    length, start = _length(data, 1)
    if start + length > len(data):
        raise KeyFormatError("the key's DER is cut short")
    return data[start : start + length], data[start + length :]


def _sequence(der: bytes) -> bytes:
    body, rest = _take(der, 0x30)
    if rest:
        raise KeyFormatError("the key's DER has bytes after it")
    return body

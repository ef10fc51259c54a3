"""SECURITY.md C7: frozen golden vectors for the container format, checked byte-exact on every run.

A format change must be deliberate: regenerate with ``UPDATE_GOLDEN=1 pytest THIS_FILE`` and
review the diff. Each vector is also decoded by an independent reference reader written from the
format description alone, so the library and the spec cannot drift apart together.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secure.container import Container, decrypt_bytes, encrypt_bytes
from secure.errors import TamperedError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "container" / "container_v1.json"


def _case(label: str, plain: bytes, chunk_size: int, seed: int, **ids: str) -> dict[str, Any]:
    def det(n: int, tag: str) -> bytes:
        return hashlib.sha256(f"{label}/{tag}/{seed}".encode()).digest()[:n]

    return {
        "label": label,
        "data_key": det(32, "key").hex(),
        "salt": det(32, "salt").hex(),
        "nonce_prefix": det(7, "prefix").hex(),
        "object_id": ids.get("object_id", "qwen-ft"),
        "name": ids.get("name", "model.safetensors"),
        "key_id": ids.get("key_id", "kek:1/dk:1"),
        "chunk_size": chunk_size,
        "plaintext": plain.hex(),
    }


def _inputs() -> list[dict[str, Any]]:
    pattern = bytes(i % 256 for i in range(200))
    return [
        _case("empty", b"", 16, 1),
        _case("one byte", b"\x00", 16, 2),
        _case("exact one chunk", pattern[:16], 16, 3),
        _case("exact three chunks", pattern[:48], 16, 4),
        _case("three chunks and a short one", pattern[:50], 16, 5),
        _case("default chunk size", b"config: {}\n", 1 << 20, 6, name="config.json"),
        _case("unicode ids", "Grüße 報告".encode(), 64, 7, object_id="coll:法务", name="Ä.docx"),
    ]


def _seal(case: dict[str, Any]) -> bytes:
    return encrypt_bytes(
        bytes.fromhex(case["plaintext"]),
        data_key=bytes.fromhex(case["data_key"]),
        object_id=case["object_id"],
        name=case["name"],
        key_id=case["key_id"],
        chunk_size=case["chunk_size"],
        _salt=bytes.fromhex(case["salt"]),
        _nonce_prefix=bytes.fromhex(case["nonce_prefix"]),
    )


def _load() -> list[dict[str, Any]]:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        fresh = [{**case, "container": _seal(case).hex()} for case in _inputs()]
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(json.dumps({"format": "KAPPCTR v1", "cases": fresh}, indent=1) + "\n")
    cases: list[dict[str, Any]] = json.loads(VECTORS.read_text())["cases"]
    return cases


CASES = _load()


def test_the_vector_file_covers_every_case() -> None:
    assert [c["label"] for c in CASES] == [c["label"] for c in _inputs()]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["label"])
def test_c7_encryption_is_byte_exact(case: dict[str, Any]) -> None:
    assert _seal(case).hex() == case["container"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["label"])
def test_c7_frozen_containers_still_decrypt(case: dict[str, Any]) -> None:
    blob = bytes.fromhex(case["container"])
    key = bytes.fromhex(case["data_key"])
    plain = decrypt_bytes(blob, key, expect_object_id=case["object_id"], expect_name=case["name"])
    assert plain.hex() == case["plaintext"]
    with pytest.raises(TamperedError):
        decrypt_bytes(blob, key[::-1], expect_object_id=case["object_id"], expect_name=case["name"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["label"])
def test_c7_an_independent_reader_agrees(case: dict[str, Any]) -> None:
    blob = bytes.fromhex(case["container"])
    assert reference_decrypt(blob, bytes.fromhex(case["data_key"])).hex() == case["plaintext"]
    header = Container.from_bytes(blob).header
    assert (header.salt.hex(), header.nonce_prefix.hex()) == (case["salt"], case["nonce_prefix"])


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def reference_decrypt(blob: bytes, data_key: bytes) -> bytes:
    """The container format, read straight from the description in secure/container.py."""
    assert blob[:8] == b"KAPPCTR\x01"
    (hlen,) = struct.unpack(">I", blob[8:12])
    prefix, mac, body = blob[: 12 + hlen], blob[12 + hlen : 44 + hlen], blob[44 + hlen :]
    header = json.loads(prefix[12:])
    salt = _b64(header["salt"])
    mac_key = _hkdf(data_key, salt, b"kapp/v1 header-mac")
    assert hmac.compare_digest(hmac.new(mac_key, prefix, hashlib.sha256).digest(), mac)
    payload = AESGCM(_hkdf(data_key, salt, b"kapp/v1 payload" + hashlib.sha256(prefix).digest()))
    cs, count = header["chunk_size"], header["chunk_count"]
    out = b""
    for i in range(count):
        sealed = body[i * (cs + 16) : (i + 1) * (cs + 16)]
        nonce = _b64(header["nonce_prefix"]) + struct.pack(">I", i) + bytes([i == count - 1])
        out += payload.decrypt(nonce, sealed, None)
    assert len(out) == header["size"]
    return out


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

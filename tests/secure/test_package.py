"""Model packages: round trip, tamper and swap refusals, and no plaintext anywhere (D1 part)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure._encoding import canonical_json
from secure.errors import FormatError, SecureError, TamperedError
from secure.issuer import IssuerKey, IssuerPublic
from secure.package import (
    Manifest,
    PackageSource,
    SourceFile,
    _mac_key,
    decrypt_package,
    iter_integrity_problems,
    package_files,
    package_model,
    read_manifest,
    unseal_package_key,
)

from .helpers import DAY, HOST, NOW, make_world, write_model_dir


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_round_trip_and_source_untouched(tmp_path: Path) -> None:
    src = write_model_dir(tmp_path / "src")
    before = tree_digest(src)
    issuer = IssuerKey.generate("vendor")
    manifest = package_model(src, tmp_path / "pkg", name="m", issuer=issuer.public(), now=NOW)
    assert tree_digest(src) == before
    assert sorted(os.listdir(tmp_path)) == ["pkg", "src"]  # nothing else written beside
    opened, key = unseal_package_key(tmp_path / "pkg", issuer)
    files = decrypt_package(tmp_path / "pkg", opened, key, threads=2)
    assert {n: hashlib.sha256(b).hexdigest() for n, b in files.items()} == before
    assert list(iter_integrity_problems(tmp_path / "pkg", manifest)) == []


def test_no_plaintext_in_package(tmp_path: Path) -> None:
    src = write_model_dir(tmp_path / "src")
    (src / "secret.txt").write_bytes(b"CANARY-" + os.urandom(16).hex().encode())
    canary = (src / "secret.txt").read_bytes()
    weights = (src / "model.safetensors").read_bytes()
    package_model(src, tmp_path / "pkg", name="m", issuer=IssuerKey.generate("v").public(), now=NOW)
    for path in (tmp_path / "pkg").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert canary not in blob
            assert weights[4096:4160] not in blob


def test_refuses_existing_output_and_output_inside_source(tmp_path: Path) -> None:
    src = write_model_dir(tmp_path / "src")
    pub = IssuerKey.generate("v").public()
    (tmp_path / "exists").mkdir()
    with pytest.raises(SecureError, match="already exists"):
        package_model(src, tmp_path / "exists", name="m", issuer=pub, now=NOW)
    with pytest.raises(SecureError, match="outside"):
        package_model(src, src / "pkg", name="m", issuer=pub, now=NOW)
    with pytest.raises(SecureError, match="Invalid model name"):
        package_model(src, tmp_path / "p2", name="../x", issuer=pub, now=NOW)


def test_wrong_issuer_cannot_unseal(tmp_path: Path) -> None:
    src = write_model_dir(tmp_path / "src")
    package_model(src, tmp_path / "pkg", name="m", issuer=IssuerKey.generate("a").public(), now=NOW)
    with pytest.raises(SecureError) as info:
        unseal_package_key(tmp_path / "pkg", IssuerKey.generate("b"))
    assert info.value.code == "WRONG_ISSUER"


def test_manifest_edit_detected(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    pkg = tmp_path / "pkg"
    raw = json.loads((pkg / "manifest.json").read_bytes())
    raw["files"][0]["size"] += 1
    (pkg / "manifest.json").write_bytes(json.dumps(raw, sort_keys=True).encode())
    with pytest.raises(TamperedError):
        unseal_package_key(pkg, world.issuer)


def test_container_swap_between_files_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    world.store.install_policy(world.policy(), actor="a", now=NOW, host=HOST)
    installed = world.home.layout.models / "m1"
    manifest = read_manifest(installed)
    a, b = (installed / f.container for f in manifest.files[:2])
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    status = world.store.status("m1", now=NOW, host=HOST)
    assert not status.integrity_ok and status.reason_code == "TAMPERED"
    # Even when the manifest hashes are bypassed, the containers authenticate their names.
    _, key = unseal_package_key(tmp_path / "pkg", world.issuer)
    with pytest.raises(TamperedError):
        decrypt_package(installed, manifest, key)


@pytest.mark.parametrize("where", ["header", "middle", "tail"])
def test_flipped_byte_in_installed_container(tmp_path: Path, where: str) -> None:
    world = make_world(tmp_path)
    world.store.install_policy(world.policy(), actor="a", now=NOW, host=HOST)
    manifest = read_manifest(world.home.layout.models / "m1")
    big = next(f for f in manifest.files if f.name == "model.safetensors")
    path = world.home.layout.models / "m1" / big.container
    blob = bytearray(path.read_bytes())
    pos = {"header": 20, "middle": len(blob) // 2, "tail": len(blob) - 3}[where]
    blob[pos] ^= 0x80
    path.write_bytes(bytes(blob))
    status = world.store.status("m1", now=NOW, host=HOST)
    assert (status.unlockable, status.reason_code) == (False, "TAMPERED")
    with pytest.raises(TamperedError):
        world.store.open_model("m1", user="u", role="staff", now=NOW, host=HOST)
    entry = world.home.audit.tail(1)[0]
    assert (entry.action, entry.outcome, entry.reason) == ("model.unlock", "refused", "TAMPERED")


def test_install_refuses_tampered_package_with_reason(tmp_path: Path) -> None:
    make_world(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "pkg", copy)
    manifest = Manifest.from_bytes((copy / "manifest.json").read_bytes())
    target = copy / manifest.files[0].container
    target.write_bytes(target.read_bytes()[:-1])
    home2 = make_world(tmp_path / "w2").home
    from secure.models import ModelStore

    with pytest.raises(TamperedError):
        ModelStore(home2).install_package(copy, actor="admin", now=NOW + DAY)
    entry = home2.audit.tail(1)[0]
    assert (entry.action, entry.outcome, entry.reason) == ("model.install", "refused", "TAMPERED")
    assert "hash differs" in entry.details["detail"] or "structural" in entry.details["detail"]


# ----- source record (provenance) -------------------------------------------------------


def test_hf_dir_package_records_every_source_digest(tmp_path: Path) -> None:
    src = write_model_dir(tmp_path / "src")
    manifest = package_model(
        src, tmp_path / "pkg", name="m", issuer=IssuerKey.generate("v").public(), now=NOW
    )
    assert manifest.source is not None and manifest.source.format == "hf-dir"
    assert manifest.source.dtype is None
    recorded = {f.name: (f.size, f.sha256) for f in manifest.source.files}
    expected = {
        name: ((src / name).stat().st_size, digest) for name, digest in tree_digest(src).items()
    }
    assert recorded == expected


def test_package_files_from_memory_round_trip(tmp_path: Path) -> None:
    files = {"model.safetensors": bytearray(os.urandom(2 * 1024 * 1024 + 5)), "config.json": b"{}"}
    source = PackageSource("gguf", (SourceFile("m.gguf", 7, "ab" * 32),), dtype="fp32")
    issuer = IssuerKey.generate("vendor")
    manifest = package_files(
        files, tmp_path / "pkg", name="m", issuer=issuer.public(), now=NOW, source=source
    )
    assert manifest.source == source
    assert sorted(os.listdir(tmp_path)) == ["pkg"]
    opened, key = unseal_package_key(tmp_path / "pkg", issuer)
    assert opened.source == source
    plain = decrypt_package(tmp_path / "pkg", opened, key, threads=2)
    assert {n: bytes(b) for n, b in plain.items()} == {n: bytes(b) for n, b in files.items()}
    assert list(iter_integrity_problems(tmp_path / "pkg", manifest)) == []


@pytest.mark.parametrize("bad", ["../escape", "/abs", ""])
def test_package_files_refuses_unsafe_names_and_writes_nothing(tmp_path: Path, bad: str) -> None:
    source = PackageSource("gguf", (SourceFile("m.gguf", 1, "0" * 64),), dtype="fp32")
    with pytest.raises(SecureError) as info:
        package_files(
            {bad: b"x"},
            tmp_path / "pkg",
            name="m",
            issuer=IssuerKey.generate("v").public(),
            now=NOW,
            source=source,
        )
    assert info.value.code == "INVALID_SOURCE"
    assert os.listdir(tmp_path) == []


def test_source_record_is_covered_by_the_manifest_mac(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    pkg = tmp_path / "pkg"
    raw = json.loads((pkg / "manifest.json").read_bytes())
    raw["source"]["files"][0]["sha256"] = "0" * 64
    (pkg / "manifest.json").write_bytes(canonical_json(raw))
    with pytest.raises(TamperedError):
        unseal_package_key(pkg, world.issuer)


def test_package_without_source_record_still_opens(tmp_path: Path) -> None:
    """A package made before the source record existed: same manifest minus ``source``."""
    world = make_world(tmp_path)
    pkg = tmp_path / "pkg"
    _, key = unseal_package_key(pkg, world.issuer)
    raw = json.loads((pkg / "manifest.json").read_bytes())
    del raw["source"]
    old = canonical_json(raw)
    (pkg / "manifest.json").write_bytes(old)
    (pkg / "manifest.mac").write_text(hmac.new(_mac_key(key), old, hashlib.sha256).hexdigest())
    manifest, key = unseal_package_key(pkg, world.issuer)
    assert manifest.source is None
    assert set(decrypt_package(pkg, manifest, key)) == {f.name for f in manifest.files}


@pytest.mark.parametrize(
    "source",
    [
        {"format": "zip", "files": [{"name": "a", "size": 1, "sha256": "0" * 64}]},
        {"format": "gguf", "files": [{"name": "a", "size": 1, "sha256": "0" * 64}]},
        {"format": "hf-dir", "dtype": "fp32", "files": [{"name": "a", "size": 1, "sha256": "0"}]},
        {"format": "hf-dir", "files": [{"name": "a", "size": 1, "sha256": "G" * 64}]},
        {"format": "hf-dir", "files": [{"name": "../a", "size": 1, "sha256": "0" * 64}]},
        {"format": "hf-dir", "files": [{"name": "a", "size": -1, "sha256": "0" * 64}]},
        {"format": "hf-dir", "files": []},
        {"format": "hf-dir", "files": [{"name": "a", "size": 1, "sha256": "0" * 64, "x": 1}]},
        {"format": "hf-dir", "files": [{"name": "a", "size": 1, "sha256": "0" * 64}], "x": 1},
        {"format": "gguf", "dtype": "q4", "files": [{"name": "a", "size": 1, "sha256": "0" * 64}]},
        "gguf",
    ],
)
def test_malformed_source_record_refused(tmp_path: Path, source: object) -> None:
    src = write_model_dir(tmp_path / "src", big=100)
    package_model(src, tmp_path / "pkg", name="m", issuer=IssuerKey.generate("v").public(), now=1)
    raw = json.loads((tmp_path / "pkg" / "manifest.json").read_bytes())
    raw["source"] = source
    with pytest.raises(FormatError):
        Manifest.from_bytes(canonical_json(raw))


# ----- parser fuzzing: manifest and issuer public key -------------------------------------


_VALID: dict[str, bytes] = {}


def _valid_manifest(tmp: Path) -> bytes:
    if "m" not in _VALID:
        src = write_model_dir(tmp / "src", big=1000)
        package_model(src, tmp / "pkg", name="m", issuer=IssuerKey.generate("v").public(), now=1)
        _VALID["m"] = (tmp / "pkg" / "manifest.json").read_bytes()
        _VALID["pub"] = IssuerKey.generate("v").public().to_bytes()
    return _VALID["m"]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_manifest_and_issuer_parsers(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    valid = _valid_manifest(tmp_path_factory.mktemp("fz"))
    for parse, seed in ((Manifest.from_bytes, valid), (IssuerPublic.from_bytes, _VALID["pub"])):
        raw = bytearray(seed)
        for _ in range(data.draw(st.integers(1, 3))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        for candidate in (bytes(raw), data.draw(st.binary(max_size=512))):
            with contextlib.suppress(SecureError):
                parse(candidate)

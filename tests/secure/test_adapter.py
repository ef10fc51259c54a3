"""Adapter packages: encrypted, bound to their base's digest and to this appliance, shreddable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from secure.adapter import AdapterStore, BaseRef
from secure.errors import SecureError, TamperedError
from secure.keyring import retire_old_keys

from .helpers import NOW, make_home, make_world

FILES = {"adapter.safetensors": b"\x01" * 5000 + b"weights", "adapter_config.json": b'{"r": 4}'}
BASE = BaseRef("m1", "pkg-1", "a" * 64)


def _store(tmp: Path) -> AdapterStore:
    return AdapterStore(make_home(tmp / "home"))


def _install(store: AdapterStore, name: str = "m1-ft", base: BaseRef = BASE) -> None:
    store.install(
        name,
        FILES,
        base=base,
        data={"dataset": "faq", "sha256": "b" * 64},
        training={"rank": 4, "seed": 0},
        actor="t",
        now=NOW,
    )


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _install(store)
    manifest = store.manifest("m1-ft")
    assert (manifest.base, manifest.data["sha256"], manifest.training["rank"]) == (
        BASE,
        "b" * 64,
        4,
    )
    opened = store.open("m1-ft", base_manifest_sha256=BASE.manifest_sha256)
    assert {k: bytes(v) for k, v in opened.items()} == FILES
    assert store.integrity_problems("m1-ft") == []
    for path in (tmp_path / "home" / "adapters" / "m1-ft" / "files").iterdir():
        assert b"weights" not in path.read_bytes()
    entry = store.home.audit.tail(1)[-1]
    assert (entry.action, entry.object) == ("adapter.install", "m1-ft")


def test_an_adapter_of_another_base_is_refused_as_tampered(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _install(store)
    with pytest.raises(TamperedError):
        store.open("m1-ft", base_manifest_sha256="c" * 64)


def test_the_base_it_names_cannot_be_edited(tmp_path: Path) -> None:
    """Pointing the manifest at the installed base breaks its MAC (it commits to the key)."""
    store = _store(tmp_path)
    _install(store)
    path = tmp_path / "home" / "adapters" / "m1-ft" / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b"a" * 64, b"c" * 64))
    with pytest.raises(TamperedError):
        store.open("m1-ft", base_manifest_sha256="c" * 64)


def test_edited_or_swapped_containers_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _install(store, "one")
    _install(store, "two")
    root = tmp_path / "home" / "adapters"
    target = root / "one" / "files" / "0000.kpc"
    blob = bytearray(target.read_bytes())
    blob[-20] ^= 1
    target.write_bytes(bytes(blob))
    assert store.integrity_problems("one")
    with pytest.raises(TamperedError):
        store.open("one", base_manifest_sha256=BASE.manifest_sha256)
    shutil.copy(root / "two" / "files" / "0000.kpc", target)  # another adapter's ciphertext
    with pytest.raises(SecureError):
        store.open("one", base_manifest_sha256=BASE.manifest_sha256)


def test_a_copy_opens_on_no_other_appliance(tmp_path: Path) -> None:
    store = _store(tmp_path / "a")
    _install(store)
    other = _store(tmp_path / "b")
    shutil.copytree(tmp_path / "a" / "home" / "adapters", tmp_path / "b" / "home" / "adapters")
    keys = tmp_path / "a" / "home" / "keys" / "stores" / "adapters"
    shutil.copytree(keys, tmp_path / "b" / "home" / "keys" / "stores" / "adapters")
    with pytest.raises(TamperedError):
        other.open("m1-ft", base_manifest_sha256=BASE.manifest_sha256)


def test_remove_crypto_shreds_the_adapter(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _install(store)
    manifest = store.manifest("m1-ft")
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "home" / "adapters", backup / "adapters")
    shutil.copytree(tmp_path / "home" / "keys" / "stores" / "adapters", backup / "keys")
    store.remove("m1-ft", actor="admin", now=NOW)
    assert store.installed() == []
    keyring = store.home.keyring
    keyring.rotate()
    retire_old_keys(keyring)
    # the backup put back in place: the key store no longer unwraps
    shutil.copytree(backup / "adapters", tmp_path / "home" / "adapters", dirs_exist_ok=True)
    shutil.copytree(
        backup / "keys", tmp_path / "home" / "keys" / "stores" / "adapters", dirs_exist_ok=True
    )
    assert store.manifest("m1-ft").adapter_id == manifest.adapter_id
    with pytest.raises(TamperedError):
        store.open("m1-ft", base_manifest_sha256=BASE.manifest_sha256)


def test_models_and_adapters_share_one_namespace(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    store = AdapterStore(world.home)
    with pytest.raises(SecureError) as info:
        _install(store, "m1")  # the model's name
    assert info.value.code == "EXISTS"
    _install(store, "m2")
    manifest = json.loads((world.pkg / "manifest.json").read_text())
    assert manifest["model"] == "m1"
    from secure.package import package_model

    package_model(
        tmp_path / "src", tmp_path / "pkg-m2", name="m2", issuer=world.issuer.public(), now=NOW
    )
    with pytest.raises(SecureError) as info:
        world.store.install_package(tmp_path / "pkg-m2", actor="admin", now=NOW)
    assert info.value.code == "EXISTS"


def test_a_malformed_manifest_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _install(store)
    path = tmp_path / "home" / "adapters" / "m1-ft" / "manifest.json"
    obj = json.loads(path.read_bytes())
    obj["surprise"] = 1
    path.write_text(json.dumps(obj))
    with pytest.raises(TamperedError):
        store.manifest("m1-ft")

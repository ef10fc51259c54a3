"""Host binding (the host part of P4): factor collection from a fake /sys tree, hashing, k-of-n."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure.host import (
    HostMatch,
    binding_strength,
    collect_host_factors,
    hash_factors,
    match_host,
    tpm_present,
)
from secure.keys import LABEL_HOST_FACTORS, derive_key

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "keys"
KEY = derive_key(bytes(range(32)), LABEL_HOST_FACTORS)
GPU_INFO = """Model: \t\t NVIDIA H100 80GB HBM3
IRQ:   \t\t 42
GPU UUID: \t\t GPU-6c2e1d3a-0000-4b5e-9f00-123456789abc
Video BIOS: \t\t 96.00.99.00.01
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _nic(root: Path, name: str, mac: str, *, physical: bool = True, assign: str = "0") -> None:
    nic = root / "sys/class/net" / name
    _write(nic / "address", mac + "\n")
    _write(nic / "addr_assign_type", assign + "\n")
    if physical:
        target = root / "sys/devices/pci0000:00" / name
        target.mkdir(parents=True)
        (nic / "device").symlink_to(os.path.relpath(target, nic))


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _write(root / "etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    _write(root / "sys/class/dmi/id/product_uuid", "4C4C4544-0042-3510-8052-B4C04F4D4E31\n")
    _write(root / "sys/block/loop0/removable", "0\n")
    _write(root / "sys/block/loop0/serial", "loopy\n")
    _write(root / "sys/block/sdb/removable", "1\n")
    _write(root / "sys/block/sdb/device/serial", "USB-STICK\n")
    _write(root / "sys/block/nvme0n1/removable", "0\n")
    _write(root / "sys/block/nvme0n1/device/serial", "  S4EWNX0R123456  \n")
    _nic(root, "lo", "00:00:00:00:00:00", physical=False)
    _nic(root, "eno1", "3C:EC:EF:01:02:03")
    _nic(root, "eno2", "3c:ec:ef:01:02:04")
    _nic(root, "docker0", "02:42:ac:11:00:01", physical=False)
    _nic(root, "wlan0", "f6:1a:2b:3c:4d:5e", assign="1")  # randomised MAC: not a factor
    _write(root / "proc/driver/nvidia/gpus/0000:01:00.0/information", GPU_INFO)
    return root


def test_collects_each_kind_of_factor(fake_root: Path) -> None:
    assert collect_host_factors(fake_root) == {
        "machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4",
        "dmi-product-uuid": "4c4c4544-0042-3510-8052-b4c04f4d4e31",
        "disk-serial": "S4EWNX0R123456",
        "nic:eno1": "3c:ec:ef:01:02:03",
        "nic:eno2": "3c:ec:ef:01:02:04",
        "gpu:0000:01:00.0": "GPU-6c2e1d3a-0000-4b5e-9f00-123456789abc",
    }


def test_missing_unreadable_and_placeholder_sources_are_simply_absent(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    assert collect_host_factors(root) == {}
    (root / "sys/class/dmi/id/product_uuid").mkdir(parents=True)  # unreadable: a directory
    _write(root / "etc/machine-id", "\n")
    _write(root / "var/lib/dbus/machine-id", "00000000000000000000000000000000\n")
    _nic(root, "eth0", "00:00:00:00:00:00")
    assert collect_host_factors(root) == {}


def test_disk_serial_falls_back_to_by_id_names(tmp_path: Path) -> None:
    root = tmp_path / "r"
    by_id = root / "dev/disk/by-id"
    by_id.mkdir(parents=True)
    serial = "nvme-Samsung_SSD_980_S64ANS0T1234"
    for name in (serial + "-part1", serial, "wwn-0x5000", "dm-name-root"):
        (by_id / name).touch()
    assert collect_host_factors(root) == {"disk-serial": serial}


def test_disk_of_a_partition_or_device_mapper_root(tmp_path: Path) -> None:
    """The disk holding ``root`` is found through /sys/dev/block/MAJ:MIN, even on LVM/LUKS."""
    root = tmp_path / "r"
    dev = os.stat(root.parent).st_dev
    disk = root / "sys/devices/pci/nvme/nvme1n1"
    _write(disk / "device/serial", "ROOTDISK\n")
    _write(disk / "nvme1n1p2/partition", "2\n")
    dm = root / "sys/devices/virtual/block/dm-0"
    (dm / "slaves").mkdir(parents=True)
    (dm / "slaves/nvme1n1p2").symlink_to(os.path.relpath(disk / "nvme1n1p2", dm / "slaves"))
    link = root / "sys/dev/block" / f"{os.major(dev)}:{os.minor(dev)}"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(dm, link.parent))
    _write(root / "sys/block/nvme0n1/device/serial", "OTHERDISK\n")  # first by name, not root
    root.mkdir(exist_ok=True)
    if os.stat(root).st_dev != dev:
        pytest.skip("tmp_path spans file systems")
    assert collect_host_factors(root)["disk-serial"] == "ROOTDISK"


def test_this_machine_yields_something_and_never_raises() -> None:
    factors = collect_host_factors()
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in factors.items())


# -- hashing -------------------------------------------------------------------------------


def test_hashes_hide_values_and_bind_names(fake_root: Path) -> None:
    raw = collect_host_factors(fake_root)
    hashed = hash_factors(raw, KEY)
    assert set(hashed) == set(raw)
    text = json.dumps(hashed)
    assert all(value not in text for value in raw.values())
    assert all(len(v) == 64 for v in hashed.values())
    same = hash_factors({"nic:eno1": "x", "nic:eno2": "x"}, KEY)
    assert same["nic:eno1"] != same["nic:eno2"]
    assert hash_factors(raw, derive_key(b"\x01" * 32, LABEL_HOST_FACTORS)) != hashed
    with pytest.raises(ValueError):
        hash_factors(raw, b"short")


def test_golden_hashes_are_byte_exact() -> None:
    raw = {"machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4", "nic:eno1": "3c:ec:ef:01:02:03"}
    path = VECTORS / "host_factors_v1.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        doc = {"key": KEY.hex(), "raw": raw, "hashed": hash_factors(raw, KEY)}
        path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    doc = json.loads(path.read_text())
    assert hash_factors(doc["raw"], bytes.fromhex(doc["key"])) == doc["hashed"]


# -- P4 (host part): k-of-n ----------------------------------------------------------------


def test_p4_one_changed_factor_still_matches_and_is_named(fake_root: Path) -> None:
    expected = hash_factors(collect_host_factors(fake_root), KEY)
    (fake_root / "sys/class/net/eno2/address").write_text("3c:ec:ef:99:99:99\n")  # NIC replaced
    actual = hash_factors(collect_host_factors(fake_root), KEY)
    result = match_host(expected, actual, k=len(expected) - 1)
    assert result == HostMatch(matched=5, required=5, total=6, changed=("nic:eno2",), ok=True)


def test_p4_fewer_than_k_is_refused(fake_root: Path) -> None:
    expected = hash_factors(collect_host_factors(fake_root), KEY)
    (fake_root / "sys/class/net/eno2/address").write_text("3c:ec:ef:99:99:99\n")
    (fake_root / "etc/machine-id").write_text("ffeeddccbbaa99887766554433221100\n")
    actual = hash_factors(collect_host_factors(fake_root), KEY)
    result = match_host(expected, actual, k=5)
    assert not result.ok
    assert (result.matched, result.required, result.changed) == (4, 5, ("machine-id", "nic:eno2"))


def test_p4_a_copied_install_on_another_host_is_refused(fake_root: Path, tmp_path: Path) -> None:
    expected = hash_factors(collect_host_factors(fake_root), KEY)
    other = tmp_path / "other"
    _write(other / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    _nic(other, "eno1", "3c:ec:ef:01:02:03")  # even a cloned MAC is one factor of six
    result = match_host(expected, hash_factors(collect_host_factors(other), KEY), k=5)
    assert not result.ok and result.matched == 1


def test_missing_and_added_factors(fake_root: Path) -> None:
    expected = {"a": "1" * 64, "b": "2" * 64, "c": "3" * 64}
    actual = {"a": "1" * 64, "b": "2" * 64, "d": "4" * 64}
    result = match_host(expected, actual, k=2)
    assert result.ok and result.changed == ("c",) and result.added == ("d",)


def test_k_edge_cases() -> None:
    assert match_host({}, {"a": "x"}, k=0).ok
    assert match_host({"a": "x"}, {}, k=0).ok  # k=0: the issuer chose no binding
    assert not match_host({"a": "x"}, {"a": "x"}, k=2).ok  # unsatisfiable, refused
    assert not match_host({}, {}, k=1).ok
    for bad in (-1, True):
        with pytest.raises(ValueError):
            match_host({}, {}, k=bad)


_factor_maps = st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from(["x", "y"]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(expected=_factor_maps, actual=_factor_maps, k=st.integers(0, 9))
def test_match_host_properties(expected: dict[str, str], actual: dict[str, str], k: int) -> None:
    result = match_host(expected, actual, k=k)
    assert result.matched + len(result.changed) == result.total == len(expected)
    assert result.matched == sum(actual.get(n) == v for n, v in expected.items())
    assert result.ok == (result.matched >= k)
    assert set(result.added) == set(actual) - set(expected)


# -- binding strength ----------------------------------------------------------------------


def test_binding_is_soft_until_the_identity_is_tpm_sealed(tmp_path: Path) -> None:
    assert binding_strength(tmp_path) == "soft" and not tpm_present(tmp_path)
    assert binding_strength(tmp_path, tpm_sealed=True) == "soft"  # no TPM, nothing sealed
    _write(tmp_path / "dev/tpmrm0", "")
    assert tpm_present(tmp_path)
    assert binding_strength(tmp_path) == "soft"  # a TPM exists, but this release does not use it
    assert binding_strength(tmp_path, tpm_sealed=True) == "strong"

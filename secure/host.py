"""Host binding factors: what makes this machine this machine, hashed so they never leak.

A policy names k-of-n hashed factors of the host it was issued for (threat T2): machine-id, DMI
product UUID, root-disk serial, physical NIC MACs, GPU UUIDs. k-of-n matching means one replaced
NIC or disk does not brick the appliance; the factors that drifted are reported so they can be
audited. Factors are HMAC-SHA256'd under an appliance secret (``LABEL_HOST_FACTORS``), so neither
a policy nor an identity document reveals a raw serial or MAC address.

This is a *soft* binding: root on the box can fake every factor. The strong binding is a
TPM-sealed identity key, which this release does not implement yet (see :func:`binding_strength`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HostMatch",
    "binding_strength",
    "collect_host_factors",
    "hash_factors",
    "match_host",
    "tpm_present",
]

_VIRTUAL_DISKS = ("loop", "ram", "zram", "dm-", "md", "sr", "nbd", "fd", "mmcblk0boot")
_SERIAL_FILES = ("serial", "device/serial", "device/wwid", "wwid")
_BY_ID_PREFIXES = ("nvme-", "ata-", "scsi-", "virtio-", "usb-")
_NULL_VALUES = {"", "0", "none", "unknown", "not specified", "default string"}
_MAX_VALUE = 256


def collect_host_factors(root: Path = Path("/")) -> dict[str, str]:
    """Read the raw factors of the host under ``root`` (a fake tree in tests).

    Missing or unreadable sources are simply absent; nothing here raises for an odd machine.
    """
    root = Path(root)
    factors: dict[str, str] = {}
    machine_id = _read(root / "etc/machine-id") or _read(root / "var/lib/dbus/machine-id")
    _put(factors, "machine-id", machine_id)
    _put(factors, "dmi-product-uuid", _dmi_uuid(root))
    _put(factors, "disk-serial", _root_disk_serial(root))
    for name, mac in _nic_macs(root).items():
        _put(factors, f"nic:{name}", mac)
    for bus, uuid in _gpu_uuids(root).items():
        _put(factors, f"gpu:{bus}", uuid)
    return factors


def hash_factors(raw: Mapping[str, str], key: bytes) -> dict[str, str]:
    """HMAC-SHA256 (hex) of each factor under ``key``; the name is bound in, the value hidden."""
    if len(key) < 16:
        raise ValueError("The host-factor key must be at least 16 bytes.")
    return {
        name: hmac.new(key, _factor_message(name, value), hashlib.sha256).hexdigest()
        for name, value in raw.items()
    }


@dataclass(frozen=True)
class HostMatch:
    """Outcome of k-of-n matching. ``changed`` names expected factors that differ or are gone
    (audit them even when ``ok``); ``added`` names factors this host has that were not expected."""

    matched: int
    required: int
    total: int
    changed: tuple[str, ...]
    ok: bool
    added: tuple[str, ...] = ()


def match_host(expected: Mapping[str, str], actual: Mapping[str, str], *, k: int) -> HostMatch:
    """Compare hashed factors: ``ok`` when at least ``k`` expected factors match exactly.

    ``k`` greater than the number of expected factors can never be met (refused, not an error):
    a signed policy asking for that is simply not satisfiable. ``k == 0`` means no binding.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError("k must be a non-negative integer.")
    changed = tuple(
        sorted(
            name
            for name, value in expected.items()
            if not hmac.compare_digest(str(actual.get(name, "")), str(value))
        )
    )
    matched = len(expected) - len(changed)
    added = tuple(sorted(name for name in actual if name not in expected))
    return HostMatch(
        matched=matched,
        required=k,
        total=len(expected),
        changed=changed,
        ok=matched >= k and k <= len(expected),
        added=added,
    )


def required_k(signed_k: int, local_min: int) -> int:
    """The k a host must meet: the policy's signed k, raised (never lowered) by a local minimum.

    ``local_min`` comes from unsigned local settings, so it may only make a policy stricter;
    one above the number of factors a policy names makes that policy unsatisfiable (refused).
    """
    return max(signed_k, check_local_k(local_min))


def check_local_k(local_min: int) -> int:
    """``local_min`` when it is a non-negative integer; else ValueError (misuse)."""
    if isinstance(local_min, bool) or not isinstance(local_min, int) or local_min < 0:
        raise ValueError(
            f"the local host-factor minimum must be an integer >= 0, not {local_min!r}."
        )
    return local_min


def tpm_present(root: Path = Path("/")) -> bool:
    """Whether a TPM 2.0 character device exists (``/dev/tpmrm0`` or ``/dev/tpm0``)."""
    return any((Path(root) / "dev" / name).exists() for name in ("tpmrm0", "tpm0"))


def binding_strength(root: Path = Path("/"), *, tpm_sealed: bool = False) -> str:
    """``"strong"`` only when the identity key is sealed to a TPM that is present, else ``"soft"``.

    TPM sealing is not implemented in this release, so callers pass ``tpm_sealed=False`` and the
    answer is ``"soft"`` even on a machine with a TPM: status output must not claim a binding
    that does not exist. (A TEE/TPM profile will only change where the root key comes from.)
    """
    return "strong" if tpm_sealed and tpm_present(root) else "soft"


# -- sources ----------------------------------------------------------------------------------


def _factor_message(name: str, value: str) -> bytes:
    return b"kapp/v1 host-factor\x00" + name.encode("utf-8") + b"\x00" + value.encode("utf-8")


def _put(factors: dict[str, str], name: str, value: str | None) -> None:
    """Keep a real value; drop placeholders such as all-zero or all-ff ids."""
    value = (value or "").strip()
    if value.lower() not in _NULL_VALUES and set(value.lower()) - set("0f-:"):
        factors[name] = value


def _read(path: Path) -> str | None:
    """First ``_MAX_VALUE`` characters of a small text file, stripped; None if unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_VALUE)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").strip().strip("\x00").strip()
    return text or None


def _dmi_uuid(root: Path) -> str | None:
    value = _read(root / "sys/class/dmi/id/product_uuid")
    return value.lower() if value else None


def _root_disk_serial(root: Path) -> str | None:
    """Serial of the disk holding ``root``; else of the first physical disk; else a by-id name."""
    disk = _disk_of(root)
    candidates = [disk] if disk else []
    sys_block = root / "sys/block"
    if sys_block.is_dir():
        candidates += [p for p in sorted(sys_block.iterdir()) if _is_physical_disk(p)]
    for candidate in candidates:
        for rel in _SERIAL_FILES:
            value = _read(candidate / rel)
            if value and value.lower() not in _NULL_VALUES:
                return value
    return _by_id_serial(root)


def _disk_of(root: Path) -> Path | None:
    """Map the device of ``root`` to its sysfs disk: partition → disk, device-mapper → its slave."""
    try:
        dev = os.stat(root).st_dev
    except OSError:
        return None
    node = root / "sys/dev/block" / f"{os.major(dev)}:{os.minor(dev)}"
    try:
        path = node.resolve(strict=True)
    except OSError:
        return None
    for _ in range(4):
        slaves = sorted((path / "slaves").iterdir()) if (path / "slaves").is_dir() else []
        if slaves:
            path = slaves[0].resolve()
        elif (path / "partition").exists():
            path = path.parent
        else:
            return path
    return path


def _is_physical_disk(path: Path) -> bool:
    return not path.name.startswith(_VIRTUAL_DISKS) and _read(path / "removable") != "1"


def _by_id_serial(root: Path) -> str | None:
    by_id = root / "dev/disk/by-id"
    if not by_id.is_dir():
        return None
    names = sorted(
        p.name
        for p in by_id.iterdir()
        if p.name.startswith(_BY_ID_PREFIXES) and "-part" not in p.name
    )
    return names[0] if names else None


def _nic_macs(root: Path) -> dict[str, str]:
    """MACs of physical NICs (those with a ``device`` link), skipping random or empty ones."""
    net = root / "sys/class/net"
    if not net.is_dir():
        return {}
    macs = {}
    for nic in sorted(net.iterdir()):
        if nic.name == "lo" or not (nic / "device").exists():
            continue
        if _read(nic / "addr_assign_type") in {"1", "3"}:  # random or set from user space
            continue
        mac = (_read(nic / "address") or "").lower()
        if mac:
            macs[nic.name] = mac
    return macs


def _gpu_uuids(root: Path) -> dict[str, str]:
    gpus = root / "proc/driver/nvidia/gpus"
    if not gpus.is_dir():
        return {}
    found = {}
    for gpu in sorted(gpus.iterdir()):
        try:
            text = (gpu / "information").read_text("utf-8", "replace")[:8192]
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "GPU UUID" and value.strip():
                found[gpu.name] = value.strip()
    return found

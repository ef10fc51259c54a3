"""Builders shared by the policy, package and model-store tests (real crypto, real files)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from secure.home import HomeLayout, HostContext, UnlockedHome, create_home
from secure.identity import PublicIdentity
from secure.issuer import IssuerKey
from secure.keys import KdfParams
from secure.models import ModelStore
from secure.package import Manifest, package_model, unseal_package_key
from secure.policy import issue_policy

FAST_KDF = KdfParams(n=2**10)
NOW = 1_800_000_000  # 2027-01-15T08:00:00Z: every test injects time; nothing reads the clock
DAY = 86_400
HOST = HostContext(
    factors={"machine-id": "a" * 64, "dmi-uuid": "b" * 64, "nic:eth0": "c" * 64, "disk": "d" * 64},
    strength="soft",
)


def write_model_dir(path: Path, *, seed: int = 0, big: int = 3 * 1024 * 1024 + 17) -> Path:
    """A model-shaped directory: a multi-chunk weights file plus small JSON files."""
    rnd = os.urandom if seed < 0 else (lambda n: bytes([seed % 251]) * n)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(big) if seed == 0 else rnd(big))
    (path / "config.json").write_text('{"model_type": "qwen2", "hidden_size": 64}')
    (path / "tokenizer.json").write_text('{"version": "1.0"}')
    return path


@dataclass
class World:
    """An issuer, one appliance home with an installed package, and a way to issue policies."""

    tmp: Path
    issuer: IssuerKey
    home: UnlockedHome
    store: ModelStore
    pkg: Path
    manifest: Manifest

    def identity(self, host: HostContext = HOST) -> PublicIdentity:
        return self.home.public_identity(host, now=NOW)

    def policy(
        self,
        *,
        serial: int = 1,
        not_before: int = NOW - DAY,
        not_after: int = NOW + 30 * DAY,
        roles: tuple[str, ...] = ("staff",),
        users: tuple[str, ...] = (),
        max_offline_s: int | None = None,
        issued_at: int = NOW - DAY,
        identity: PublicIdentity | None = None,
        issuer: IssuerKey | None = None,
        host_k: int | None = None,
        allow_finetune: bool = False,
    ) -> bytes:
        manifest, key = unseal_package_key(self.pkg, self.issuer)
        return issue_policy(
            issuer or self.issuer,
            identity=identity or self.identity(),
            grants=[(manifest.model, manifest.package_id, manifest.sha256, key, roles, users)],
            serial=serial,
            issued_at=issued_at,
            not_before=not_before,
            not_after=not_after,
            max_offline_s=max_offline_s,
            host_k=host_k,
            allow_finetune=allow_finetune,
        )


def make_home(root: Path, *, now: int = NOW) -> UnlockedHome:
    return create_home(
        HomeLayout(root), "pass phrase for tests", now=now, actor="test", params=FAST_KDF
    )


def make_world(tmp: Path, *, model_dir: Path | None = None, name: str = "m1") -> World:
    issuer = IssuerKey.generate("vendor")
    src = model_dir or write_model_dir(tmp / "src")
    pkg = tmp / "pkg"
    manifest = package_model(src, pkg, name=name, issuer=issuer.public(), now=NOW - 2 * DAY)
    home = make_home(tmp / "home")
    store = ModelStore(home)
    store.install_package(pkg, actor="admin", now=NOW - DAY)
    return World(tmp, issuer, home, store, pkg, manifest)

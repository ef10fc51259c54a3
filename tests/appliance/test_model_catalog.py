"""The model catalog: adapters listed and judged by their base model."""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.adapters import ModelCatalog
from secure.adapter import BaseRef
from tests.secure.helpers import HOST, NOW, make_world


def test_an_adapter_without_its_base_is_listed_locked(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    catalog = ModelCatalog(world.home)
    manifest = catalog.manifest("m1")
    catalog.adapters.install(
        "m1-ft",
        {"adapter.safetensors": b"x", "adapter_config.json": b"{}"},
        base=BaseRef("m1", manifest.package_id, manifest.sha256),
        data={},
        training={},
        actor="t",
        now=NOW,
    )
    assert catalog.installed() == ["m1", "m1-ft"]
    assert catalog.base_of("m1-ft") == "m1" and catalog.base_of("m1") is None
    shutil.rmtree(tmp_path / "home" / "models" / "m1")
    status = catalog.status("m1-ft", now=NOW, host=HOST)
    assert (status.unlockable, status.reason_code, status.base) == (False, "NOT_INSTALLED", "m1")
    assert status.reason.startswith("base model m1:")

"""The upload event accepts only files of this server's own upload cache (security review,
issue 12 item 1).

Found by an outside review: a logged-in staff user called the upload event through Gradio's queue
API with a forged ``FileData.path`` and the server copied its own audit log into the user's group
folder, where it was indexed. Replayed here the same way: a real server, a real login, the event
called through ``/gradio_api/queue/join`` with a forged path to each kind of target. Every attempt
must be refused and audited, copy nothing (no new file in the drop folder, its quarantine or the
upload cache), and leave the target as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gradio_http import GradioClient, file_data
from tests.ui.kit import PASSWORD, UiWorld, build

CANARY = "canary-7f3a9c1e-upload-forgery"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, UiWorld]]:
    from appliance.api.app import create_app
    from ingest.embed import Embedder
    from tests.support.server import running_server
    from ui.app import mount_ui

    world = build(tmp_path_factory.mktemp("forgery"), Embedder.load("bundled", threads=1))
    app = create_app(world.runtime)
    mount_ui(app, world.runtime)
    with running_server(app) as url:
        yield url, world
    world.close()


@pytest.fixture
def fred(served: tuple[str, UiWorld]) -> Iterator[GradioClient]:
    client = GradioClient(served[0])
    assert client.login("fred", PASSWORD).status_code in (200, 303)
    assert all(o.ok for o in client.load())
    yield client
    client.close()


def _targets(world: UiWorld, base: str) -> dict[str, str]:
    """One forged path per kind of target the review named, each holding the canary."""
    home = world.settings.home
    pending = world.settings.drop_dir / "hr" / "pending-salaries.txt"
    secret = home / "secrets" / "vendor_api_key"
    for path in (pending, secret):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{CANARY} {path.name}\n", encoding="utf-8")
        os.utime(path, (2**31 - 1, 2**31 - 1))  # never settled: the server's passes leave it
    settings_file = home / "appliance.toml"
    if not settings_file.exists():
        settings_file.write_text(f"# {CANARY}\n", encoding="utf-8")
    return {
        "audit log": str(home / "audit" / "audit.log"),
        "appliance.toml": str(settings_file),
        "another group's file": str(pending),
        "file with no extension": str(secret),
        "url": f"{base}/healthz",
        "relative path": "../" * 12 + str(settings_file).lstrip("/"),
    }


def _snapshot(world: UiWorld) -> dict[str, bytes]:
    found = {}
    for root in (world.settings.drop_dir, world.settings.home / "tmp"):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = path.read_bytes()
    return found


def _denials(world: UiWorld) -> list[Any]:
    return [e for e in world.app.secure.audit.tail(10_000) if e.action == "access.denied"]


def _refused_and_audited(
    world: UiWorld, fred: GradioClient, forged: str, before: dict[str, bytes]
) -> None:
    denied = len(_denials(world))
    target = Path(forged)
    original = target.read_bytes() if target.is_file() else None
    outcome = fred.run(fred.fn_index("on_upload"), ["finance", [file_data(forged)]])
    assert not outcome.ok, f"forged path accepted: {forged}"
    assert CANARY not in outcome.text()
    assert "BEGIN" not in outcome.text()  # no file content in the error
    new = _denials(world)[denied:]
    assert [(e.actor, e.reason) for e in new][:1] == [("user:fred", "UPLOAD_PATH")], new
    after = _snapshot(world)
    copied = {p for p, data in after.items() if p not in before or before[p] != data}
    assert not {p for p in copied if "/audit/" not in p and "sessions" not in p}, copied
    assert not any(CANARY.encode() in after[p] for p in copied)
    if original is not None:  # the audit log only grows (by the refusal)
        assert target.read_bytes()[: len(original)] == original, "the target was changed"


@pytest.mark.parametrize(
    "kind",
    [
        "audit log",
        "appliance.toml",
        "another group's file",
        "file with no extension",
        "url",
        "relative path",
    ],
)
def test_forged_path_is_refused_and_audited(
    served: tuple[str, UiWorld], fred: GradioClient, kind: str
) -> None:
    base, world = served
    forged = _targets(world, base)[kind]
    _refused_and_audited(world, fred, forged, _snapshot(world))


def test_symlink_inside_the_upload_cache_is_refused(
    served: tuple[str, UiWorld], fred: GradioClient, tmp_path: Path
) -> None:
    base, world = served
    real = fred.upload(_text_file(tmp_path, "harmless.txt", "harmless words"))[0]
    link = Path(real).with_name("link.txt")
    link.symlink_to(_targets(world, base)["appliance.toml"])
    _refused_and_audited(world, fred, str(link), _snapshot(world))
    assert link.is_symlink()


def test_a_real_upload_through_the_cache_still_works(
    served: tuple[str, UiWorld], fred: GradioClient, tmp_path: Path
) -> None:
    _, world = served
    name = "travel-rules.md"
    uploaded = fred.upload(_text_file(tmp_path, name, "# Travel\n\nTrains are booked early.\n"))
    outcome = fred.run(fred.fn_index("on_upload"), ["finance", [file_data(p) for p in uploaded]])
    assert outcome.ok, outcome.error
    assert not Path(uploaded[0]).exists(), "the cached upload stays behind"
    mine = world.runtime.uploads.status(world.app.users.get("fred"))
    assert any(u.name == name for u in mine)


def _text_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path

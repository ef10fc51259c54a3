"""D1: a model with planted canaries goes through package, install, policy, unlock, load,
20 generations and unload in a child process whose every writable location is redirected here;
then every one of those locations (and new files in the real temp dir) is scanned: no canary.

Two sources: a Hugging Face directory, and a GGUF file packaged by `appliance model package`
(dequantised in memory); for the GGUF the child also proves that the canary survived
dequantisation into the decrypted plaintext, so the scan looks for bytes that really existed."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.fixtures import build_tiny, file_contains, find_patterns, redirected_child
from tests.support.tiny_gguf import build_tiny_gguf
from tests.support.tiny_model import new_canary

CHILD = r"""
import sys
from pathlib import Path
from appliance.llm.hardening import disable_core_dumps, offline_env
offline_env()
disable_core_dumps()
from secure.home import HostContext
from secure.issuer import IssuerKey
from secure.keys import KdfParams
from secure.home import HomeLayout, create_home, unlock_home
from secure.models import ModelStore
from secure.package import package_model, unseal_package_key
from secure.policy import issue_policy
from appliance.llm.loader import LoadOptions, load_causal_lm

src, work = Path(sys.argv[1]), Path(sys.argv[2])
now = 1_800_000_000
issuer = IssuerKey.generate("vendor")
if src.is_dir():
    package_model(src, work / "pkg", name="canary", issuer=issuer.public(), now=now)
else:  # a GGUF: exactly what `appliance model package FILE.gguf` does, through the CLI
    from appliance.cli import main
    (work / "issuer.pub").write_bytes(issuer.public().to_bytes())
    try:
        main(["model", "package", str(src), "--name", "canary",
              "--issuer-pub", str(work / "issuer.pub"), "--out", str(work / "pkg")])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
create_home(HomeLayout(work / "home"), "pw", now=now, actor="t", params=KdfParams(n=2**10))
home = unlock_home(HomeLayout(work / "home"), "pw", now=now, actor="t")
store = ModelStore(home)
store.install_package(work / "pkg", actor="t", now=now)
host = home.host()
manifest, key = unseal_package_key(work / "pkg", issuer)
policy = issue_policy(issuer, identity=home.public_identity(host, now=now),
    grants=[("canary", manifest.package_id, manifest.sha256, key, ["staff"], [])],
    serial=1, issued_at=now - 10, not_before=now - 10, not_after=now + 86400)
store.install_policy(policy, actor="t", now=now, host=host)
opened = store.open_model("canary", user="u", role="staff", now=now, host=host)
patterns = [bytes.fromhex(p) for p in sys.argv[3:]]
plain = [name for name, buf in opened.files.items() if any(buf.find(p) >= 0 for p in patterns)]
loaded = load_causal_lm("canary", opened.files, options=LoadOptions())
tok = loaded.tokenizer
for i in range(20):
    ids = tok(f"question {i}: 合同 budget", return_tensors="pt").input_ids
    loaded.model.generate(ids, max_new_tokens=8, do_sample=False)
loaded.wipe()
opened.wipe()
print("planted in:", ",".join(sorted(plain)))
print("ok")
"""


def test_d1_no_canary_anywhere(tmp_path: Path) -> None:
    model = build_tiny(tmp_path / "vendor-src", with_canary=True)
    child = redirected_child(tmp_path)
    work, fake_home, tmpdir, env = child.work, child.home, child.tmp, child.env
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model.path), str(work), *_hex(model.patterns)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
    # The vendor's plaintext source directory is the only place the canary may be.
    assert find_patterns([model.path], model.patterns), "canary was not planted"
    roots = [work, fake_home, tmpdir]
    assert find_patterns(roots, model.patterns) == []
    fresh = [
        p
        for p in Path(tempfile.gettempdir()).glob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_mtime >= started
    ]
    assert [p for p in fresh if file_contains(p, model.patterns)] == []


def test_d1_gguf_import_leaves_no_canary_anywhere(tmp_path: Path) -> None:
    """`appliance model package tiny.gguf`: dequantised in memory, never on disk (T7)."""
    vendor = build_tiny_gguf(tmp_path / "vendor-src" / "canary.gguf", canary=new_canary())
    child = redirected_child(tmp_path)
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(vendor.path), str(child.work), *_hex(vendor.patterns)],
        env=child.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "ok"
    # The canary survived dequantisation: the weights and the config held it in plaintext (in
    # memory, decrypted from the package), so the scan below looks for bytes that existed.
    assert lines[-2] == "planted in: config.json,model.safetensors", lines
    assert find_patterns([vendor.path.parent], vendor.patterns) == [vendor.path]
    assert find_patterns([child.work, child.home, child.tmp], vendor.patterns) == []
    assert sorted(p.name for p in child.work.iterdir()) == ["home", "issuer.pub", "pkg"]
    fresh = [
        p
        for p in Path(tempfile.gettempdir()).glob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_mtime >= started
    ]
    assert [p for p in fresh if file_contains(p, vendor.patterns)] == []


def _hex(patterns: frozenset[bytes]) -> list[str]:
    return sorted(p.hex() for p in patterns)


def test_d1_scan_detects_a_leak(tmp_path: Path) -> None:
    """The scan itself can fail: a plaintext copy of a weight file is found."""
    model = build_tiny(tmp_path / "src", with_canary=True)
    leak = tmp_path / "leak" / "copy.bin"
    leak.parent.mkdir()
    leak.write_bytes((model.path / "model.safetensors").read_bytes())
    assert find_patterns([leak.parent], model.patterns) == [leak]


def test_d1_package_alone_holds_no_canary(tmp_path: Path) -> None:
    from secure.issuer import IssuerKey
    from secure.package import package_model

    model = build_tiny(tmp_path / "src", with_canary=True)
    package_model(
        model.path, tmp_path / "pkg", name="m", issuer=IssuerKey.generate("v").public(), now=1
    )
    assert find_patterns([tmp_path / "pkg"], model.patterns) == []

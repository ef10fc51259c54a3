"""The in-memory model loader: same tokens as ``from_pretrained``, zero copies, no files, D2.

Uses a real tiny Qwen2 model built by ``tests/support/tiny_model.py`` and real safetensors bytes.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from appliance.errors import ModelLoadError
from appliance.llm.loader import LoadedModel, LoadOptions, load_causal_lm
from appliance.llm.safetensors_mem import tensors_from_buffer
from tests.support.fixtures import TinyModel, iter_files, make_tiny_model_fixture

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "What does the appliance answer about contracts?",
    "企业知识库的合同政策是什么？",
    "Quarterly revenue 报告 and budgets 预算",
    "hello",
]

tiny = make_tiny_model_fixture(scope="module", name="tiny")


@pytest.fixture(scope="module")
def reference(tiny: TinyModel) -> tuple[object, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny.path), AutoTokenizer.from_pretrained(tiny.path)


@pytest.fixture(scope="module")
def loaded(tiny: TinyModel) -> tuple[LoadedModel, dict[str, bytearray]]:
    files = tiny.files()
    return load_causal_lm("tiny", files, options=LoadOptions()), files


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _greedy(model: object, tokenizer: object, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    inputs = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, do_sample=False, max_new_tokens=20)  # type: ignore[attr-defined]
    return out[0].tolist()


# -- the loader against from_pretrained -----------------------------------------------------------


def test_greedy_tokens_match_from_pretrained(loaded, reference) -> None:
    lm, _files = loaded
    ref_model, ref_tokenizer = reference
    outputs = []
    for prompt in PROMPTS:
        ours = _greedy(lm.model, lm.tokenizer, prompt)
        assert ours == _greedy(ref_model, ref_tokenizer, prompt), prompt
        outputs.append(ours)
    assert len({tuple(o) for o in outputs}) == len(PROMPTS)  # the prompts really differ


def test_tokenizer_matches_from_pretrained(loaded, reference) -> None:
    lm, _files = loaded
    _ref_model, ref_tokenizer = reference
    for text in [*PROMPTS, "<|im_start|>user\nhi<|im_end|>", "  spaces\tand\nnewlines  "]:
        assert lm.tokenizer(text)["input_ids"] == ref_tokenizer(text)["input_ids"]
    chat = [{"role": "system", "content": "用中文回答"}, {"role": "user", "content": "hi"}]
    ours = lm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ours == ref_tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    assert ours.endswith("<|im_start|>assistant\n")
    assert lm.tokenizer.eos_token == "<|im_end|>"


def test_parameters_are_views_of_the_decrypted_buffer(loaded) -> None:
    lm, files = loaded
    buf = files["model.safetensors"]
    lo, hi = _address(buf), _address(buf) + len(buf)
    params = dict(lm.model.named_parameters(remove_duplicate=False))
    assert params
    for name, param in params.items():
        start = param.data_ptr()
        assert lo <= start and start + param.numel() * param.element_size() <= hi, name
    assert params["lm_head.weight"].data_ptr() == params["model.embed_tokens.weight"].data_ptr()
    assert any(b is buf for b in lm.buffers)


def test_dtype_conversion_copies_once_and_zeroes_the_plaintext(tiny, reference) -> None:
    from transformers import AutoModelForCausalLM

    files = tiny.files()
    weights = files["model.safetensors"]
    lm = load_causal_lm("tiny", files, options=LoadOptions(dtype="bf16"))
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    assert not any(weights), "the fp32 plaintext must be zeroed after the bf16 copy"
    assert all(b is not weights for b in lm.buffers)
    ref = AutoModelForCausalLM.from_pretrained(tiny.path, dtype=torch.bfloat16)
    _model, ref_tokenizer = reference
    for prompt in PROMPTS[:2]:
        assert _greedy(lm.model, lm.tokenizer, prompt) == _greedy(ref, ref_tokenizer, prompt)


def test_wipe_zeroes_buffers_and_parameters(tiny) -> None:
    files = tiny.files()
    lm = load_causal_lm("tiny", files, options=LoadOptions())
    params = list(lm.model.parameters())
    assert any(bool(p.any()) for p in params)
    lm.wipe()
    assert all(not any(buf) for buf in files.values())
    assert all(not bool(p.any()) for p in params)
    assert lm.model is None and lm.tokenizer is None and lm.buffers == []


def test_sharded_checkpoint_loads_the_same(tiny, reference, tmp_path) -> None:
    ref_model, ref_tokenizer = reference
    ref_model.save_pretrained(tmp_path, max_shard_size="50KB")
    files = {p.name: bytearray(p.read_bytes()) for p in tmp_path.iterdir()}
    assert "model.safetensors.index.json" in files and len(files) > 4
    for name, data in tiny.files().items():
        if not name.startswith(("model", "config")):
            files[name] = data
    lm = load_causal_lm("tiny", files, options=LoadOptions())
    assert _greedy(lm.model, lm.tokenizer, PROMPTS[1]) == _greedy(
        ref_model, ref_tokenizer, PROMPTS[1]
    )


# -- refusals -------------------------------------------------------------------------------------


def test_memory_budget_too_small_raises_instead_of_offloading(tiny) -> None:
    files = tiny.files()
    needed = sum(
        t.numel() * t.element_size()
        for t in tensors_from_buffer(files["model.safetensors"]).values()
    )
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm("tiny", files, options=LoadOptions(max_memory_bytes=needed - 1))
    assert info.value.code == "MODEL_LOAD" and "never offloaded" in info.value.message
    assert all(not any(buf) for buf in files.values()), "a refused load leaves no plaintext"
    half = load_causal_lm(
        "tiny", tiny.files(), options=LoadOptions(dtype="bf16", max_memory_bytes=needed // 2)
    )
    assert half.model is not None
    exact = load_causal_lm("tiny", tiny.files(), options=LoadOptions(max_memory_bytes=needed))
    assert exact.model is not None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.pop("config.json"), "config.json"),
        (lambda f: f.update({"config.json": bytearray(b'{"model_type": "no-such"}')}), "no-such"),
        (lambda f: f.update({"config.json": bytearray(b"{not json")}), "JSON"),
        (lambda f: f.pop("model.safetensors"), "safetensors"),
        (lambda f: f.pop("tokenizer.json"), "tokenizer.json"),
        (lambda f: f.update({"tokenizer.json": bytearray(b'{"x": 1}')}), "tokenizer.json"),
        (lambda f: f.update({"options": LoadOptions(dtype="int4")}), "dtype"),
        (lambda f: f.update({"options": LoadOptions(device="tpu")}), "device"),
    ],
)
def test_bad_model_files_raise_model_load_error(tiny, edit, message) -> None:
    files: dict = tiny.files()
    edit(files)
    options = files.pop("options", LoadOptions())
    with pytest.raises(ModelLoadError, match=message):
        load_causal_lm("tiny", files, options=options)


def test_weights_that_do_not_fit_the_config_are_refused(tiny) -> None:
    files = tiny.files()
    state = {k: v.clone() for k, v in tensors_from_buffer(files["model.safetensors"]).items()}
    del state["model.norm.weight"]
    files["model.safetensors"] = bytearray(safetensors.torch.save(state))
    with pytest.raises(ModelLoadError, match=r"model\.norm\.weight"):
        load_causal_lm("tiny", files, options=LoadOptions())


# -- nothing written anywhere ---------------------------------------------------------------------

_NO_WRITE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from appliance.llm.hardening import offline_env
    offline_env()
    import torch._dynamo  # import-time side effects are not part of a load: see the test
    import transformers
    transformers.AutoModelForCausalLM, transformers.PreTrainedTokenizerFast
    from appliance.llm.loader import LoadOptions, load_causal_lm
    files = {p.name: bytearray(p.read_bytes()) for p in Path(sys.argv[1]).iterdir()}
    roots = [Path(r) for r in sys.argv[2:]]
    def tree():
        return sorted(str(p) for r in roots for p in r.rglob("*"))
    writes = []
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (not mode and flags & WRITE_FLAGS):
                writes.append([event, str(args[0]), str(mode)])
        elif event in ("os.mkdir", "os.rename", "os.replace", "shutil.copyfile",
                       "tempfile.mkstemp", "tempfile.mkdtemp", "os.link", "os.symlink"):
            writes.append([event, str(args[0])])
    before = tree()
    sys.addaudithook(hook)
    lm = load_causal_lm("tiny", files, options=LoadOptions())
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": "合同"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.model.generate(**ids, do_sample=False, max_new_tokens=5)
    lm.wipe()
    report = {"writes": writes, "tokens": out[0].tolist(), "before": before, "after": tree()}
    print(json.dumps(report))
    """
)


def test_load_writes_no_file_anywhere(tiny, tmp_path) -> None:
    dirs = {
        name: tmp_path / name.lower()
        for name in (
            "HOME",
            "TMPDIR",
            "HF_HOME",
            "HF_HUB_CACHE",
            "TRANSFORMERS_CACHE",
            "TORCH_HOME",
            "XDG_CACHE_HOME",
            "HF_MODULES_CACHE",
            "TORCHINDUCTOR_CACHE_DIR",
        )
    }
    for path in dirs.values():
        path.mkdir()
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="0")
    result = subprocess.run(
        [sys.executable, "-c", _NO_WRITE_SCRIPT, str(tiny.path), *map(str, dirs.values())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["tokens"]) > 5
    # During load, generate and wipe: no write, no new path, anywhere we can see.
    assert report["writes"] == []
    assert report["before"] == report["after"]
    # Importing torch leaves an empty $TMPDIR/torchinductor_<user> directory; never a file.
    assert list(iter_files([tmp_path])) == []

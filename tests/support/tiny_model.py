"""Build a real, tiny Qwen2 causal LM directory for tests (no download: everything made here).

The directory looks like a customer's fine-tuned model: ``model.safetensors`` (written by
``save_pretrained``), ``config.json``, ``generation_config.json`` and a byte-level BPE tokenizer
(``tokenizer.json``, ``tokenizer_config.json`` with a ChatML chat template,
``special_tokens_map.json``) trained on the fly on mixed English / Chinese text. Everything is
deterministic for a given seed, so tests can compare outputs across loaders.

With ``canary`` the model carries planted bytes for the D1 leak scans: the raw bytes inside a
weight tensor, and their hex form as an extra ``config.json`` field. :func:`canary_patterns` lists
what a scanner should look for.
"""

from __future__ import annotations

import json
import random
import secrets
import struct
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CANARY_TENSOR = "model.layers.0.mlp.down_proj.weight"
CANARY_CONFIG_KEY = "appliance_test_canary"
CANARY_LEN = 32

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_EN_TEXT = (
    "the appliance answers questions about contracts invoices policies reports and budgets "
    "every answer cites its sources the model runs offline on encrypted weights staff drop "
    "files into a folder and the index grows quarterly revenue rose by twelve percent"
)
_EN = _EN_TEXT.split()
_ZH = list(
    "企业知识库合同发票政策报告预算每个回答都引用来源模型在加密权重上离线运行员工把文件放进文件夹"
)


def corpus(seed: int = 0, lines: int = 400) -> list[str]:
    """Deterministic mixed English / Chinese lines to train the tokenizer on."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        en = " ".join(rng.choice(_EN) for _ in range(rng.randint(4, 12)))
        zh = "".join(rng.choice(_ZH) for _ in range(rng.randint(4, 16)))
        out.append(f"{en}。{zh}" if i % 2 else f"{zh}, {en} {i}.")
    return out


def make_canary(rng: random.Random | None = None) -> bytes:
    """32 random bytes that are also 8 small finite float32 values (|x| in [2^-7, 2)).

    Raw random bytes planted into float weights can be NaN or 1e38 and break generation; fixing
    the top byte of each little-endian float32 to a small exponent keeps 200+ random bits.
    """
    source = rng or random.SystemRandom()
    out = bytearray()
    for _ in range(CANARY_LEN // 4):
        out += bytes(source.randrange(256) for _ in range(3))
        out.append(source.choice((0x3C, 0x3D, 0x3E, 0x3F, 0xBC, 0xBD, 0xBE, 0xBF)))
    return bytes(out)


def canary_patterns(canary: bytes) -> frozenset[bytes]:
    """Every form in which a planted canary may appear on disk if plaintext leaked."""
    return frozenset({canary, canary.hex().encode(), canary.hex().upper().encode()})


def _train_tokenizer(seed: int, vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    return tokenizer.to_str()


def _write_tokenizer(out_dir: Path, seed: int, vocab_size: int) -> None:
    (out_dir / "tokenizer.json").write_text(_train_tokenizer(seed, vocab_size), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")


def _build_model(seed: int, vocab_size: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.3,  # livelier logits than 0.02: varied greedy text, not one token
        bos_token_id=None,
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),  # special tokens take the first ids
        pad_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def _plant_in_weights(model: Any, canary: bytes) -> None:
    tensor = model.get_parameter(CANARY_TENSOR)
    raw = tensor.detach().view(-1).view(torch.uint8)
    with torch.no_grad():
        raw[: len(canary)] = torch.tensor(list(canary), dtype=torch.uint8)
    values = struct.unpack(f"<{len(canary) // 4}f", canary[: len(canary) // 4 * 4])
    if not all(abs(v) < 1e3 for v in values):
        raise ValueError("canary bytes are not small finite floats; use make_canary()")


def _plant_in_config(out_dir: Path, canary: bytes) -> None:
    path = out_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config[CANARY_CONFIG_KEY] = canary.hex()
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def build_tiny_model(
    out_dir: Path, *, seed: int = 0, canary: bytes | None = None, vocab_size: int = 512
) -> Path:
    """Write a tiny Qwen2 model directory into ``out_dir`` and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(out_dir, seed, vocab_size)
    model = _build_model(seed, vocab_size)
    if canary is not None:
        _plant_in_weights(model, canary)
    model.save_pretrained(out_dir, safe_serialization=True)
    if canary is not None:
        _plant_in_config(out_dir, canary)
    return out_dir


def read_model_files(model_dir: Path) -> dict[str, bytearray]:
    """Every file of a model directory as a bytearray, as `secure/` would decrypt them."""
    return {p.name: bytearray(p.read_bytes()) for p in sorted(model_dir.iterdir()) if p.is_file()}


def new_canary() -> bytes:
    """A fresh random canary (convenience for D1 tests)."""
    return make_canary(random.Random(secrets.randbits(64)))

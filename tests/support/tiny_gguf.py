"""Build a real, tiny llama GGUF file for tests (no download: written here with ``gguf``'s writer).

The file looks like what llama.cpp's converter writes for a small instruct model: llama
architecture metadata, a byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``, the tiny
tokenizer of :mod:`tests.support.tiny_model` with its ChatML template), tied embeddings, and
quantised tensors: Q8_0 embeddings, Q4_1 matrices, F32 norms, as in the bundled SmolLM2 file.
``transformers`` loads it with ``from_pretrained(dir, gguf_file=…)``.

With ``canary`` the file carries planted bytes for the D1 scans, where they survive
dequantisation: ``blk.0.ffn_down.weight`` is stored unquantised (F32, as llama.cpp stores tensors
it does not quantise) and begins with the canary's bytes, which become the first values of
``model.layers.0.mlp.down_proj.weight`` unchanged; and its hex form is ``general.name``, which
transformers carries into the model config. :func:`gguf_canary_patterns` lists every form a
scanner should look for, including the bfloat16 halves in case a package is imported as bf16.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.tiny_model import CHATML_TEMPLATE, SPECIAL_TOKENS, _train_tokenizer

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
CANARY_GGUF_TENSOR = "blk.0.ffn_down.weight"
CANARY_HF_TENSOR = "model.layers.0.mlp.down_proj.weight"


@dataclass(frozen=True)
class TinyGguf:
    path: Path
    canary: bytes | None = None
    patterns: frozenset[bytes] = frozenset()


def _tokenizer(seed: int, vocab_size: int) -> tuple[list[str], list[str]]:
    data = json.loads(_train_tokenizer(seed, vocab_size))
    vocab: dict[str, int] = data["model"]["vocab"]
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return tokens, merges


def _shapes(vocab: int) -> dict[str, tuple[int, ...]]:
    head_dim = HIDDEN // HEADS
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (vocab, HIDDEN),
        "output_norm.weight": (HIDDEN,),
    }
    for i in range(LAYERS):
        shapes.update(
            {
                f"blk.{i}.attn_norm.weight": (HIDDEN,),
                f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
                f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, HIDDEN),
                f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, HIDDEN),
                f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
                f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
                f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
                f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
            }
        )
    return shapes


def _metadata(writer: Any, name: str, vocab: int) -> None:
    writer.add_name(name)
    writer.add_block_count(LAYERS)
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(vocab)


def _tokenizer_metadata(writer: Any, tokens: list[str], merges: list[str]) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL_TOKENS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)


def _tensor(writer: Any, gguf: Any, name: str, values: np.ndarray, *, keep_f32: bool) -> None:
    kind = gguf.GGMLQuantizationType
    if values.ndim == 1 or keep_f32:
        writer.add_tensor(name, values)
        return
    qtype = kind.Q8_0 if name == "token_embd.weight" else kind.Q4_1
    writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)


def build_tiny_gguf(
    path: Path, *, seed: int = 0, canary: bytes | None = None, vocab_size: int = 512
) -> TinyGguf:
    """Write a tiny llama GGUF to ``path`` (its parent is created) and describe it."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, merges = _tokenizer(seed, vocab_size)
    rng = np.random.default_rng(seed)
    name = canary.hex() if canary is not None else "tiny-llama"
    writer = gguf.GGUFWriter(str(path), "llama", use_temp_file=False)
    _metadata(writer, name, len(tokens))
    _tokenizer_metadata(writer, tokens, merges)
    for tensor_name, shape in _shapes(len(tokens)).items():
        if len(shape) == 1:
            values = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            values = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        planted = canary is not None and tensor_name == CANARY_GGUF_TENSOR
        if planted:
            flat = values.reshape(-1)
            flat[: len(canary) // 4] = np.frombuffer(canary, dtype="<f4")
        _tensor(writer, gguf, tensor_name, values, keep_f32=planted)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    patterns = gguf_canary_patterns(canary) if canary is not None else frozenset()
    return TinyGguf(path, canary, patterns)


def gguf_canary_patterns(canary: bytes) -> frozenset[bytes]:
    """Raw float32 bytes, hex (either case), and the bfloat16 form of the canary's values."""
    import torch

    values = torch.frombuffer(bytearray(canary), dtype=torch.float32)
    bf16 = values.to(torch.bfloat16).view(torch.uint8).numpy().tobytes()  # round to nearest
    return frozenset({canary, canary.hex().encode(), canary.hex().upper().encode(), bf16})

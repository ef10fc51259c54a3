"""The query encoder compiled once with TorchScript: the same vectors, about 4 ms sooner.

A question's embedding is the largest part of retrieval time once the dense search runs in
memory (`appliance.rag.dense_memory`): 11-13 ms of a 26-31 ms hybrid search at 100k chunks on
the 2-core CPU. Most of it is PyTorch's eager dispatch over a few tokens, not arithmetic. Tracing
the sentence-transformers forward for one unpadded text, then freezing it
(``torch.jit.freeze`` + ``optimize_for_inference``) embeds msmarco questions in 8.6 ms p50
against 13.3 ms eager, measured alternately in one run (``bench/bench_latency.py``).

A trace records one input's path through Python, so it is trusted only after checking it:
:func:`trace_queries` compares the traced vectors with the eager model's on probe texts of
every kind a query can be (one token, a long sentence, text past the model's window, Chinese,
accents, the empty string) and gives up, returning the reason, if any component differs by more
than :data:`TOLERANCE`, or if anything raises. Only batches of one text are ever traced or
run: a query has no padding, so the trace's path is the one every query takes. Documents keep
the eager model (their batches are padded). The frozen module is read-only and may be called
from several request threads at once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PROBES", "TOLERANCE", "TracedQueries", "trace_queries"]

log = logging.getLogger(__name__)

#: Largest difference allowed between a traced and an eager vector component (unit vectors;
#: measured 1.5e-7 for all-MiniLM-L6-v2 over lengths 1 to 300 words).
TOLERANCE = 1e-5
_SAMPLE = "what is the travel budget of the finance group"
#: Texts the trace must reproduce before it is used: lengths 1 to past the window, scripts.
PROBES: tuple[str, ...] = (
    _SAMPLE,
    "budget",
    "",
    "预算是多少？财务部的差旅预算",
    "Straße über Größe – naïve café déjà vu?",
    " ".join(["the quarterly report on budget travel and finance"] * 70),
    "How many holidays do new staff get in their first year, and can unused days carry over?",
)


@dataclass(frozen=True)
class TracedQueries:
    """Embeds one text with the frozen trace; build it with :func:`trace_queries`."""

    module: Any  # torch.jit.ScriptModule
    preprocess: Callable[[str], dict[str, Any]]
    tensor_keys: tuple[str, ...]
    constants: tuple[tuple[str, Any], ...]  # the non-tensor features the trace baked in

    def __call__(self, text: str) -> Any:
        """A (1, dimension) float tensor, L2-normalised; ValueError where the text's features
        are not the traced kind (the caller then uses the eager model)."""
        import torch

        features = self.preprocess(text)
        if _split(features)[1] != self.constants or _keys(features) != self.tensor_keys:
            raise ValueError("the query's features differ from the traced ones")
        with torch.inference_mode():
            return self.module(*(features[k] for k in self.tensor_keys))


def trace_queries(
    model: Any, prompt: str | None, eager: Callable[[str], np.ndarray]
) -> TracedQueries | str:
    """Trace, freeze and check ``model`` (a sentence-transformers model on the CPU) for single
    queries; ``eager`` embeds one text the reference way. The traced encoder, or why not."""
    import torch

    if str(getattr(model, "device", "cpu")) != "cpu":
        return "the embedder is not on the CPU"

    def preprocess(text: str) -> dict[str, Any]:
        return dict(model.preprocess([text], prompt=prompt))

    try:
        sample = preprocess(_SAMPLE)
        keys = _keys(sample)
        tensors, constants = _split(sample)
        wrapper = _forward_module(model, keys, constants).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: the probes below are the check
            traced = torch.jit.trace(wrapper, tuple(tensors), check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        encoder = TracedQueries(frozen, preprocess, keys, constants)
        worst = max(_difference(encoder, eager, text) for text in PROBES)
    except Exception as exc:  # noqa: BLE001 - any failure means: use the eager model
        return f"tracing failed: {type(exc).__name__}: {exc}"
    if not worst <= TOLERANCE:
        return f"the traced vectors differ from the eager ones by {worst:.2e} (> {TOLERANCE:g})"
    log.debug("query encoder traced; largest difference on the probes %.2e", worst)
    return encoder


def _difference(encoder: TracedQueries, eager: Callable[[str], np.ndarray], text: str) -> float:
    traced = encoder(text).float().numpy().reshape(-1)
    reference = np.asarray(eager(text), dtype=np.float32).reshape(-1)
    if traced.shape != reference.shape or not np.isfinite(traced).all():
        return float("inf")
    return float(np.abs(traced - reference).max())


def _keys(features: dict[str, Any]) -> tuple[str, ...]:
    import torch

    return tuple(sorted(k for k, v in features.items() if isinstance(v, torch.Tensor)))


def _split(features: dict[str, Any]) -> tuple[list[Any], tuple[tuple[str, Any], ...]]:
    import torch

    tensors = [features[k] for k in _keys(features)]
    constants = tuple(
        sorted((k, v) for k, v in features.items() if not isinstance(v, torch.Tensor))
    )
    return tensors, constants


def _forward_module(model: Any, keys: Sequence[str], constants: Sequence[tuple[str, Any]]) -> Any:
    """The model's forward as a module of positional tensors (what tracing needs)."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # The pipeline's stages, not the SentenceTransformer itself: tracing reads every
            # attribute of what it traces, and the wrapper's deprecated ones log warnings.
            self.stages = torch.nn.ModuleList(model.children())

        def forward(self, *tensors: Any) -> Any:
            features = dict(zip(keys, tensors, strict=True)) | dict(constants)
            for stage in self.stages:
                features = stage(features)
            vector = features["sentence_embedding"]
            return torch.nn.functional.normalize(vector.float(), dim=-1)

    return Forward()

"""Limits for one parse (re-exported by `ingest.parse`; separate to avoid an import cycle)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParseLimits:
    """What one file may cost. The isolation layer enforces time and memory in a child process."""

    max_bytes: int = 200 * 2**20
    timeout_s: float = 120.0
    ocr: bool = True
    ocr_languages: str = "eng+chi_sim"
    max_pages: int = 2000
    max_memory_bytes: int = 4 * 2**30  # address-space limit of the parsing child process
    nice: int = 10  # the child's CPU priority is lowered by this much (0-19), so parsing
    # takes what embedding and serving leave over instead of slowing them down

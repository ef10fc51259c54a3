"""The nine fields that name and show one passage, shared by a retrieved passage
(:class:`~appliance.rag.retrieve.Passage`), an answer's numbered source
(:class:`~appliance.rag.answer_types.Source`) and a source opened again from its chunk id
(:class:`~appliance.access.SourceView`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PassageFields:
    chunk_id: str
    doc_id: str
    document: str  # display name: the path below the drop folder
    group: str
    title: str
    section: tuple[str, ...]
    page_start: int | None
    page_end: int | None
    text: str

    def passage_fields(self) -> dict[str, Any]:
        """The nine fields as keyword arguments, to build another of the three types."""
        return {f.name: getattr(self, f.name) for f in fields(PassageFields)}

    def fields_dict(self) -> dict[str, Any]:
        """The nine fields for JSON (the section as a list)."""
        return self.passage_fields() | {"section": list(self.section)}

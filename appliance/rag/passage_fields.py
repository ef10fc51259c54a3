"""The nine fields that name and show one passage, shared by a retrieved passage
(:class:`~appliance.rag.retrieve.Passage`), an answer's numbered source
(:class:`~appliance.rag.answer_types.Source`) and a source opened again from its chunk id
(:class:`~appliance.access.SourceView`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.registry import Document
    from ingest.schema import PassageText


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


def opened_fields(chunk_id: str, doc: Document, body: PassageText) -> dict[str, Any]:
    """The nine fields of chunk ``chunk_id`` of ``doc``, its sealed payload opened as ``body``."""
    return {
        "chunk_id": chunk_id,
        "doc_id": doc.doc_id,
        "document": doc.rel_path,
        "group": doc.group,
        "title": body.title,
        "section": body.section_path,
        "page_start": body.page_start,
        "page_end": body.page_end,
        "text": body.text,
    }

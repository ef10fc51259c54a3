"""The ingestion pipeline: drop folder → parse → chunk → embed → encrypt → Milvus → registry.

Crash safety, step by step for one file (a `kill -9` may hit anywhere):

1. parse and chunk (in a child process, see `ingest.isolate.parse_and_chunk_isolated`), then
   embed and encrypt, all in memory (nothing recorded yet);
2. the registry records a new version as ``indexing`` (one transaction);
3. its chunks are written to Milvus under (doc_id, version); inbox originals go into the vault;
4. one registry transaction makes the version current and moves the BM25 statistics;
5. superseded versions' chunks and vault copies are deleted;
6. inbox only: the original is removed from the drop folder.

Steps 2-6 and the recovery are `ingest.version_writer`; a file that fails is recorded and
quarantined by `ingest.failures`. :meth:`Pipeline.recover` (run before every pass) deletes the
chunks and vault copies of versions that never became current or were superseded, so a restart
leaves no duplicates and no orphan chunks; a file whose step 6 did not happen is recognised by
its keyed content hash and removed.

Work split on two cores (see `ingest.stages`): worker threads wait for parse children, which
also chunk and count BM25 terms (they need only the embedder's tokenizer, sent as JSON) and run
at a lower CPU priority; the worker threads key the terms (the BM25 key never leaves this
process), and parsing runs ahead while few parsed chunks wait. The embedding thread embeds on
one torch thread while the caller's thread writes the file before to Milvus and the registry.
An embedder without a fast tokenizer (``tokenizer_json`` None) gets its chunks made in the
worker thread instead.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from secure.records import RecordCipher
from secure.vault import DocumentVault

from .drop import (
    Candidate,
    Link,
    is_settled,
    keyed_digest,
    open_candidate,
    survey,
    valid_group,
)
from .elements import ParsedDocument
from .errors import Changed, IngestError, LinkRefused, Rejected, StoreUnavailable
from .failures import FailureLog, group_problem, rejected, skipped
from .isolate import parse_and_chunk_isolated, parse_isolated
from .jobs import EmbedderLike, Events, FileResult, IngestOptions, JobReport, Prepared
from .prechunk import ChunkedDocument, ChunkSpec, chunk_and_count, keyed_term_freqs
from .reasons import INTERNAL
from .registry import Document, Registry
from .retry import Retrier
from .safefs import open_below
from .scratch import scratch_copy
from .sparse import TermHasher
from .stages import ParseAhead, Prefetch, resolved
from .store import ChunkStore
from .version_writer import VersionWriter

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(
        self,
        *,
        drop: Path,
        registry: Registry,
        store: ChunkStore,
        embedder: EmbedderLike,
        hasher: TermHasher,
        cipher: RecordCipher,
        content_key: bytes,
        vault: DocumentVault | None,
        options: IngestOptions,
        events: Events | None = None,
        clock: Callable[[], float] = time.time,
        retry_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if options.mode == "inbox" and vault is None:
            raise ValueError("inbox mode needs the document vault")
        self.drop, self.registry, self.store = drop, registry, store
        self.embedder, self.hasher, self.cipher = embedder, hasher, cipher
        self.content_key, self.vault, self.options = content_key, vault, options
        self.events, self.clock = events, clock
        # rides out Milvus outages (ingest.retry); a service passes a sleep that its shutdown
        # interrupts (by raising StoreUnavailable), so a pass never outlives the process
        self.milvus = Retrier(options.retry, sleep=retry_sleep)
        self.failures = FailureLog(self.source, drop, registry, cipher)
        self.writer = VersionWriter(
            self.source, registry, store, cipher, vault, self.milvus, options.bm25
        )
        tokenizer = embedder.tokenizer_json
        self._chunk_spec = ChunkSpec.build(tokenizer, options.chunking) if tokenizer else None

    @property
    def source(self) -> str:
        return self.options.mode

    # ----- one pass over the drop folder ------------------------------------------------------
    def run_once(
        self, *, progress: Callable[[FileResult], None] | None = None, settle: bool = True
    ) -> JobReport:
        started, retried = self.clock(), (self.milvus.retries, self.milvus.waited_s)
        job = JobReport(self.registry.start_job(f"ingest-{self.source}"))
        try:
            self.recover()
            self._run(job, progress, settle)
        except StoreUnavailable:  # waited milvus.retry_for_s: stop, quarantining nothing
            self._end_job(job, started, retried, "failed")
            raise
        self._end_job(job, started, retried, "done")
        return job

    def _end_job(
        self, job: JobReport, started: float, retried: tuple[int, float], status: str
    ) -> None:
        job.seconds = self.clock() - started
        job.milvus_retries = self.milvus.retries - retried[0]
        job.milvus_wait_s = self.milvus.waited_s - retried[1]
        if status == "done" and all(f.outcome == "unchanged" for f in job.files):
            self.registry.forget_job(job.job_id)  # an idle pass leaves no rows behind
            return
        self.registry.finish_job(job.job_id, status=status, counts=json.dumps(job.totals))

    def _run(
        self, job: JobReport, progress: Callable[[FileResult], None] | None, settle: bool
    ) -> None:
        ready, present, links = self._ready(settle)
        if self.source == "mirror":
            for result in self._sync_deletions(present):
                self._finish(job, result, progress)
        for result in self._links(links):
            self._finish(job, result, progress)
        todo: list[tuple[Candidate, str]] = []
        for candidate in ready:
            planned = self._plan(candidate)
            if isinstance(planned, FileResult):
                self._finish(job, planned, progress)
            else:
                todo.append((candidate, planned))
        # Largest first: big files take longest to parse, and small ones then fill the end of
        # the batch, so the embedder is not left waiting for one long parse at the end
        # (a simulation of the shared corpus with the measured times: 0.85 -> 0.90 of the
        # embedder's throughput). A stable sort: equal sizes keep the folder's order.
        todo.sort(key=lambda item: -item[0].size)
        parsed = ParseAhead(
            todo,
            self._parse_item,
            workers=self.options.parse_ahead,
            weight=_chunk_count,
            max_weight=self.options.ahead_chunks,
            max_items=self.options.ahead_files,
        )
        with parsed, Prefetch(parsed, self._embed_item, ahead=2) as embedded:
            for future in embedded:
                (candidate, digest), step = future.result()
                self._finish(job, self._process(candidate, digest, step), progress)

    def _finish(
        self, job: JobReport, result: FileResult, progress: Callable[[FileResult], None] | None
    ) -> None:
        job.files.append(result)
        self.registry.record_file(
            job.job_id,
            rel_path=result.rel_path,
            doc_id=result.doc_id,
            outcome=result.outcome,
            reason=result.reason,
            stages=json.dumps(result.stages),
        )
        if self.events is not None and result.outcome != "unchanged":
            self.events.file_done(result)
        if progress is not None:
            progress(result)

    def _ready(self, settle: bool) -> tuple[list[Candidate], set[str], list[Link]]:
        now = self.clock()
        entries = list(survey(self.drop))
        found = [c for c in entries if isinstance(c, Candidate)]
        links = [c for c in entries if isinstance(c, Link)]
        present = {c.rel_path for c in entries}
        if settle:
            found = [c for c in found if is_settled(c, now=now, settle_s=self.options.settle_s)]
        return found, present, links

    def _links(self, links: list[Link]) -> Iterable[FileResult]:
        """Report each link once (registry failure ``symlink``, audited); never follow it.
        Mirror mode: a document whose file became a link is deleted from the index."""
        for link in links:
            existing = self.registry.find(self.source, link.rel_path)
            if existing is not None and existing.error_code == LinkRefused.code:
                yield FileResult(link.rel_path, "unchanged", existing.doc_id, link.group)
                continue
            if self.source == "mirror" and existing is not None and existing.status == "indexed":
                self.delete_document(existing.doc_id)
                yield FileResult(link.rel_path, "deleted", existing.doc_id, link.group)
            candidate = Candidate(self.drop / link.rel_path, link.rel_path, link.group, 0, 0.0)
            failure = rejected(candidate, LinkRefused(link.rel_path))
            yield self.failures.record(candidate, failure, None)

    # ----- one file ---------------------------------------------------------------------------
    def _parse_item(self, item: tuple[Candidate, str]) -> Prepared | FileResult:
        return self._parse_step(item[0])

    def _embed_item(self, item: tuple[_Todo, Future[Prepared | FileResult]]) -> _Embedded:
        """Runs in the embedding thread (see `ingest.stages`); never raises."""
        todo, parsed = item
        return todo, resolved(lambda: self._embed_step(parsed.result()))

    def _embed_step(self, step: Prepared | FileResult) -> Prepared | FileResult:
        return step if isinstance(step, FileResult) else self._prepare(step)

    def _parse_step(self, candidate: Candidate) -> Prepared | FileResult:
        """Runs in a worker thread (the parse and, normally, the chunking run in a child)."""
        if not candidate.group or not valid_group(candidate.group):
            return rejected(candidate, Rejected(group_problem(candidate), code="no-group"))
        t0 = time.perf_counter()
        try:
            with open_candidate(candidate) as source:  # the child parses this open file
                if self._chunk_spec is None:
                    parsed = parse_isolated(source, limits=self.options.limits)
                    chunked = self._chunk_here(parsed)
                else:
                    chunked = parse_and_chunk_isolated(
                        source, limits=self.options.limits, chunking=self._chunk_spec
                    )
            t1 = time.perf_counter()
            prepared = self._keyed(chunked, {"parse_s": t1 - t0 - chunked.chunk_s})
        except Rejected as exc:
            return rejected(candidate, exc)
        prepared.stages["chunk_s"] = chunked.chunk_s + time.perf_counter() - t1
        return prepared

    def _chunk_here(self, parsed: ParsedDocument) -> ChunkedDocument:
        """Chunking and BM25 term counting in this process (documents that did not come from
        a parse child, or an embedder without a fast tokenizer)."""
        t0 = time.perf_counter()
        chunked = chunk_and_count(
            parsed, params=self.options.chunking, count_tokens=self.embedder.count_tokens
        )
        return replace(chunked, chunk_s=time.perf_counter() - t0)

    def _keyed(self, chunked: ChunkedDocument, stages: dict[str, float]) -> Prepared:
        """The chunks with their keyed term ids; the BM25 key never leaves this process."""
        if not chunked.chunks:
            raise Rejected("The document holds no text to index.", code="empty")
        tfs = [keyed_term_freqs(counts, self.hasher) for counts in chunked.term_counts]
        return Prepared(chunked.document, list(chunked.chunks), None, stages, tfs)

    def _plan(self, candidate: Candidate) -> FileResult | str:
        """An ``unchanged`` result, or the keyed content hash of a file that needs work.

        Mirror mode skips files whose size is unchanged and whose modification time predates
        the last pass without reading them (rsync-style); inbox mode always hashes, and a file
        re-dropped after a failure is tried again.
        """
        existing = self.registry.find(self.source, candidate.rel_path)
        if (
            self.source == "mirror"
            and existing is not None
            and existing.size == candidate.size
            and existing.updated_at >= candidate.mtime
            and existing.status in ("indexed", "failed")
        ):
            return FileResult(candidate.rel_path, "unchanged", existing.doc_id, candidate.group)
        try:
            with open_candidate(candidate) as opened:
                digest = keyed_digest(self.content_key, opened)
                if existing is None or not self._done(existing, digest):
                    return digest
                if self.source == "inbox" and existing.status == "indexed":
                    opened.unlink_if_same()  # already in the vault
        except (Changed, FileNotFoundError) as exc:
            return skipped(candidate, exc)
        except Rejected as exc:
            return self.failures.record(candidate, rejected(candidate, exc), None)
        return FileResult(candidate.rel_path, "unchanged", existing.doc_id, candidate.group)

    def _done(self, existing: Document, digest: str) -> bool:
        """Already indexed (or, mirror mode, failed) with this content. Inbox mode tries a
        failed file again, unless it was left in place because its quarantine folder is a
        link."""
        done = ("indexed", "failed") if self.source == "mirror" else ("indexed",)
        same = existing.content_hmac == digest
        return same and (existing.status in done or existing.error_code == LinkRefused.code)

    def _process(
        self,
        candidate: Candidate,
        digest: str,
        future: Future[Prepared | FileResult],
        *,
        quarantine_file: bool = True,
    ) -> FileResult:
        """Finish one file; any error becomes a quarantine with its reason (the batch goes on).

        The log names the file and the kind of failure only: an exception's text can quote the
        document, so it goes into the sealed detail (`ingest.reasons`), traceback included."""
        try:
            step = future.result()
            if isinstance(step, FileResult):
                return self.failures.record(candidate, step, digest, quarantine_file)
            return self.writer.write(candidate, step, digest)
        except Changed as exc:  # the file was replaced or is gone since the scan
            return skipped(candidate, exc)
        except StoreUnavailable:  # not the file's fault: the job stops, the file stays
            raise
        except IngestError as exc:  # Rejected, a missing tool, Milvus refusing the write...
            if not isinstance(exc, Rejected):
                log.error("ingesting %s failed [%s]", candidate.rel_path, exc.code)
            failure = rejected(candidate, exc)
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch
            log.error(
                "ingesting %s failed [%s: %s]; `appliance docs show` with --details has it",
                candidate.rel_path,
                INTERNAL,
                type(exc).__name__,
            )
            failure = rejected(candidate, IngestError("Indexing failed.", code=INTERNAL))
            failure.detail = "".join(traceback.format_exception(exc))
        return self.failures.record(candidate, failure, digest, quarantine_file)

    def _prepare(self, step: Prepared) -> Prepared:
        t0 = time.perf_counter()
        vectors = self.embedder.embed_documents([c.embed_text for c in step.chunks])
        stages = dict(step.stages, embed_s=time.perf_counter() - t0)
        return Prepared(step.parsed, step.chunks, vectors, stages, step.tfs)

    # ----- deletions, recovery ----------------------------------------------------------------
    def _sync_deletions(self, present: set[str]) -> Iterable[FileResult]:
        for doc in self.registry.documents(source="mirror"):
            if doc.rel_path not in present and doc.status in ("indexed", "failed"):
                self.delete_document(doc.doc_id)
                yield FileResult(doc.rel_path, "deleted", doc.doc_id, doc.group)

    def index_parsed(self, items: Sequence[tuple[str, str, ParsedDocument]]) -> list[FileResult]:
        """Index already-parsed documents, given as (name, group, document), through the same
        chunk → embed → encrypt → Milvus → registry path as files (used by `appliance eval`
        and imports that do not come from files). Embeds all of them in one batch."""
        prepared: list[tuple[Candidate, str, Prepared]] = []
        for name, group, parsed in items:
            text = "\n".join(e.text for e in parsed.elements).encode("utf-8")
            digest = hmac.new(self.content_key, text, hashlib.sha256).hexdigest()
            candidate = Candidate(Path(name), name, group, len(text), 0.0)
            try:
                step = self._keyed(self._chunk_here(parsed), {})
            except Rejected:
                step = Prepared(parsed, [], None, {})
            prepared.append((candidate, digest, step))
        texts = [c.embed_text for _, _, p in prepared for c in p.chunks]
        vectors = iter(self.embedder.embed_documents(texts)) if texts else iter(())
        results = []
        for candidate, digest, p in prepared:
            if not p.chunks:
                failure = rejected(candidate, Rejected("No text to index.", code="empty"))
                results.append(self.failures.record(candidate, failure, digest, move=False))
                continue
            batch = [next(vectors) for _ in p.chunks]
            results.append(
                self.writer.write(
                    candidate,
                    Prepared(p.parsed, p.chunks, batch, {}, p.tfs),
                    digest,
                    original=False,
                )
            )
        return results

    def reindex(self, doc_id: str, *, unchanged_only: bool = False) -> FileResult:
        """Index a document again from its original: the vault copy (inbox) or the live file
        (mirror). A vault copy is decrypted into a memory file system, never onto disk.
        ``unchanged_only``: refuse (code ``changed``) an original whose content differs from
        the indexed one (`docs verify --repair` restores what was indexed, nothing newer)."""
        doc = self.registry.get(doc_id)
        if doc is None or doc.status != "indexed":
            raise IngestError(
                f"No indexed document {doc_id}.",
                code="not-found",
                hint="See `appliance docs list`.",
            )
        expect = doc.content_hmac if unchanged_only else None
        if doc.source == "mirror":
            return self._reindex_from(self.drop, doc.rel_path, doc.group, expect)
        if self.vault is None or not doc.vault_id:
            raise IngestError(
                f"{doc_id} has no stored original to re-index from.", code="no-original"
            )
        with scratch_copy(doc.rel_path, self.vault.open_bytes(doc.vault_id)) as root:
            return self._reindex_from(root, doc.rel_path, doc.group, expect)

    def _reindex_from(
        self, root: Path, rel_path: str, group: str, expect: str | None = None
    ) -> FileResult:
        try:
            with open_below(root, rel_path) as opened:
                digest, info = keyed_digest(self.content_key, opened), opened.info
        except (OSError, Rejected) as exc:
            raise IngestError(
                f"The original of {rel_path} is gone or unreadable: {exc}", code="not-found"
            ) from None
        if expect is not None and digest != expect:
            raise IngestError(
                f"{rel_path} has changed since it was indexed.",
                code="changed",
                hint="The next ingest pass indexes its new content.",
            )
        identity = (info.st_dev, info.st_ino)
        candidate = Candidate(
            root / rel_path, rel_path, group, info.st_size, info.st_mtime, identity
        )
        done = resolved(lambda: self._embed_step(self._parse_step(candidate)))
        result = self._process(candidate, digest, done, quarantine_file=False)
        if result.outcome == "failed":
            result.reason += " (the previous version stays indexed)"
        return result

    def delete_document(self, doc_id: str) -> None:
        self.writer.delete_document(doc_id)

    def recover(self) -> int:
        """Delete what interrupted or superseded versions left in Milvus and the vault."""
        return self.writer.recover()


_Todo = tuple[Candidate, str]  # a file and its keyed content hash
_Embedded = tuple[_Todo, Future[Prepared | FileResult]]


def _chunk_count(step: Prepared | FileResult) -> int:
    return len(step.chunks) if isinstance(step, Prepared) else 0


__all__ = ["FileResult", "IngestError", "IngestOptions", "JobReport", "Pipeline"]

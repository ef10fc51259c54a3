"""Load harness (issue 5): simulated staff against a running appliance server on loopback.

Each simulated staff member logs in once through the web login (CSRF token, session cookie),
opens the page, then loops until the deadline: a question through ``/v1/chat/completions``
(streaming or not, with their own API key) or a ``/v1/search``, sometimes opening a source of
their own group through the session (``/ui/source/…``) or probing a chunk id of a group they are
not in (must be 403), then a random think time. Every request's latency and status is recorded,
and every answer is checked for access control: no source of a foreign group and no planted
per-group code ("vault code") of a foreign group anywhere in answers, snippets or passages.

Used by ``tests/ui/test_load.py`` (in-process server, extractive, ~20 s) and
``bench/bench_load.py`` (the real `appliance serve` process, 2 minutes per mode).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.webui import csrf_token

GROUPS = ("finance", "hr", "legal", "engineering")
VAULT = {"finance": "FIN-4417", "hr": "HRX-8123", "legal": "LEG-5590", "engineering": "ENG-7302"}
LOAD_DOCS = {
    **{
        f"{g}/vault.md": f"# The {g} vault\n\nThe {g} vault code is {code}. Only members of the "
        f"{g} team may open the {g} vault, and the vault code changes every quarter.\n"
        for g, code in VAULT.items()
    },
    "finance/budget.md": "# Budget 2027\n\n## Travel\n\nThe travel budget for 2027 is 48,000 "
    "euros. Flights above 900 euros need approval by the finance director.\n",
    "hr/leave.md": "# Leave policy\n\nEvery employee has 28 days of annual leave. Unused days "
    "expire on 31 March of the following year. Parental leave lasts 16 weeks.\n",
    "legal/contracts.md": "# Contracts\n\nSupplier contracts are terminated with 90 days notice. "
    "Every contract above 50,000 euros is reviewed by the legal counsel.\n",
    "engineering/deploy.md": "# Deployment\n\nReleases are deployed on Tuesdays after the "
    "change board. A rollback must be possible within 15 minutes.\n",
    "public/canteen.md": "# Welcome\n\nThe canteen opens at 11:30 and closes at 14:00. Visitors "
    "register at the front desk.\n",
}
QUESTIONS = (
    "What is the vault code?",
    "Who may open the vault and when does the code change?",
    "What is the travel budget for 2027?",
    "How many days of annual leave do we get?",
    "How much notice do we give to terminate a supplier contract?",
    "When are releases deployed?",
    "When does the canteen open?",
    "What is AutoGen and how do its agents converse?",
    "What does the repair invoice say about the total amount?",
    "Which segments are analysed in the half-year report?",
    "年假有多少天？",
    "What is in the employee handbook about working hours?",
)
CODE_QUESTION = QUESTIONS[0]


@dataclass(frozen=True)
class Staff:
    name: str
    groups: tuple[str, ...]
    password: str
    token: str

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset((*self.groups, "public"))


def staff_groups(i: int) -> tuple[str, ...]:
    """One group each, round robin; every fifth member is in a second group as well."""
    first = GROUPS[i % len(GROUPS)]
    return (first, GROUPS[(i + 1) % len(GROUPS)]) if i % 5 == 4 else (first,)


def add_staff(app: Any, n: int, *, password: str, now: int) -> list[Staff]:
    """``n`` staff accounts (load01…) in :data:`GROUPS`, each with an API token."""
    staff = []
    for i in range(n):
        name, groups = f"load{i + 1:02d}", staff_groups(i)
        app.users.add_user(name, role="staff", groups=list(groups), password=password, now=now)
        staff.append(Staff(name, groups, password, app.users.issue_token(name, now=now)))
    return staff


@dataclass(frozen=True)
class Phase:
    name: str
    model: str  # "extractive" or "auto"
    expect_mode: str  # the answer mode every answer must have
    duration_s: float
    max_tokens: int | None = None
    think_s: tuple[float, float] = (0.5, 2.0)
    seed: int = 0
    timeout_s: float = 120.0


@dataclass
class Sample:
    kind: str  # login page chat stream search source probe
    status: int  # HTTP status; 0 when the request failed without one
    latency_s: float
    ok: bool
    ttft_s: float | None = None
    error: str = ""


@dataclass
class Tally:
    samples: list[Sample] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)
    chunks: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    code_questions: int = 0
    own_code_found: int = 0

    @property
    def questions(self) -> int:
        return sum(s.kind in ("chat", "stream") for s in self.samples)

    def errors(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]


def acl_problems(staff: Staff, sources: list[dict[str, Any]], texts: list[str]) -> list[str]:
    """Every way an answer could leak a foreign group: its sources' groups and planted codes."""
    found = [
        f"{staff.name} {staff.groups} got a source of group {s.get('group')!r}"
        for s in sources
        if s.get("group") not in staff.allowed
    ]
    foreign = [code for g, code in VAULT.items() if g not in staff.groups]
    for text in texts:
        found += [f"{staff.name} {staff.groups} saw {code}" for code in foreign if code in text]
    return found


class StaffSession:
    """One simulated staff member: a client of their own (cookie jar), their checks, their RNG."""

    def __init__(self, base: str, staff: Staff, phase: Phase, tally: Tally, seed: int) -> None:
        self.base, self.staff, self.phase, self.tally = base, staff, phase, tally
        self.rng = random.Random(seed)
        self.auth = {"Authorization": f"Bearer {staff.token}"}  # the API; the UI uses the cookie
        self.client = httpx.AsyncClient(base_url=base, timeout=phase.timeout_s)

    async def run(self, deadline: float) -> None:
        async with self.client:
            if not await self.login():
                return
            while time.monotonic() < deadline:
                await self.step()
                await asyncio.sleep(self.rng.uniform(*self.phase.think_s))

    async def step(self) -> None:
        roll, question = self.rng.random(), self.rng.choice(QUESTIONS)
        if roll < 0.2:
            await self.search(question)
        else:
            await self.ask(question, stream=roll >= 0.6)
        own, foreign = self.seen_chunks(inside=True), self.seen_chunks(inside=False)
        if own and self.rng.random() < 0.25:
            await self.source(self.rng.choice(own), own=True)
        if foreign and self.rng.random() < 0.1:
            await self.source(self.rng.choice(foreign), own=False)

    def seen_chunks(self, *, inside: bool) -> list[str]:
        """Chunk ids any staff member was shown, of this member's groups or of the others."""
        chunks = self.tally.chunks.items()
        return sorted({c for g, ids in chunks if (g in self.staff.allowed) == inside for c in ids})

    async def timed(self, kind: str, coro: Any) -> Sample:
        start = time.monotonic()
        try:
            status, problem, ttft = await coro
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            status, problem, ttft = 0, f"{type(exc).__name__}: {exc}", None
        sample = Sample(kind, status, time.monotonic() - start, not problem, ttft, problem)
        self.tally.samples.append(sample)
        return sample

    async def login(self) -> bool:
        data = {"username": self.staff.name, "password": self.staff.password}
        s = await self.timed("login", self._login(data))
        return s.ok and (await self.timed("page", self._page())).ok

    async def _login(self, data: dict[str, str]) -> tuple[int, str, None]:
        form = await self.client.get("/login")  # the form's CSRF token (and its cookie)
        r = await self.client.post("/login", data={**data, "csrf": csrf_token(form.text)})
        ok = r.status_code == 303 and "kapp_session" in self.client.cookies
        return r.status_code, "" if ok else f"login answered {r.status_code}", None

    async def _page(self) -> tuple[int, str, None]:
        r = await self.client.get("/")
        return r.status_code, "" if r.status_code == 200 else f"page {r.status_code}", None

    def body(self, question: str, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.phase.model, "stream": stream}
        body["messages"] = [{"role": "user", "content": question}]
        if self.phase.max_tokens:
            body["max_tokens"] = self.phase.max_tokens
        return body

    async def ask(self, question: str, *, stream: bool) -> None:
        run = self._stream if stream else self._chat
        await self.timed("stream" if stream else "chat", run(question))

    async def _chat(self, question: str) -> tuple[int, str, None]:
        r = await self.client.post(
            "/v1/chat/completions", json=self.body(question, False), headers=self.auth
        )
        if r.status_code != 200:
            return r.status_code, f"chat {r.status_code}: {r.text[:200]}", None
        d = r.json()
        text = d["choices"][0]["message"]["content"] or ""
        return 200, self.check_answer(question, d, text), None

    async def _stream(self, question: str) -> tuple[int, str, float | None]:
        start, ttft, text, last, sources, done = time.monotonic(), None, "", {}, [], False
        body = self.body(question, True)
        async with self.client.stream(
            "POST", "/v1/chat/completions", json=body, headers=self.auth
        ) as r:
            if r.status_code != 200:
                return r.status_code, f"stream {r.status_code}: {(await r.aread())[:200]!r}", None
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return 200, f"stream error event: {chunk['error']}", ttft
                sources += chunk.get("sources") or []
                delta = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                if delta:
                    ttft = ttft if ttft is not None else time.monotonic() - start
                    text += delta
                last = chunk if "mode" in chunk else last
        if not done or not last:
            return 200, "stream ended without [DONE] or a final chunk", ttft
        return 200, self.check_answer(question, {**last, "sources": sources}, text), ttft

    def check_answer(self, question: str, d: dict[str, Any], text: str) -> str:
        sources = d.get("sources") or []
        self.check(sources, [text, *(s.get("snippet") or "" for s in sources)])
        self.tally.modes[d.get("mode") or "none"] += 1
        if question == CODE_QUESTION:
            self.tally.code_questions += 1
            self.tally.own_code_found += any(VAULT[g] in text for g in self.staff.groups)
        if d.get("mode") != self.phase.expect_mode:
            why = d.get("fallback_reason")
            return f"mode {d.get('mode')} ({why}), not {self.phase.expect_mode}"
        return ""

    def check(self, sources: list[dict[str, Any]], texts: list[str]) -> None:
        self.tally.violations += acl_problems(self.staff, sources, texts)
        for s in sources:
            if s.get("chunk_id") and s.get("group"):
                self.tally.chunks[s["group"]].add(s["chunk_id"])

    async def search(self, question: str) -> None:
        await self.timed("search", self._search(question))

    async def _search(self, question: str) -> tuple[int, str, None]:
        r = await self.client.post(
            "/v1/search", json={"query": question, "limit": 5}, headers=self.auth
        )
        if r.status_code != 200:
            return r.status_code, f"search {r.status_code}: {r.text[:200]}", None
        data = r.json()["data"]
        self.check(data, [p.get("text") or "" for p in data])
        return 200, "", None

    async def source(self, chunk_id: str, *, own: bool) -> None:
        await self.timed("source" if own else "probe", self._source(chunk_id, own))

    async def _source(self, chunk_id: str, own: bool) -> tuple[int, str, None]:
        r = await self.client.get(f"/ui/source/{chunk_id}")
        if own:
            if r.status_code != 200:
                return r.status_code, f"own source {r.status_code}: {r.text[:200]}", None
            view = r.json()
            self.check([view], [view.get("text") or ""])
            return 200, "", None
        if r.status_code == 200:
            self.tally.violations.append(f"{self.staff.name} opened foreign chunk {chunk_id}")
        return r.status_code, "" if r.status_code in (200, 403) else f"probe {r.status_code}", None


async def run_phase(base: str, staff: list[Staff], phase: Phase) -> Tally:
    """Every staff member at once for ``phase.duration_s`` seconds (the last requests finish)."""
    tally = Tally()
    deadline = time.monotonic() + phase.duration_s
    first_seed = phase.seed * 1000
    sessions = [StaffSession(base, s, phase, tally, first_seed + i) for i, s in enumerate(staff)]
    await asyncio.gather(*(s.run(deadline) for s in sessions))
    return tally


TIMINGS = ("retrieval", "first_token", "generation")  # appliance_<name>_seconds histograms


def scrape(base: str) -> Counter[str]:
    """From ``/metrics``: ``questions:<outcome>`` (channel api) and ``<timing>_sum/_count``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=30).text
    counts: Counter[str] = Counter()
    wanted = {f"appliance_{t}_seconds_{part}" for t in TIMINGS for part in ("sum", "count")}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "appliance_questions_total" and s.labels.get("channel") == "api":
                counts[f"questions:{s.labels['outcome']}"] += int(s.value)
            elif s.name in wanted:
                counts[s.name.removeprefix("appliance_")] += s.value
    return counts


def server_side(delta: Counter[str]) -> dict[str, Any]:
    """Questions by outcome and mean server-side timings over one phase (a scrape difference)."""
    questions = {k.split(":", 1)[1]: int(v) for k, v in delta.items() if k.startswith("questions:")}
    means = {
        f"{t}_mean_ms": round(delta[f"{t}_seconds_sum"] / n * 1000, 1)
        for t in TIMINGS
        if (n := delta[f"{t}_seconds_count"])
    }
    return {"questions": questions, **means}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency(samples: list[Sample]) -> dict[str, Any]:
    ms = [s.latency_s * 1000 for s in samples]
    out = {"n": len(ms), **{f"p{q}_ms": round(percentile(ms, q), 1) for q in (50, 95, 99)}}
    ttft = [s.ttft_s * 1000 for s in samples if s.ttft_s is not None]
    if ttft:
        out["ttft_p50_ms"] = round(percentile(ttft, 50), 1)
        out["ttft_p95_ms"] = round(percentile(ttft, 95), 1)
    return out


def summary(tally: Tally, phase: Phase, wall_s: float, delta: Counter[str]) -> dict[str, Any]:
    """The JSON record of one phase: requests, errors, latency overall and per kind, ACL, and
    the server's own counters over the phase (``delta``: a :func:`scrape` difference)."""
    server = server_side(delta)
    metrics = Counter(server["questions"])
    measured = [s for s in tally.samples if s.kind not in ("login", "page")]
    kinds = sorted({s.kind for s in tally.samples})
    return {
        "model": phase.model,
        "expect_mode": phase.expect_mode,
        "max_tokens": phase.max_tokens,
        "duration_s": phase.duration_s,
        "wall_s": round(wall_s, 1),
        "requests": len(tally.samples),
        "errors": len(tally.errors()),
        "error_examples": sorted({s.error for s in tally.errors()})[:10],
        "statuses": dict(Counter(str(s.status) for s in tally.samples)),
        "throughput_rps": round(len(measured) / wall_s, 2) if wall_s else 0.0,
        "questions": tally.questions,
        "questions_per_s": round(tally.questions / wall_s, 2) if wall_s else 0.0,
        "latency": latency(measured),
        "questions_latency": latency([s for s in measured if s.kind in ("chat", "stream")]),
        "by_kind": {k: latency([s for s in tally.samples if s.kind == k]) for k in kinds},
        "answer_modes": dict(tally.modes),
        "acl_violations": len(tally.violations),
        "acl_examples": tally.violations[:10],
        "acl_probes": sum(s.kind == "probe" for s in tally.samples),
        "own_code": {"asked": tally.code_questions, "found": tally.own_code_found},
        "server": server,
        "metrics_match": sum(metrics.values()) == tally.questions,
        "metrics_completed_match": metrics["answered"] + metrics["not_found"]
        == sum(s.ok for s in tally.samples if s.kind in ("chat", "stream")),
    }

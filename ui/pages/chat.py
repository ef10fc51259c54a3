"""The chat page: streamed answers, numbered sources, mode badge, feedback and history."""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from appliance.conversations import Turn
from appliance.errors import ApplianceError

from ..context import UiContext
from ..format import mode_label, render_conversation, render_sources
from ..routes import download_url

Label = Callable[[str], Any]
AUTO = "*"  # not a valid model name: the engine's own choice
MAX_PAGES = 10_000
#: The model each page chose (by its ``session_hash``, which belongs to one login); kept on the
#: server so the ask event's inputs stay as they are. Oldest pages are forgotten first.
_CHOSEN: OrderedDict[str, str] = OrderedDict()
_KEEP = ("n", "chunk_id", "doc_id", "document", "group", "title", "section", "page_start",
         "page_end", "snippet", "score")  # fmt: skip


def build(ctx: UiContext, L: Label) -> dict[str, Any]:
    """Lay out the chat tab and wire its events; returns components other tabs update."""
    turns = gr.State([])
    conversation_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            conversation = gr.HTML(elem_id="conversation")
            question = gr.Textbox(
                label=L("chat.question"),
                placeholder=L("chat.placeholder"),
                elem_id="question",
                lines=2,
            )
            with gr.Row():
                model = gr.Dropdown(
                    label=L("chat.model"), choices=[], elem_id="model-choice", scale=2
                )
                ask = gr.Button(L("chat.ask"), variant="primary", elem_id="ask")
                new = gr.Button(L("chat.new"), elem_id="new-conversation")
                up = gr.Button(L("chat.up"), elem_id="thumbs-up", size="sm")
                down = gr.Button(L("chat.down"), elem_id="thumbs-down", size="sm")
            feedback = gr.Markdown(elem_id="feedback")
        with gr.Column(scale=2):
            gr.Markdown(L("chat.sources"), elem_id="sources-title")
            sources = gr.HTML(elem_id="sources")

    def sources_html(items: list[dict[str, Any]], request: gr.Request) -> str:
        user, lang = ctx.user(request), ctx.lang(request)
        link = download_url if ctx.access.downloads_allowed(user) else None
        return render_sources(items, lang=lang, download_url=link)

    @ctx.guarded_stream
    def on_ask(
        text: str, items: list[dict[str, Any]], conv: str | None, request: gr.Request
    ) -> Iterator[tuple[Any, ...]]:
        ctx.user(request)  # this login's own page, before anything of its state is used
        lang = ctx.lang(request)
        text = (text or "").strip()
        if not text:
            return
        turns_now = items
        for turns_now in ask_stream(ctx, request, text, items):
            yield render_conversation(turns_now, lang=lang), gr.update(), "", turns_now, conv, ""
        conv = _save(ctx, ctx.user(request).id, conv, turns_now[-1])
        panel = sources_html(turns_now, request)
        yield render_conversation(turns_now, lang=lang), panel, "", turns_now, conv, ""

    @ctx.guarded
    def on_model(value: str, request: gr.Request) -> None:
        user = ctx.user(request)
        choose(request.session_hash, value, allowed=[v for _, v in model_choices(ctx, user, "en")])

    model.input(on_model, [model], None)
    outputs = [conversation, sources, question, turns, conversation_id, feedback]
    ask.click(on_ask, [question, turns, conversation_id], outputs)
    question.submit(on_ask, [question, turns, conversation_id], outputs)

    @ctx.guarded
    def on_new(request: gr.Request) -> tuple[Any, ...]:
        ctx.user(request)  # another login's page is refused, not emptied
        return "", "", [], None, ""

    new.click(on_new, None, [conversation, sources, turns, conversation_id, feedback])

    def rate(value: int) -> Callable[..., str]:
        @ctx.guarded
        def handler(items: list[dict[str, Any]], request: gr.Request) -> str:
            user, lang = ctx.user(request), ctx.lang(request)
            if not items or not items[-1].get("question_id"):
                return ""
            ctx.conversations.rate(user.id, items[-1]["question_id"], value, now=ctx.now())
            from ..i18n import t

            return t(lang, "chat.thanks")

        return handler

    up.click(rate(1), [turns], [feedback])
    down.click(rate(-1), [turns], [feedback])
    return {
        "conversation": conversation,
        "sources": sources,
        "turns": turns,
        "conversation_id": conversation_id,
        "sources_html": sources_html,
        "model": model,
    }


def model_choices(ctx: UiContext, user: Any, lang: str) -> list[tuple[str, str]]:
    """Automatic, then every loaded model the user's role may use (adapters named as such)."""
    from ..i18n import t

    catalog = ctx.runtime.app.models
    out = [(t(lang, "chat.model_auto"), AUTO)]
    for state in ctx.runtime.models.states():
        if not state.loaded or user.role not in state.roles:
            continue
        base = catalog.base_of(state.name)
        label = t(lang, "chat.model_adapter", model=state.name, base=base) if base else state.name
        out.append((label, state.name))
    return out


def model_update(ctx: UiContext, user: Any, lang: str, session_hash: str | None) -> Any:
    choices = model_choices(ctx, user, lang)
    chosen = _CHOSEN.get(session_hash or "", AUTO)
    value = chosen if chosen in {v for _, v in choices} else AUTO
    return gr.update(choices=choices, value=value)


def choose(session_hash: str | None, value: str | None, *, allowed: list[str]) -> None:
    """Remember this page's model; a value the page was never offered means automatic."""
    if not session_hash:
        return
    _CHOSEN[session_hash] = value if value in allowed else AUTO
    _CHOSEN.move_to_end(session_hash)
    while len(_CHOSEN) > MAX_PAGES:
        _CHOSEN.popitem(last=False)


def chosen_model(request: Any) -> str | None:
    """The model this page asked for, or None for the engine's own choice."""
    value = _CHOSEN.get(getattr(request, "session_hash", None) or "", AUTO)
    return None if value == AUTO else value


def ask_stream(
    ctx: UiContext, request: Any, text: str, items: list[dict[str, Any]]
) -> Iterator[list[dict[str, Any]]]:
    """The chat turns after each event of the engine's stream for this session's user."""
    user = ctx.user(request)
    history = [(t["question"], t["answer"]) for t in items if t.get("answer")]
    items = [*items, {"question": text, "answer": "", "sources": []}]
    current = items[-1]
    yield items
    model = chosen_model(request)
    events = ctx.runtime.engine.stream(
        text, user=user, history=history, channel="ui", model=model, require_model=bool(model)
    )
    for event in events:
        if event.kind == "sources":
            current["sources"] = [s.to_dict() for s in event.sources]
        elif event.kind == "delta":
            current["answer"] += event.text
        elif event.answer is not None:
            current.update(_final(event.answer))
        yield items


def _final(answer: Any) -> dict[str, Any]:
    return {
        "answer": answer.text,
        "sources": [s.to_dict() for s in answer.sources],
        "mode": answer.mode,
        "model": answer.model,
        "question_id": answer.question_id,
        "not_found": answer.not_found,
    }


def _save(ctx: UiContext, user: str, conv: str | None, item: dict[str, Any]) -> str:
    """Append the turn to the user's encrypted history (sources without their passages)."""
    now = ctx.now()
    if conv is None:
        conv = ctx.conversations.start(user, item["question"], now=now)
    turn = Turn(
        question=item["question"],
        answer=item.get("answer", ""),
        question_id=item.get("question_id", ""),
        mode=item.get("mode", "extractive"),
        model=item.get("model") or "",
        sources=tuple({k: s.get(k) for k in _KEEP} for s in item.get("sources", ())),
        at=now,
    )
    ctx.conversations.add_turn(user, conv, turn, now=now)
    return conv


def reopen(ctx: UiContext, user: Any, conv: str) -> list[dict[str, Any]]:
    """A stored conversation as chat state; each passage is fetched again through
    :class:`appliance.access.Access`, so a source the user may no longer see stays hidden."""
    items = []
    for turn in ctx.conversations.read(user.id, conv).turns:
        sources = []
        for s in turn.sources:
            try:
                view = ctx.access.source_for(user, str(s.get("chunk_id", "")))
            except ApplianceError:
                continue
            sources.append(dict(s, text=view.text))
        items.append(
            {
                "question": turn.question,
                "answer": turn.answer,
                "sources": sources,
                "mode": turn.mode,
                "model": turn.model or None,
                "question_id": turn.question_id,
            }
        )
    return items


def mode_for(ctx: UiContext, user: Any) -> tuple[str, str | None]:
    """How this user's questions are answered now: the unlocked model only if the policy
    grants it to the user's role (otherwise the engine falls back to extractive answers)."""
    mode, model, _reason = ctx.runtime.engine.mode()
    if mode != "generative" or model is None:
        return "extractive", None
    state = next((s for s in ctx.runtime.models.states() if s.name == model), None)
    if state is None or not state.loaded or user.role not in state.roles:
        return "extractive", None
    return mode, model


def mode_text(ctx: UiContext, user: Any, lang: str) -> str:
    """The mode badge as escaped HTML (a model's name is not Markdown)."""
    mode, model = mode_for(ctx, user)
    return f"<b>{html.escape(mode_label(mode, model, lang))}</b>"

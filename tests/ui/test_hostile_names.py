"""Issue 12, items 12 and 13: file names, reasons and parser messages in the admin panes, the
upload table, the CLI and error messages.

A real appliance (tests/ui/kit.py) ingests files whose *names* are Markdown or HTML
(``[Re-login](…)``, ``<img src=x onerror=…>``) and files whose *parser errors* quote the document
(a canary cell) or name a server path (a truncated PNG). Every pane renders names as escaped text
(no link, no image), and no pane, store or listing holds the canary or the path, while an
administrator still reads the detail through `docs show --details` or the admin pane (audited).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from appliance.api.errors import to_response
from appliance.cli import cli
from appliance.errors import ConfigError, NotFound
from ingest.reasons import REASONS
from secure.errors import TamperedError
from tests.support.leaky import CANARY, canary_workbook, stored_bytes, truncated_png
from tests.ui.kit import PASSPHRASE, UiWorld, build
from ui.context import UiContext
from ui.errors import error_message
from ui.format import (
    audit_rows,
    detail_html,
    document_rows,
    html_table,
    message_html,
    status_html,
    upload_rows,
)
from ui.i18n import EN, ZH
from ui.pages.admin import documents_html, failure_details_html
from ui.pages.upload import uploads_html

LINK_NAME = "[Re-login](http:/evil.example) notes.md"  # a folder and a file: a Markdown link
IMG_NAME = "<img src=x onerror=alert(1)>.txt"
SHORT_LINK = "[Re-login](https:evil.example).xlsx"  # browsers read https:evil.example as a URL
BINARY = b"\x00\x01\x02 binary, not text \x00" * 8
# The product's reason codes with their messages in both languages (translators: keep both).
TRANSLATED = ["reason." + code for code in REASONS]


class Markup(HTMLParser):
    """The tags and the visible text of an HTML fragment."""

    def __init__(self, fragment: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text = ""
        self.feed(fragment)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text += data


def plain(fragment: str) -> str:
    """The visible text of ``fragment``; fails if it holds a link, an image or an event handler."""
    markup = Markup(fragment)
    for tag, attrs in markup.tags:
        assert tag not in ("a", "img", "script", "iframe"), (tag, fragment)
        assert not any(name.startswith("on") for name in attrs), (tag, fragment)
    return markup.text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorld]:
    from ingest.embed import Embedder

    text = "# Budget notes\n\nThe hostile-name budget notes say travel is capped at 900 euros.\n"
    w = build(
        tmp_path_factory.mktemp("hostile"),
        Embedder.load("bundled", threads=1),
        docs={f"hr/{LINK_NAME}": text},
    )
    drop = w.settings.drop_dir
    (drop / "hr" / IMG_NAME).write_bytes(BINARY)
    canary_workbook(drop / "hr" / SHORT_LINK)
    truncated_png(drop / "hr" / "scan.png")
    w.runtime.knowledge.pipeline().run_once(settle=False)
    yield w
    w.close()


@pytest.fixture(scope="module")
def ctx(world: UiWorld) -> UiContext:
    return UiContext.build(world.runtime)


def doc_id(world: UiWorld, name: str) -> str:
    doc = world.runtime.knowledge.registry.find("inbox", f"hr/{name}")
    assert doc is not None
    return doc.doc_id


def test_renderers_keep_hostile_values_as_text() -> None:
    names = [LINK_NAME, IMG_NAME, SHORT_LINK]
    upload = SimpleNamespace(name=IMG_NAME, group="hr", state="failed", code="corrupt")
    doc = SimpleNamespace(
        doc_id="doc-1",
        rel_path=f"hr/{SHORT_LINK}",
        group="hr",
        status="failed",
        pages=0,
        chunks=0,
        error_code="parse-error",
        updated_at=0,
    )
    entry = SimpleNamespace(
        seq=1,
        time=0,
        actor=f"user:{IMG_NAME}",
        action="document.upload",
        object=LINK_NAME,
        outcome="ok",
        reason="",
    )
    outputs = [
        html_table(["file"], upload_rows([upload], "en")),
        html_table(["doc"], document_rows([doc], "zh")),
        html_table(["audit"], audit_rows([entry])),
        status_html({"task": {"ingests": [{"name": n} for n in names]}}),
        message_html(f"indexed {LINK_NAME}"),
        detail_html(f"ValueError: '{IMG_NAME}'"),
    ]
    text = "".join(plain(out) for out in outputs)
    for name in names:
        assert name in text


def test_reason_codes_have_a_message_in_both_languages() -> None:
    for key in TRANSLATED:
        assert EN[key] == REASONS[key.removeprefix("reason.")]
        assert ZH[key] and ZH[key] != EN[key] and any("\u4e00" <= c <= "\u9fff" for c in ZH[key])


def test_admin_panes_show_names_as_text_and_no_parser_message(
    world: UiWorld, ctx: UiContext
) -> None:
    home = str(world.settings.home)
    everything = documents_html(ctx, "en", "", "")
    failures = documents_html(ctx, "zh", "", "failed", table_id="failures")
    for pane in (everything, failures):
        text = plain(pane)
        assert f"hr/{IMG_NAME}" in text and f"hr/{SHORT_LINK}" in text
        assert CANARY not in pane and home not in pane
    assert f"hr/{LINK_NAME}" in plain(everything)
    assert f"[parse-error] {REASONS['parse-error']}" in plain(everything)
    assert f"[corrupt] {ZH['reason.corrupt']}" in plain(failures)


def test_upload_table_shows_a_hostile_name_as_text(world: UiWorld, ctx: UiContext) -> None:
    hana = world.app.users.get("hana")
    item = ctx.uploads.save(hana, filename=IMG_NAME, source=io.BytesIO(BINARY), group="hr")
    done = ctx.uploads.wait(hana, item.id, timeout=90)
    assert (done.state, done.code, done.reason) == ("failed", "corrupt", REASONS["corrupt"])
    text = plain(uploads_html(ctx, hana, "zh"))
    assert IMG_NAME in text and ZH["reason.corrupt"] in text


def test_canary_and_paths_are_nowhere_in_clear(world: UiWorld) -> None:
    home = world.settings.home
    registry = world.runtime.knowledge.registry
    rows = {d.rel_path: d for d in registry.documents(status="failed")}
    assert rows[f"hr/{SHORT_LINK}"].error_code == "parse-error"
    assert rows["hr/scan.png"].error_code == "corrupt"
    stored = stored_bytes(home, patterns=("registry.db*", "*.reason.txt", "tasks.db*"))
    assert CANARY.encode() not in stored and str(home).encode() not in stored
    listing = cli_run(world, "docs", "list", "--json")
    assert CANARY not in listing and str(home) not in listing
    assert {r["path"]: r["error_code"] for r in json.loads(listing) if r["status"] == "failed"}[
        "hr/scan.png"
    ] == "corrupt"


def test_admins_read_the_detail_on_demand_and_it_is_audited(world: UiWorld, ctx: UiContext) -> None:
    target = doc_id(world, SHORT_LINK)
    shown = json.loads(cli_run(world, "docs", "show", target, "--details"))
    assert CANARY in shown["error_detail"] and shown["error_code"] == "parse-error"
    pane = failure_details_html(ctx, "en", target, actor="user:root")
    assert CANARY in plain(pane) and SHORT_LINK in plain(pane)
    png = failure_details_html(ctx, "en", doc_id(world, "scan.png"), actor="user:root")
    assert "scan.png" in plain(png)  # the file's path (as the parser saw it), for the admin only
    audited = [e for e in world.app.secure.audit.tail(10) if e.action == "document.details"]
    assert [e.object for e in audited[-3:]] == [target, target, doc_id(world, "scan.png")]
    assert audited[-2].actor == "user:root"


def test_errors_for_the_browser_and_the_api_hide_internal_messages() -> None:
    path = "/srv/appliance/home/sessions.db"
    internal = ConfigError(f"The session database at {path} cannot be used.", hint="Check it.")
    for message in (error_message(internal, "en"), error_message(internal, "zh")):
        assert path not in message and "CONFIG" in message
    assert "一体机" in error_message(internal, "zh")
    assert path not in error_message(TamperedError("tampered"), "en")
    mine = NotFound(f"No document {IMG_NAME}.", hint="Refresh the list.")
    assert plain(error_message(mine, "en")) == f"No document {IMG_NAME}. Refresh the list."
    body = json.loads(to_response(internal).body)["error"]
    assert path not in json.dumps(body) and body["code"] == "CONFIG" and "hint" not in body
    kept = json.loads(to_response(mine).body)["error"]
    assert kept["message"] == mine.message and kept["hint"] == "Refresh the list."
    from ui.routes import _error  # the source and download routes' JSON errors

    answered = _error(internal)
    assert answered.status_code == 500 and path not in bytes(answered.body).decode()
    assert json.loads(_error(mine).body)["error"]["message"] == mine.message


def cli_run(world: UiWorld, *args: str) -> str:
    env = {
        "APPLIANCE_HOME": str(world.settings.home),
        "APPLIANCE_PASSPHRASE": PASSPHRASE,
        "APPLIANCE__SECURITY__KDF_COST_LOG2": "10",
    }
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return str(result.output)

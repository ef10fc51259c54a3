"""`finetune data add/list/remove`: every row validated, stored encrypted, crypto-shredded."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.config import load_settings
from appliance.errors import AlreadyExists, ApplianceError, InvalidInput
from appliance.finetune.rows import ChatRow, QaRow, parse_training_file
from appliance.wiring import Appliance, init_appliance
from secure.errors import SecureError
from secure.keyring import KeyStore, retire_old_keys
from tests.support.fixtures import find_patterns

SQUAD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "squad2-train-subset"
PASSPHRASE = "correct horse battery staple"
NOW = 1_900_000_000


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Appliance:
    monkeypatch.setenv("APPLIANCE__SECURITY__KDF_COST_LOG2", "10")
    return init_appliance(load_settings(tmp_path / "home"), PASSPHRASE, now=NOW, actor="test")


def qa(question: str = "Who?", answers: list[str] | None = None, **extra: object) -> str:
    row: dict[str, object] = {
        "question": question,
        "answers": ["Ada"] if answers is None else answers,
        **extra,
    }
    return json.dumps(row, ensure_ascii=False)


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


# ----- the parser -------------------------------------------------------------------------------


def test_chat_and_qa_rows_parse_and_count() -> None:
    data = "\n".join(
        [
            chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello.")),
            "",
            qa("Who wrote it?", ["Ada"], context="It was written by Ada in 1843.", title="T"),
            qa("What is missing?", [], impossible=True, context="Nothing here."),
            qa("No context?", ["x"]),
        ]
    ).encode()
    parsed = parse_training_file(data)
    assert [type(r) for r in parsed.rows] == [ChatRow, QaRow, QaRow, QaRow]
    assert [r.line for r in parsed.rows] == [1, 3, 4, 5]
    assert parsed.counts == {"rows": 4, "chat": 1, "qa": 3, "impossible": 1, "with_context": 2}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"text": "x"}', "neither chat form"),
        (chat(("user", "Hi")), "2 to 64 messages"),
        (chat(("user", "Hi"), ("user", "again")), "taking turns"),
        (chat(("assistant", "Hi"), ("user", "x")), "taking turns"),
        (chat(("user", "Hi"), ("assistant", "  ")), "non-empty string"),
        (chat(("user", "Hi"), ("robot", "x")), "role 'robot'"),
        (qa(answers=[]), "at least one answer"),
        (qa(impossible=True), "impossible question has no answers"),
        (qa(context="Nobody is named here."), "none of its answers occurs"),
        (qa(impossible="no"), '"impossible" must be true or false'),
        (qa(colour="red"), "unknown field"),
        (qa("x" * 4001), "over the limit"),
        (json.dumps({"question": "Q?"}), '"answers" is missing'),
    ],
)
def test_each_kind_of_bad_row_is_named(line: str, why: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_training_file(f"{qa()}\n{line}\n".encode())
    assert "line 2" in info.value.message
    assert why in info.value.message
    assert info.value.code == "BAD_TRAINING_DATA"


def test_all_bad_lines_are_reported_and_non_utf8_is_caught() -> None:
    lines = [qa(), "{", qa(), b"\xff\xfe".decode("latin-1"), qa(answers=[])]
    data = "\n".join(lines).encode("utf-8").replace("ÿþ".encode(), b"\xff\xfe")
    with pytest.raises(InvalidInput) as info:
        parse_training_file(data)
    message = info.value.message
    assert "3 bad row(s), lines 2, 4, 5" in message
    assert "line 4: not UTF-8 text" in message


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(InvalidInput):
        parse_training_file(b"\n\n")


def test_the_squad_subset_parses_whole() -> None:
    parsed = parse_training_file((SQUAD / "train.jsonl").read_bytes())
    assert parsed.counts["rows"] == 4470
    assert parsed.counts["impossible"] == 348
    assert parsed.counts["with_context"] == 4470


# ----- the store --------------------------------------------------------------------------------


def _file(tmp: Path, lines: list[str]) -> Path:
    path = tmp / "train.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_add_keeps_only_ciphertext_and_records_the_hash(app: Appliance, tmp_path: Path) -> None:
    canary = secrets.token_hex(16)
    (tmp_path / "src").mkdir()
    source = _file(
        tmp_path / "src", [qa(f"What is {canary}?", [canary], context=f"The code is {canary}.")] * 3
    )
    ds = app.training_data.add(source, name="faq-2026", actor="admin", now=NOW)
    assert ds.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert ds.counts["rows"] == 3
    source.unlink()  # the source is not needed afterwards
    assert find_patterns([app.settings.home], [canary.encode()]) == []
    rows = app.training_data.open(app.training_data.get("faq-2026")).rows
    assert isinstance(rows[0], QaRow) and rows[0].answers == (canary,)
    entry = next(e for e in reversed(app.secure.audit.tail(3)) if not e.is_checkpoint)
    assert (entry.action, entry.details["sha256"]) == ("finetune.data.add", ds.sha256)


def test_a_bad_file_imports_nothing(app: Appliance, tmp_path: Path) -> None:
    source = _file(tmp_path, [qa(), qa(answers=[]), qa(), "oops"])
    with pytest.raises(InvalidInput) as info:
        app.training_data.add(source, name="bad", actor="admin", now=NOW)
    assert "lines 2, 4" in info.value.message
    assert app.training_data.list() == []
    assert not (app.settings.home / "finetune" / "data").exists() or not any(
        (app.settings.home / "finetune" / "data").iterdir()
    )
    assert not (app.secure.layout.key_stores / "finetune").exists()


def test_names_are_unique_and_checked(app: Appliance, tmp_path: Path) -> None:
    source = _file(tmp_path, [qa()])
    app.training_data.add(source, name="one", actor="a", now=NOW)
    with pytest.raises(AlreadyExists):
        app.training_data.add(source, name="ONE", actor="a", now=NOW)
    with pytest.raises(InvalidInput):
        app.training_data.add(source, name="../x", actor="a", now=NOW)


def test_an_edited_ciphertext_or_a_swapped_file_is_refused(app: Appliance, tmp_path: Path) -> None:
    a = app.training_data.add(_file(tmp_path, [qa("A?")]), name="a", actor="t", now=NOW)
    b = app.training_data.add(_file(tmp_path, [qa("B?")]), name="b", actor="t", now=NOW)
    root = app.settings.home / "finetune" / "data"
    (cont_a,) = (root / a.id).glob("*.kdoc")
    (cont_b,) = (root / b.id).glob("*.kdoc")
    shutil.copy(cont_b, cont_a)  # another data set's ciphertext under a's name
    with pytest.raises(SecureError):
        app.training_data.open(a)
    blob = bytearray(cont_b.read_bytes())
    blob[-40] ^= 1
    cont_b.write_bytes(bytes(blob))
    with pytest.raises(SecureError):
        app.training_data.open(b)


def test_remove_crypto_shreds_even_backups(app: Appliance, tmp_path: Path) -> None:
    ds = app.training_data.add(_file(tmp_path, [qa()]), name="gone", actor="t", now=NOW)
    key_path = app.secure.layout.key_stores / "finetune" / f"data-{ds.id}.json"
    backup = tmp_path / "backup.json"
    shutil.copy(key_path, backup)
    app.training_data.remove("gone", actor="admin", now=NOW)
    assert not key_path.exists()
    assert not (app.settings.home / "finetune" / "data" / ds.id).exists()
    assert app.training_data.list() == []
    keyring = app.secure.keyring
    assert key_path not in keyring.stores()
    # a backup of the key store still opens until the kek that wrapped it is retired
    context = json.loads(backup.read_text())["context"]
    KeyStore.load(backup, keyring, context=context)
    keyring.rotate()
    retire_old_keys(keyring)
    with pytest.raises(SecureError):
        KeyStore.load(backup, keyring, context=context)


def test_remove_refuses_while_an_unfinished_job_uses_it(app: Appliance, tmp_path: Path) -> None:
    ds = app.training_data.add(_file(tmp_path, [qa()]), name="busy", actor="t", now=NOW)
    app.finetune_db.add_job(
        {
            "id": "ft-0001",
            "name": "x",
            "base": "m",
            "base_package": "p",
            "base_manifest_sha256": "0" * 64,
            "dataset_id": ds.id,
            "dataset": ds.name,
            "data_sha256": ds.sha256,
            "settings": {},
            "state": "interrupted",
            "created_by": "t",
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    with pytest.raises(ApplianceError) as info:
        app.training_data.remove("busy", actor="t", now=NOW)
    assert info.value.code == "IN_USE"
    app.finetune_db.update_job("ft-0001", state="cancelled")
    app.training_data.remove("busy", actor="t", now=NOW)


# ----- the CLI ----------------------------------------------------------------------------------


def test_cli_add_list_remove(app: Appliance, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--home", str(app.settings.home)]
    env = {"APPLIANCE_PASSPHRASE": PASSPHRASE}
    bad = _file(tmp_path, [qa(), "{"])
    result = runner.invoke(
        cli, [*base, "finetune", "data", "add", str(bad), "--name", "x"], env=env
    )
    assert result.exit_code != 0
    assert "line 2" in str(result.exception) or "line 2" in result.output
    good = _file(tmp_path, [qa(), chat(("user", "Hi"), ("assistant", "Hello."))])
    result = runner.invoke(
        cli, [*base, "finetune", "data", "add", str(good), "--name", "faq"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "Imported 2 rows as faq" in result.output
    result = runner.invoke(cli, [*base, "finetune", "data", "list", "--json"], env=env)
    listed = json.loads(result.output)
    assert [d["name"] for d in listed] == ["faq"]
    assert listed[0]["counts"]["chat"] == 1
    result = runner.invoke(cli, [*base, "finetune", "data", "remove", "faq"], env=env)
    assert result.exit_code == 0, result.output
    assert "key is destroyed" in result.output

"""Docs next to code: the CLI reference, settings file, README commands and CI entry stay true."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel

from appliance.config import Settings, default_settings_text
from scripts.gen_cli_docs import render

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current() -> None:
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == render(), "run `python -m scripts.gen_cli_docs` and commit docs/cli.md"


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _fields(annotation, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


def test_every_setting_is_documented_in_the_default_file() -> None:
    text = default_settings_text()
    parsed = tomllib.loads(text)
    for dotted in _fields(Settings):
        if dotted in {"home"}:
            continue  # chosen by --home / APPLIANCE_HOME, never in the file
        section, _, key = dotted.rpartition(".")
        present = key in parsed.get(section, {}) if section else key in parsed
        # Settings without a default value (None) are shown commented out.
        assert present or f"# {key} =" in text, f"{dotted} missing from appliance.toml"


def test_every_setting_has_a_description() -> None:
    def check(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} lacks a description"
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                check(annotation)

    check(Settings)


def test_default_file_loads_as_settings(tmp_path: Path) -> None:
    from appliance.config import load_settings

    (tmp_path / "appliance.toml").write_text(default_settings_text(), encoding="utf-8")
    from_file = load_settings(tmp_path).model_dump(exclude={"home"})
    assert from_file == load_settings(tmp_path / "nowhere").model_dump(exclude={"home"})


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == [
        "make demo",
        "make test",
    ]
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"

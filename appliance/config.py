"""Settings: one TOML file (`<home>/appliance.toml`) with environment overrides.

Precedence, highest first: explicit keyword arguments (tests, CLI flags) → environment variables
``APPLIANCE__SECTION__KEY`` → files in the secrets directory → the TOML file → defaults.
Settings are loaded once at start (:func:`load_settings`) and passed down; nothing reads them at
import time. Every field carries a description; `appliance/defaults/appliance.toml` documents them
all and a test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .config_data import (
    EmbeddingSettings,
    IngestSettings,
    MilvusSettings,
    RetrievalSettings,
    SecuritySettings,
    UserSettings,
)
from .config_serving import (
    AnswerSettings,
    FinetuneSettings,
    LlmSettings,
    MonitoringSettings,
    ServeSettings,
)
from .errors import ConfigError

SETTINGS_FILE = "appliance.toml"


class Settings(BaseSettings):
    """All settings of one appliance home."""

    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE__",
        env_nested_delimiter="__",
        extra="forbid",
        secrets_dir=None,
    )

    home: Path = Field(Path("."), description="the data directory (set by --home / APPLIANCE_HOME)")
    secrets_dir: Path | None = Field(
        None,
        description="directory of secret files (e.g. /run/secrets): 'passphrase' holds the root "
        "key passphrase",
    )
    security: SecuritySettings = Field(
        default_factory=SecuritySettings,  # type: ignore[arg-type]
        description="keys, policies, trusted time and the audit log",
    )
    users: UserSettings = Field(
        default_factory=UserSettings,  # type: ignore[arg-type]
        description="accounts, passwords and login throttling",
    )
    ingest: IngestSettings = Field(
        default_factory=IngestSettings,  # type: ignore[arg-type]
        description="the drop folder, parsing and chunking",
    )
    milvus: MilvusSettings = Field(
        default_factory=MilvusSettings,  # type: ignore[arg-type]
        description="where chunks are stored",
    )
    embedding: EmbeddingSettings = Field(
        default_factory=EmbeddingSettings,  # type: ignore[arg-type]
        description="the embedding model",
    )
    retrieval: RetrievalSettings = Field(
        default_factory=RetrievalSettings,  # type: ignore[arg-type]
        description="hybrid search",
    )

    llm: LlmSettings = Field(
        default_factory=LlmSettings,  # type: ignore[arg-type]
        description="the local language model",
    )
    answer: AnswerSettings = Field(
        default_factory=AnswerSettings,  # type: ignore[arg-type]
        description="how answers are built from passages",
    )
    serve: ServeSettings = Field(
        default_factory=ServeSettings,  # type: ignore[arg-type]
        description="the HTTP server, API and web UI",
    )
    monitoring: MonitoringSettings = Field(
        default_factory=MonitoringSettings,  # type: ignore[arg-type]
        description="status, metrics and reports",
    )
    finetune: FinetuneSettings = Field(
        default_factory=FinetuneSettings,  # type: ignore[arg-type]
        description="fine-tuning jobs (LoRA) on the appliance",
    )

    @property
    def drop_dir(self) -> Path:
        return self.ingest.drop_dir or self.home / "drop"

    @property
    def milvus_uri(self) -> str:
        return self.milvus.uri or str(self.home / "milvus" / "chunks.db")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(home: Path, **overrides: object) -> Settings:
    """Load `<home>/appliance.toml` (if present) under environment overrides."""
    from pydantic import ValidationError

    toml_file = home / SETTINGS_FILE

    class HomeSettings(Settings):
        model_config = SettingsConfigDict(toml_file=toml_file if toml_file.is_file() else None)

    try:
        return HomeSettings(home=home, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"Invalid settings ({problems}).",
            hint=f"Fix {toml_file} or the APPLIANCE__… environment variables.",
        ) from exc


def write_settings(home: Path, section: str, values: Mapping[str, object]) -> list[str]:
    """Set ``values`` in ``[section]`` of ``<home>/appliance.toml``, keeping its comments and
    every other setting (the file is replaced atomically, with its permissions). Values are
    checked against the section's model first: invalid ones raise :class:`ConfigError` and
    nothing is written. Returns the environment variables that override what was written."""
    import tomlkit
    from pydantic import ValidationError

    path = home / SETTINGS_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else default_settings_text()
    doc = tomlkit.parse(text)
    if section not in doc:
        doc[section] = tomlkit.table()
    table = doc[section]
    for key, value in values.items():
        table[key] = value  # type: ignore[index]
    model = Settings.model_fields[section].annotation
    try:
        model.model_validate(table.unwrap())  # type: ignore[union-attr]
    except ValidationError as exc:
        raise ConfigError(
            f"Refusing to write invalid [{section}] settings: {exc.errors()[0]['msg']}.",
            hint=f"Check the values for {', '.join(values)}.",
        ) from None
    tmp = path.with_name(f".{SETTINGS_FILE}.tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    if path.is_file():
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)
    names = {f"APPLIANCE__{section}__{key}".upper() for key in values}
    return sorted(k for k in os.environ if k.upper() in names)


def default_settings_text() -> str:
    """The documented default settings file written by `appliance init`."""
    return (Path(__file__).parent / "defaults" / SETTINGS_FILE).read_text(encoding="utf-8")

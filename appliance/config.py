"""Settings: one TOML file (`<home>/appliance.toml`) with environment overrides.

Precedence, highest first: explicit keyword arguments (tests, CLI flags) → environment variables
``APPLIANCE__SECTION__KEY`` → files in the secrets directory → the TOML file → defaults.
Settings are loaded once at start (:func:`load_settings`) and passed down; nothing reads them at
import time. Every field carries a description; `appliance/defaults/appliance.toml` documents them
all and a test keeps the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

SETTINGS_FILE = "appliance.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecuritySettings(_Section):
    kdf_cost_log2: int = Field(
        17,
        ge=10,
        le=22,
        description="scrypt cost (log2 N) for sealing the root key and issuer keys",
    )
    host_factors_required: int = Field(
        0,
        ge=0,
        description="how many hashed host factors must match (k of n); 0 means the policy's own "
        "k (the issuer's default: all but one of three or more factors)",
    )
    clock_skew_s: int = Field(
        300,
        ge=0,
        description="allowed backwards clock skew against the trusted-time high-water mark",
    )
    question_logging: Literal["hmac", "plain", "none"] = Field(
        "hmac",
        description="how question text enters the audit log: as an HMAC (default), in plain text, "
        "or not at all",
    )
    audit_checkpoint_every: int = Field(
        100, ge=1, description="write a signed audit checkpoint every N entries"
    )
    decrypt_threads: int = Field(
        0, ge=0, description="threads used to decrypt model files (0 = all cores)"
    )


class UserSettings(_Section):
    min_password_length: int = Field(12, ge=8, description="minimum password length")
    lockout_failures: int = Field(5, ge=1, description="failed logins before an account locks")
    lockout_minutes: int = Field(15, ge=1, description="how long a locked account stays locked")
    password_cost_log2: int = Field(
        15, ge=10, le=20, description="scrypt cost (log2 N) for password hashes"
    )


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
        description="accounts, passwords and lockout",
    )

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


def default_settings_text() -> str:
    """The documented default settings file written by `appliance init`."""
    return (Path(__file__).parent / "defaults" / SETTINGS_FILE).read_text(encoding="utf-8")

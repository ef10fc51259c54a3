"""The one composition root: builds every service of a home from its settings.

Everything else receives its collaborators in the constructor; tests build objects directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from secure.home import HomeLayout, UnlockedHome, create_home, unlock_home
from secure.keys import KdfParams

from .adapters import ModelCatalog
from .config import SETTINGS_FILE, Settings, default_settings_text
from .conversations import ConversationStore
from .users import ScryptParams, UserStore

if TYPE_CHECKING:
    from ingest.schema import DenseIndex

    from .finetune.datasets import TrainingData
    from .finetune.store import FinetuneDb
    from .rag.fuse import FusionPolicy

DB_FILE = "appliance.db"
FINETUNE_DIR = "finetune"


def kdf_params(settings: Settings) -> KdfParams:
    return KdfParams(n=2**settings.security.kdf_cost_log2)


def layout_for(settings: Settings) -> HomeLayout:
    return HomeLayout(settings.home)


def dense_index(settings: Settings) -> DenseIndex:
    """The dense index the `milvus.index_type` / `hnsw_*` / `ivf_*` settings ask for."""
    from ingest.schema import DenseIndex

    m = settings.milvus
    return DenseIndex(
        kind=m.index_type,
        hnsw_m=m.hnsw_m,
        hnsw_ef_construction=m.hnsw_ef_construction,
        hnsw_ef=m.hnsw_ef,
        ivf_nlist=m.ivf_nlist,
        ivf_nprobe=m.ivf_nprobe,
    )


def dense_memory_wanted(settings: Settings) -> bool:
    """Whether `retrieval.dense_memory` asks the server for the in-memory dense index (`auto`:
    with Milvus Lite only)."""
    mode = settings.retrieval.dense_memory
    return mode == "on" or (mode == "auto" and "://" not in settings.milvus_uri)


def fusion_policy(settings: Settings) -> FusionPolicy:
    """The hybrid fusion the `retrieval.fusion*` settings ask for."""
    from .rag.fuse import FusionPolicy

    r = settings.retrieval
    return FusionPolicy(
        method=r.fusion,
        normalisation=r.fusion_normalisation,
        dense_weight=r.fusion_dense_weight,
        rrf_k=r.fusion_rrf_k,
    )


@dataclass
class Appliance:
    """Services of one unlocked home, built lazily."""

    settings: Settings
    secure: UnlockedHome
    extras: dict[str, object] = field(default_factory=dict)

    @cached_property
    def models(self) -> ModelCatalog:
        """Installed models and the adapters fine-tuned from them."""
        return ModelCatalog(
            self.secure,
            skew_s=self.settings.security.clock_skew_s,
            host_k_min=self.settings.security.host_factors_required,
        )

    @cached_property
    def users(self) -> UserStore:
        u = self.settings.users
        return UserStore.open(
            self.settings.home / DB_FILE,
            scrypt=ScryptParams(n=2**u.password_cost_log2),
            min_password_length=u.min_password_length,
            max_failures=u.lockout_failures,
            lockout_seconds=u.lockout_minutes * 60,
        )

    @cached_property
    def conversations(self) -> ConversationStore:
        """Everyone's encrypted history (migrated to per-account keys on first open)."""
        return ConversationStore.open(self.settings.home, self.secure, users=self.users)

    @cached_property
    def finetune_db(self) -> FinetuneDb:
        """Data sets, jobs and loss curves of fine-tuning (metadata only)."""
        from .finetune.store import FinetuneDb

        return FinetuneDb(self.settings.home / FINETUNE_DIR)

    @cached_property
    def training_data(self) -> TrainingData:
        """Imported training files, encrypted (one key each)."""
        from .finetune.datasets import TrainingData

        return TrainingData(
            self.secure, self.finetune_db, max_bytes=self.settings.finetune.max_data_mb * 2**20
        )


def init_appliance(settings: Settings, passphrase: str, *, now: int, actor: str) -> Appliance:
    """Create a new home: settings file, secure files, user database."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    secure = create_home(
        layout_for(settings),
        passphrase,
        now=now,
        actor=actor,
        params=kdf_params(settings),
        checkpoint_every=settings.security.audit_checkpoint_every,
    )
    settings_file = home / SETTINGS_FILE
    if not settings_file.exists():
        settings_file.write_text(default_settings_text(), encoding="utf-8")
    return Appliance(settings, secure)


def open_appliance(settings: Settings, passphrase: str, *, now: int, actor: str) -> Appliance:
    secure = unlock_home(
        layout_for(settings),
        passphrase,
        now=now,
        actor=actor,
        checkpoint_every=settings.security.audit_checkpoint_every,
    )
    return Appliance(settings, secure)


def home_exists(home: Path) -> bool:
    return HomeLayout(home).exists()

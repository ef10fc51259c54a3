"""Installed models and adapters in one catalog: an adapter is served as a model of its own.

:class:`ModelCatalog` is the home's :class:`~secure.models.ModelStore` that also knows the
adapter packages (:class:`~secure.adapter.AdapterStore`) fine-tuning made. For an adapter name
it answers with its base model's policy state, and opens it by opening the base first (every
policy check, for the serving process or a user), then the adapter, refused as tampered when it
was trained on another base than the one installed now. So an adapter is usable exactly while,
where and by whom its base is, and refused with the base's reason otherwise. Model and adapter
names share one namespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from secure.adapter import AdapterManifest, AdapterStore
from secure.errors import SecureError, TamperedError
from secure.home import HostContext, UnlockedHome
from secure.models import ModelStatus, ModelStore, OpenedModel
from secure.package import PlainBuffer, wipe_buffers


@dataclass
class OpenedAdapter(OpenedModel):
    """The base model's files plus the adapter's, all in memory; :meth:`wipe` zeroes both."""

    adapter: AdapterManifest | None = None
    adapter_files: dict[str, PlainBuffer] = field(default_factory=dict)

    def wipe(self) -> None:
        super().wipe()
        wipe_buffers(self.adapter_files.values())
        self.adapter_files.clear()


class ModelCatalog(ModelStore):
    def __init__(self, home: UnlockedHome, **kwargs: int) -> None:
        super().__init__(home, **kwargs)
        self.adapters = AdapterStore(home)

    def is_adapter(self, name: str) -> bool:
        return name in self.adapters.installed()

    def base_of(self, name: str) -> str | None:
        """The base model of adapter ``name`` (None for a model)."""
        return self.adapters.manifest(name).base.model if self.is_adapter(name) else None

    def installed(self) -> list[str]:
        return sorted({*super().installed(), *self.adapters.installed()})

    def status(
        self, name: str, *, now: int, host: HostContext, check_integrity: bool = True
    ) -> ModelStatus:
        if not self.is_adapter(name):
            return super().status(name, now=now, host=host, check_integrity=check_integrity)
        adapter = self.adapters.manifest(name)
        try:
            base = super().status(
                adapter.base.model, now=now, host=host, check_integrity=check_integrity
            )
        except SecureError as exc:  # the base model is gone: the adapter cannot be used
            return _locked(name, adapter, host, exc.code, exc.diagnostics())
        problems = tuple(self.adapters.integrity_problems(name)) if check_integrity else ()
        code, reason, unlockable = base.reason_code, base.reason, base.unlockable
        if self._base_changed(adapter):
            code, unlockable = "TAMPERED", False
            reason = f"trained on another package of {adapter.base.model} than the one installed"
        elif problems:
            code, reason, unlockable = "TAMPERED", "adapter integrity check failed", False
        elif not unlockable:
            reason = f"base model {adapter.base.model}: {reason}"
        return replace(
            base,
            name=name,
            package_id=adapter.adapter_id,
            size=adapter.total_size,
            integrity_ok=base.integrity_ok and not problems,
            integrity_problems=base.integrity_problems + problems,
            unlockable=unlockable,
            reason_code=code,
            reason=reason,
            finetune=False,  # an adapter is not fine-tuned further
            base=adapter.base.model,
        )

    def _base_changed(self, adapter: AdapterManifest) -> bool:
        try:
            return self.manifest(adapter.base.model).sha256 != adapter.base.manifest_sha256
        except SecureError:
            return False  # base not installed: its status says so

    def open_model(
        self,
        name: str,
        *,
        user: str | None,
        role: str | None,
        now: int,
        host: HostContext,
        threads: int = 0,
        purpose: str = "serve",
    ) -> OpenedModel:
        if not self.is_adapter(name):
            return super().open_model(
                name, user=user, role=role, now=now, host=host, threads=threads, purpose=purpose
            )
        adapter = self.adapters.manifest(name)
        opened = super().open_model(
            adapter.base.model, user=user, role=role, now=now, host=host, threads=threads
        )
        actor = f"user:{user}" if user is not None else f"service:{purpose}"
        try:
            files = self.adapters.open(name, base_manifest_sha256=opened.manifest.sha256)
        except TamperedError as exc:
            opened.wipe()
            self._audit_refusal("adapter.unlock", actor, now, name, exc)
            raise
        except BaseException:
            opened.wipe()
            raise
        self.home.record(
            "adapter.unlock",
            actor=actor,
            now=now,
            object=name,
            details={"adapter_id": adapter.adapter_id, "base": adapter.base.model},
        )
        return OpenedAdapter(
            name, opened.policy, opened.grant, opened.manifest, opened.files, adapter, files
        )


def _locked(
    name: str, adapter: AdapterManifest, host: HostContext, code: str, reason: str
) -> ModelStatus:
    return ModelStatus(
        name=name,
        package_id=adapter.adapter_id,
        size=adapter.total_size,
        integrity_ok=True,
        integrity_problems=(),
        policy_id=None,
        valid_from=None,
        valid_until=None,
        roles=(),
        users=(),
        binding=host.strength,
        unlockable=False,
        reason_code=code,
        reason=f"base model {adapter.base.model}: {reason}",
        base=adapter.base.model,
    )

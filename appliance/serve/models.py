"""Models a serving process holds in memory, under the policy gate.

A model is unlocked once at start (every policy check of `secure/`, then decrypt into memory and
build it without touching the disk), then handed out per request after checking the caller's user
and role against the policy's grant. A watchdog re-checks the policies periodically and at once
when the policy files or the state file (revocations) change; the request path also checks the
validity window itself, so expiry between two re-checks never serves one more answer. A model
whose policy stops passing is unloaded: running generations are cancelled, every tensor and
plaintext buffer is zeroed, the event is audited and requests are refused with the reason.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from ingest.threads import run_in_thread
from secure.errors import PolicyRefused, SecureError
from secure.home import UnlockedHome
from secure.models import ModelStore
from secure.policy import ModelGrant, authorize

from ..errors import ApplianceError, Forbidden, ModelLoadError, ModelUnavailable
from ..llm.adapter import load_served
from ..llm.loader import LoadedModel, LoadOptions

Clock = Callable[[], float]
UNLOAD_WAIT_S = 30.0
FINGERPRINT_POLL_S = 2.0


@dataclass(frozen=True)
class ModelState:
    """What status pages show about one installed model."""

    name: str
    loaded: bool
    reason_code: str  # "OK" when loaded, else why not (policy reason code, LOAD_FAILED…)
    reason: str
    policy_id: str | None = None
    valid_until: int | None = None
    binding: str = "soft"
    roles: tuple[str, ...] = ()
    last_check: float | None = None
    loaded_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loaded": self.loaded,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "policy_id": self.policy_id,
            "valid_until": self.valid_until,
            "binding": self.binding,
            "roles": list(self.roles),
            "last_check": self.last_check,
            "loaded_at": self.loaded_at,
        }


@dataclass
class Lease:
    """One request's use of a loaded model; ``cancel`` is set when the model must unload."""

    name: str
    model: LoadedModel
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Slot:
    state: ModelState
    loaded: LoadedModel | None = None
    grant: ModelGrant | None = None
    leases: set[int] = field(default_factory=set)
    cancels: dict[int, threading.Event] = field(default_factory=dict)


class ModelManager:
    """Loads, hands out, re-checks and unloads the models of one serving process."""

    def __init__(
        self,
        store: ModelStore,
        home: UnlockedHome,
        *,
        options: LoadOptions,
        clock: Clock = time.time,
        names: Sequence[str] = (),
        decrypt_threads: int = 0,
        recheck_s: float = 60.0,
        on_event: Callable[[str, str, str], None] | None = None,
        load_threads: int | None = None,
    ) -> None:
        self.store, self.home, self.options, self.clock = store, home, options, clock
        self.names = list(names)
        self.decrypt_threads, self.recheck_s = decrypt_threads, recheck_s
        #: torch threads of a load (a dtype conversion or GPU copy); it runs in a thread of its
        #: own so that no long-lived thread keeps an OpenMP team (see ``ingest.threads``).
        self.load_threads = load_threads
        self.on_event = on_event  # (event, model, reason_code): metrics hook
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Condition()
        self._gate = threading.Lock()  # one load/unload/recheck at a time
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._fingerprint = self._policy_fingerprint()
        self._last_recheck = 0.0

    # ----- loading --------------------------------------------------------------------------
    def wanted(self) -> list[str]:
        installed = self.store.installed()
        return [n for n in self.names if n in installed] if self.names else installed

    def load_all(self) -> list[ModelState]:
        for name in self.wanted():
            self.load(name)
        return self.states()

    def load(self, name: str) -> ModelState:
        with self._gate:
            return self._load(name)

    def _load(self, name: str) -> ModelState:
        now = self.clock()
        slot = self._slots.get(name)
        if slot is not None and slot.loaded is not None:
            return slot.state
        host = self.home.host()
        try:
            self.home.reload_state()
            opened = self.store.open_model(
                name,
                user=None,
                role=None,
                now=int(now),
                host=host,
                threads=self.decrypt_threads,
            )
        except SecureError as exc:
            return self._set_locked(name, exc.code, exc.diagnostics(), now, host.strength)
        try:
            # Decrypted files are bytearrays or anonymous memory maps; both expose the writable
            # buffer protocol the loader needs (views, in-place zeroing).
            files = cast(dict[str, bytearray], opened.files)
            adapter = cast(dict[str, bytearray], getattr(opened, "adapter_files", {}))
            loaded = run_in_thread(
                lambda: load_served(name, files, adapter, options=self.options),
                threads=self.load_threads,
                name=f"load-{name}",
            )
        except ModelLoadError as exc:
            self._audit("model.load", name, now, outcome="refused", reason="LOAD_FAILED")
            return self._set_locked(name, "LOAD_FAILED", exc.diagnostics(), now, host.strength)
        finally:
            opened.files.clear()  # the loader owns (and on failure has zeroed) the buffers
            getattr(opened, "adapter_files", {}).clear()
        policy, grant = opened.policy, opened.grant
        state = ModelState(
            name=name,
            loaded=True,
            reason_code="OK",
            reason="unlocked and loaded",
            policy_id=policy.policy_id,
            valid_until=policy.not_after,
            binding=host.strength,
            roles=grant.roles,
            last_check=now,
            loaded_at=now,
        )
        with self._lock:
            self._slots[name] = _Slot(state, loaded, grant)
        self._audit("model.load", name, now, details={"policy": policy.policy_id})
        self._emit("load", name, "OK")
        return state

    def _set_locked(
        self, name: str, code: str, reason: str, now: float, binding: str
    ) -> ModelState:
        state = ModelState(name, False, code, reason, binding=binding, last_check=now)
        with self._lock:
            self._slots[name] = _Slot(state)
        self._emit("refused", name, code)
        return state

    # ----- use ------------------------------------------------------------------------------
    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(n for n, s in self._slots.items() if s.loaded is not None)

    def states(self) -> list[ModelState]:
        with self._lock:
            known = {n: s.state for n, s in self._slots.items()}
        for name in self.store.installed():
            known.setdefault(name, ModelState(name, False, "NOT_LOADED", "not loaded"))
        return [known[n] for n in sorted(known)]

    def default_model(self) -> str | None:
        loaded = self.loaded()
        return loaded[0] if loaded else None

    def why_unavailable(self, name: str | None) -> ModelUnavailable:
        """The refusal for a request that needs ``name`` (or any model) but cannot have it."""
        with self._lock:
            slot = self._slots.get(name) if name else None
            states = [s.state for s in self._slots.values()]
        if name is not None and name not in self.store.installed():
            return ModelUnavailable(
                f"Model {_shown(name)} is not installed.",  # a client's name: bounded
                reason_code="UNKNOWN_MODEL",
                hint="List models with GET /v1/models.",
            )
        if slot is not None:
            return ModelUnavailable(
                f"Model {name} is locked [{slot.state.reason_code}]: {slot.state.reason}",
                reason_code=slot.state.reason_code,
                hint="Ask the administrator for a valid policy.",
            )
        first = states[0] if states else None
        return ModelUnavailable(
            "No model is unlocked"
            + (f" ({first.name}: {first.reason})" if first else " (none is installed)")
            + ".",
            reason_code=first.reason_code if first else "NO_MODEL",
            hint="Answers fall back to extractive mode; ask the administrator for a policy.",
        )

    @contextlib.contextmanager
    def lease(self, name: str | None, *, user: str, role: str) -> Iterator[Lease]:
        """Hand out a loaded model for one request, after the per-request policy checks."""
        self._expire_if_due()
        name = name or self.default_model()
        with self._lock:
            slot = self._slots.get(name) if name else None
            if slot is None or slot.loaded is None or slot.grant is None or name is None:
                raise self.why_unavailable(name)
            try:
                authorize(slot.grant, user=user, role=role)
            except PolicyRefused as exc:
                raise Forbidden(exc.message, code=exc.code, hint=exc.hint) from None
            lease = Lease(name, slot.loaded)
            slot.leases.add(id(lease))
            slot.cancels[id(lease)] = lease.cancel
        try:
            yield lease
        finally:
            with self._lock:
                slot.leases.discard(id(lease))
                slot.cancels.pop(id(lease), None)
                self._lock.notify_all()

    # ----- policy re-checks -----------------------------------------------------------------
    def recheck(self) -> list[ModelState]:
        """Check every wanted model's policy now: unload the refused, load the newly allowed."""
        with self._gate:
            now = self.clock()
            self._last_recheck = now
            self._fingerprint = self._policy_fingerprint()
            self.home.reload_state()
            host = self.home.host()
            for name in self.wanted():
                self._recheck_one(name, now, host)
        return self.states()

    def _recheck_one(self, name: str, now: float, host: Any) -> None:
        status = self.store.status(name, now=int(now), host=host, check_integrity=False)
        with self._lock:
            slot = self._slots.get(name)
        if slot is not None and slot.loaded is not None:
            if not status.unlockable:
                self._unload(name, status.reason_code, status.reason)
                return
            policy = self.store.policy(status.policy_id) if status.policy_id else None
            grant = policy.grant(name) if policy else None
            with self._lock:
                slot.grant = grant or slot.grant
                slot.state = replace(
                    slot.state,
                    policy_id=status.policy_id,
                    valid_until=status.valid_until,
                    roles=status.roles,
                    binding=host.strength,
                    last_check=now,
                )
        elif status.unlockable:
            self._load(name)
        else:
            self._set_locked(name, status.reason_code, status.reason, now, host.strength)

    def _expire_if_due(self) -> None:
        """Request-path check: an expired window unloads at once, without waiting for the timer."""
        now = self.clock()
        with self._lock:
            due = [
                n
                for n, s in self._slots.items()
                if s.loaded is not None
                and s.state.valid_until is not None
                and now > s.state.valid_until
            ]
        if due or self._policy_fingerprint() != self._fingerprint:
            self.recheck()

    def unload(self, name: str, *, reason_code: str = "UNLOADED", reason: str = "unloaded") -> None:
        with self._gate:
            self._unload(name, reason_code, reason)

    def _unload(self, name: str, code: str, reason: str) -> None:
        with self._lock:
            slot = self._slots.get(name)
            if slot is None or slot.loaded is None:
                return
            for cancel in slot.cancels.values():
                cancel.set()
            deadline = time.monotonic() + UNLOAD_WAIT_S
            while slot.leases and time.monotonic() < deadline:
                self._lock.wait(timeout=0.5)
            loaded, slot.loaded, slot.grant = slot.loaded, None, None
            now = self.clock()
            slot.state = replace(
                slot.state, loaded=False, reason_code=code, reason=reason, last_check=now
            )
        loaded.wipe()
        self._audit("model.unload", name, now, outcome="ok", reason=code)
        self._emit("unload", name, code)

    def close(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=10)
        for name in self.loaded():
            self.unload(name, reason_code="SHUTDOWN", reason="the server stopped")

    # ----- watchdog -------------------------------------------------------------------------
    def start_watchdog(self) -> None:
        self._last_recheck = self.clock()
        self._watchdog = threading.Thread(target=self._watch, name="policy-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._stop.wait(min(FINGERPRINT_POLL_S, self.recheck_s)):
            changed = self._policy_fingerprint() != self._fingerprint
            if changed or self.clock() - self._last_recheck >= self.recheck_s:
                try:
                    self.recheck()
                except (ApplianceError, SecureError, OSError):
                    continue  # reported through the model states; try again next round

    def _policy_fingerprint(self) -> tuple[Any, ...]:
        layout = self.home.layout
        parts: list[Any] = []
        for path in (layout.policies, layout.state, layout.models, layout.root / "adapters"):
            try:
                st = os.stat(path)
                parts.append((st.st_mtime_ns, st.st_size))
            except OSError:
                parts.append(None)
        return tuple(parts)

    # ----- helpers --------------------------------------------------------------------------
    def _audit(
        self,
        action: str,
        name: str,
        now: float,
        *,
        outcome: str = "ok",
        reason: str = "",
        details: dict[str, str | int | bool] | None = None,
    ) -> None:
        self.home.record(
            action,
            actor="service:serve",
            now=int(now),
            object=name,
            outcome=outcome,
            reason=reason,
            details=details,
        )

    def _emit(self, event: str, name: str, code: str) -> None:
        if self.on_event is not None:
            self.on_event(event, name, code)


def _shown(name: str, limit: int = 80) -> str:
    """A client-chosen model name as quoted in an error (not echoed in full)."""
    return repr(name[:limit] + "…") if len(name) > limit else repr(name)

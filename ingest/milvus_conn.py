"""How `ingest.store` connects to Milvus and what it makes of a failed call.

Connection: every :class:`~ingest.store.ChunkStore` holds its own gRPC channel (pymilvus'
``dedicated`` connection), closed with the store, so a serving process holds exactly one
connection per store however often the server went away. The channel keeps its own sub-channel
pool and a short reconnection backoff (:attr:`ConnectOptions.reconnect_max_s`): gRPC's default
doubles its pause up to two minutes while a server is down, and shares that pause between every
channel to the address, so a restarted server would wait minutes for its first request. TLS
(``https://`` URIs) can name the CA that signed the server's certificate, a client certificate
for mutual TLS and the name to expect in the certificate.

Milvus Lite: pymilvus starts one server process per ``*.db`` file; :func:`connect_client`
counts the stores using each file and :func:`release_lite` stops the server when the last closes.

Errors: a server that is down, unreachable or slower than the call's time limit raises
:class:`~ingest.errors.StoreUnavailable` (retried by ingestion, 503 for questions); anything
else Milvus refuses stays an :class:`~ingest.errors.IngestError` ``milvus-error``.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import IngestError, StoreUnavailable

__all__ = [
    "ConnectOptions",
    "connect_client",
    "quiet_outage_logs",
    "release_lite",
    "store_error",
]

_lite_lock = threading.Lock()
_lite_users: Counter[str] = Counter()

_CONNECT_FAILED = 2  # pymilvus Status.CONNECT_FAILED
_UNAVAILABLE_TEXT = ("Fail connecting to server", "server unavailable", "Retry timeout")
_OUTAGE_TEXT = (*_UNAVAILABLE_TEXT, "UNAVAILABLE", "DEADLINE_EXCEEDED", "Connection recovery")
_PYMILVUS_LOGS = ("pymilvus.decorators", "pymilvus.client.connection_manager")
_HINT_DOWN = (
    "Check that Milvus is running and reachable at the configured URI (milvus.uri; "
    "`appliance status` shows it). Ingestion waits and retries on its own; questions work again "
    "as soon as Milvus answers."
)
_HINT_SLOW = (
    "Milvus is overloaded, paused or swapping; check its host (CPU, memory, disk). Raise "
    "milvus.timeout_s only if it is merely slow."
)


@dataclass(frozen=True)
class ConnectOptions:
    """Connection settings beyond URI and token (see ``milvus.*`` in `appliance.config`)."""

    reconnect_max_s: float = 1.0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str = ""

    def client_kwargs(self, uri: str) -> dict[str, Any]:
        """Keyword arguments for ``pymilvus.MilvusClient`` beyond uri, token and timeout."""
        backoff_ms = max(100, int(self.reconnect_max_s * 1000))
        kwargs: dict[str, Any] = {
            "dedicated": True,
            "grpc_options": {
                "grpc.use_local_subchannel_pool": 1,
                "grpc.initial_reconnect_backoff_ms": min(200, backoff_ms),
                "grpc.min_reconnect_backoff_ms": min(200, backoff_ms),
                "grpc.max_reconnect_backoff_ms": backoff_ms,
            },
        }
        kwargs.update(self._tls(uri))
        return kwargs

    def _tls(self, uri: str) -> dict[str, Any]:
        wants_tls = any((self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name))
        if not wants_tls:
            return {}
        if not uri.startswith("https://"):
            raise IngestError(
                "Milvus TLS settings are set but the URI does not start with https://.",
                code="milvus-config",
                hint="Use an https:// milvus.uri, or clear the milvus.tls_* settings.",
            )
        for path in (self.tls_ca, self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise IngestError(
                    f"The Milvus TLS file {path} does not exist.",
                    code="milvus-config",
                    hint="Fix the milvus.tls_* settings (PEM files readable by the appliance).",
                )
        out: dict[str, Any] = {"secure": True}
        if self.tls_server_name:
            out["server_name"] = self.tls_server_name
        if (self.tls_cert is None) != (self.tls_key is None):
            raise IngestError(
                "Mutual TLS needs both milvus.tls_cert and milvus.tls_key.",
                code="milvus-config",
                hint="Set both (the appliance's client certificate and its key) or neither.",
            )
        if self.tls_cert is not None:
            if self.tls_ca is None:
                raise IngestError(
                    "Mutual TLS needs milvus.tls_ca (the CA that signed the server).",
                    code="milvus-config",
                    hint="Set milvus.tls_ca to that CA's PEM file.",
                )
            out.update(
                client_pem_path=str(self.tls_cert),
                client_key_path=str(self.tls_key),
                ca_pem_path=str(self.tls_ca),
            )
        elif self.tls_ca is not None:
            out["server_pem_path"] = str(self.tls_ca)
        return out


def store_error(exc: BaseException, *, timeout: float) -> IngestError:
    """The ingest error for a failed pymilvus or gRPC call."""
    import grpc

    if isinstance(exc, grpc.RpcError):
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return _too_slow(timeout)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return _down(str(exc.details() or code))
        return _refused(str(exc.details() or code))
    message = str(getattr(exc, "message", "") or exc)
    code = getattr(exc, "code", None)
    if "DEADLINE_EXCEEDED" in str(code) or "Deadline Exceeded" in message:
        return _too_slow(timeout)
    if code == _CONNECT_FAILED or "UNAVAILABLE" in str(code):
        return _down(message)
    if any(text in message for text in _UNAVAILABLE_TEXT):
        return _down(message)
    return _refused(message)


def _down(detail: str) -> StoreUnavailable:
    return StoreUnavailable(f"Milvus is unavailable: {detail}", hint=_HINT_DOWN)


def _too_slow(timeout: float) -> StoreUnavailable:
    return StoreUnavailable(
        f"Milvus did not answer within {timeout:g} s (milvus.timeout_s).",
        hint=_HINT_SLOW,
        timed_out=True,
    )


def _refused(detail: str) -> IngestError:
    return IngestError(
        f"Milvus refused or failed the request: {detail}",
        code="milvus-error",
        hint="Check that Milvus is running and reachable at the configured URI (and the token), "
        "then retry; for Milvus Lite, check that no other process has the .db file open.",
    )


class _OutageFilter(logging.Filter):
    """pymilvus logs every failed call at ERROR with a traceback before raising it; while a
    server is down that is one traceback per call. The caller reports the StoreUnavailable
    it becomes (once, with what to do), so these records are dropped; others pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _OUTAGE_TEXT)


def quiet_outage_logs() -> None:
    for name in _PYMILVUS_LOGS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _OutageFilter) for f in target.filters):
            target.addFilter(_OutageFilter())


def connect_client(
    uri: str, token: str, timeout: float, connect: ConnectOptions
) -> tuple[Any, str | None]:
    """(MilvusClient on its own channel, the Lite file path or None). A Lite server process is
    started per file by pymilvus and stopped by :func:`release_lite` when its last store
    closes."""
    import grpc
    from pymilvus import MilvusClient, MilvusException

    quiet_outage_logs()
    _quiet_iterator_log()
    lite = None
    if uri.endswith(".db"):
        path = Path(uri).expanduser().absolute()
        if not path.parent.is_dir():
            raise IngestError(
                f"The Milvus Lite directory {path.parent} does not exist.",
                code="milvus-error",
                hint="Create it (the appliance home should have it) or fix the milvus.uri setting.",
            )
        _import_lite()
        lite = str(path.resolve())
        uri = str(path)
        with _lite_lock:
            _lite_users[lite] += 1
    try:
        options = connect.client_kwargs(uri)
        return MilvusClient(uri=uri, token=token, timeout=timeout, **options), lite
    except (MilvusException, grpc.RpcError) as exc:
        release_lite(lite)
        raise store_error(exc, timeout=timeout) from None
    except BaseException:
        release_lite(lite)
        raise


def _import_lite() -> None:
    """milvus-lite 2.5 imports the deprecated ``pkg_resources``; silence exactly that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="pkg_resources is deprecated as an API", category=UserWarning
        )
        import milvus_lite.server_manager  # noqa: F401


def _quiet_iterator_log() -> None:
    """Lite (and a server built on it) answers no MVCC timestamp to the query iterator, which
    then logs a warning on every scan and falls back to a client timestamp (correct here):
    drop exactly that line."""
    iterator_log = logging.getLogger("pymilvus.orm.iterator")
    if not any(isinstance(f, _LiteTimestampFilter) for f in iterator_log.filters):
        iterator_log.addFilter(_LiteTimestampFilter())


class _LiteTimestampFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("failed to get mvccTs from milvus server")


def release_lite(lite: str | None) -> None:
    if lite is None:
        return
    with _lite_lock:
        _lite_users[lite] -= 1
        if _lite_users[lite] > 0:
            return
        del _lite_users[lite]
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(lite)

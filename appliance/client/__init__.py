"""A client for the appliance's HTTP API, for a customer's own code (HTTP only, no server parts).

``ApplianceClient`` needs only httpx. The LlamaIndex pieces (a retriever over `/v1/search`, an LLM
over `/v1/chat/completions` and a query engine whose responses carry the server's sources) live
in :mod:`appliance.client.llamaindex`, which imports ``llama_index.core`` when it is imported.
"""

from .errors import (
    ApplianceClientError,
    ApplianceTimeout,
    ApplianceUnreachable,
    AuthenticationFailed,
    InvalidRequest,
    ModelUnavailable,
    NotFoundError,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestCancelled,
    ServerError,
)
from .events import ChatEvent, ChatResult
from .http import ApplianceClient

__all__ = [
    "ApplianceClient",
    "ApplianceClientError",
    "ApplianceTimeout",
    "ApplianceUnreachable",
    "AuthenticationFailed",
    "ChatEvent",
    "ChatResult",
    "InvalidRequest",
    "ModelUnavailable",
    "NotFoundError",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "RequestCancelled",
    "ServerError",
]

"""One error hierarchy for `appliance/`; the CLI and the API catch :class:`ApplianceError` once.

Errors from `secure/` (:class:`secure.errors.SecureError`) and `ingest/`
(:class:`ingest.errors.IngestError`) are mapped at the same two places.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Root of every error raised by `appliance/`."""

    code = "APPLIANCE_ERROR"
    exit_code = 1
    audited = False  # set where the refusal was already written to the audit log

    def __init__(self, message: str, *, code: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint

    def diagnostics(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ConfigError(ApplianceError):
    """Settings or the home directory are missing or invalid."""

    code = "CONFIG"


class UsageError(ApplianceError):
    """The command was called wrongly (exit code 2)."""

    code = "USAGE"
    exit_code = 2


class InvalidInput(ApplianceError):
    """A request or argument is malformed or over a limit; ``param`` names the field (API)."""

    code = "INVALID_INPUT"

    def __init__(
        self, message: str, *, code: str | None = None, hint: str = "", param: str | None = None
    ) -> None:
        super().__init__(message, code=code, hint=hint)
        self.param = param


class TooLarge(InvalidInput):
    """A request body is larger than the settings allow (HTTP 413)."""

    code = "BODY_TOO_LARGE"


class NotFound(ApplianceError):
    code = "NOT_FOUND"


class AlreadyExists(ApplianceError):
    code = "ALREADY_EXISTS"


class AuthError(ApplianceError):
    """Authentication failed. ``code`` and the message are what the caller is told; ``reason``
    (default: the code) is the precise cause for the audit log only, so that a failed login
    never tells whether a name exists, a password was right or an account is disabled."""

    code = "AUTH_FAILED"

    def __init__(
        self, message: str, *, code: str | None = None, hint: str = "", reason: str = ""
    ) -> None:
        super().__init__(message, code=code, hint=hint)
        self.reason = reason or self.code


class LoginThrottled(AuthError):
    """Too many failed logins from this client address, or from everywhere at once; refused
    before any name or password is looked at, so it says nothing about either."""

    code = "LOGIN_THROTTLED"


class Forbidden(ApplianceError):
    code = "FORBIDDEN"


class ModelLoadError(ApplianceError):
    code = "MODEL_LOAD"


class ModelImportError(ApplianceError):
    """A model source (a GGUF file) cannot be converted into a package; nothing was written."""

    code = "MODEL_IMPORT"


class ModelUnavailable(ApplianceError):
    """No unlocked model can answer this request; ``reason_code`` says why (HTTP 503)."""

    code = "MODEL_UNAVAILABLE"

    def __init__(self, message: str, *, reason_code: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.reason_code = reason_code


class KnowledgeUnavailable(ApplianceError):
    """The document index (Milvus) does not answer, so no question can be answered now
    (HTTP 503). ``reason_code``: ``MILVUS_UNAVAILABLE`` (down or unreachable) or
    ``MILVUS_TIMEOUT`` (slower than ``milvus.timeout_s``). The message is generic: the
    administrator finds the cause (the server's address, the error) in the server log and in
    `appliance status`."""

    code = "KNOWLEDGE_UNAVAILABLE"

    def __init__(self, *, reason_code: str) -> None:
        slow = reason_code == "MILVUS_TIMEOUT"
        super().__init__(
            "The knowledge base is unavailable: its search index "
            + ("did not answer in time." if slow else "does not answer."),
            hint="Try again in a minute; if it persists, tell an administrator "
            "(`appliance status` shows the index service).",
        )
        self.reason_code = reason_code

    @classmethod
    def from_store(cls, exc: Exception) -> KnowledgeUnavailable:
        """For an `ingest.errors.StoreUnavailable` (its details belong in the server log)."""
        slow = bool(getattr(exc, "timed_out", False))
        return cls(reason_code="MILVUS_TIMEOUT" if slow else "MILVUS_UNAVAILABLE")


class Overloaded(ApplianceError):
    """Too many requests are waiting (HTTP 429)."""

    code = "OVERLOADED"


class Cancelled(ApplianceError):
    """The client went away or the time limit passed while answering."""

    code = "CANCELLED"


#: Errors whose message is written for the person who made the request (what they sent, what
#: they may do). Any other error (configuration, stores, keys, models, ingestion) may name
#: server paths or quote stored data, so the web UI and the API answer it with its code and
#: :data:`INTERNAL_MESSAGE`, and its diagnostics go to the server log for the administrator.
USER_FACING: tuple[type[ApplianceError], ...] = (
    AuthError,
    Forbidden,
    NotFound,
    InvalidInput,
    UsageError,
    AlreadyExists,
    ModelUnavailable,
    KnowledgeUnavailable,
    Overloaded,
    Cancelled,
)
INTERNAL_MESSAGE = (
    "The appliance could not complete the request ({code}). An administrator finds the "
    "details in the server log."
)


def is_user_facing(exc: BaseException) -> bool:
    """True when ``exc``'s own message may be shown to a web or API caller."""
    return isinstance(exc, USER_FACING)

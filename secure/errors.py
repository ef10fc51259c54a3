"""One error hierarchy for `secure/`.

Every error carries a stable reason ``code`` (used in audit entries, exit codes and tests) and a
message that tells the operator what to do next. Forgery fails uniformly: integrity failures raise
:class:`TamperedError` without saying which check failed; the detail goes to the audit log only.
"""

from __future__ import annotations


class SecureError(Exception):
    """Root of every error raised by `secure/`."""

    code = "SECURE_ERROR"

    def __init__(self, message: str, *, code: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint

    def diagnostics(self) -> str:
        """The one-line message plus what to do, for a CLI or an API error body."""
        return f"{self.message} {self.hint}".strip()


class FormatError(SecureError):
    """Input that is not a well-formed artifact of ours (bad magic, sizes, encoding, suite)."""

    code = "MALFORMED"


class TamperedError(SecureError):
    """Authentication failed. Deliberately says nothing about *which* check failed (no oracle)."""

    code = "TAMPERED"

    def __init__(self, what: str = "data", *, detail: str = "") -> None:
        super().__init__(
            f"The {what} failed its integrity check and was refused.",
            hint="Restore it from the original package or backup; if it keeps failing, "
            "treat the copy as tampered with.",
        )
        #: internal detail for the audit log; never shown to a caller
        self.detail = detail


class SealedError(SecureError):
    """A sealed secret stayed sealed (wrong passphrase, missing share, wrong key)."""

    code = "SEALED"


class KeyringError(SecureError):
    """Key hierarchy misuse: unknown or trimmed key version, interrupted rotation."""

    code = "KEYRING"


class PolicyRefused(SecureError):
    """A policy check refused; ``code`` is one of :data:`secure.policy.REASONS`."""

    code = "POLICY_REFUSED"


class AuditUnavailable(SecureError):
    """The audit log cannot be written: the action must not happen (fail closed)."""

    code = "AUDIT_UNAVAILABLE"


class AuditBroken(SecureError):
    """`audit verify` found a broken entry; ``seq``/``line`` name the first one."""

    code = "AUDIT_BROKEN"

    def __init__(self, message: str, *, line: int, seq: int | None = None) -> None:
        super().__init__(message, hint="Keep the file as evidence and restore from backup.")
        self.line = line
        self.seq = seq


class StateError(SecureError):
    """The MACed state file is missing, corrupt or rolled back."""

    code = "STATE"

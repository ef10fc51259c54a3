"""E-mail (.eml via the standard library, .msg via python-oxmsg) → headers, body, attachments.

Attachments are listed by name and not parsed: each would need its own format detection, limits
and quarantine decision, which belongs to the drop-folder pipeline, not to this parser.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path

from ingest.errors import Rejected
from ingest.parse_text import decode_bytes

_ENCRYPTED_TYPES = {"multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime"}
HEADER_NAMES = ("From", "To", "Cc", "Date")


@dataclass(frozen=True)
class EmailContent:
    subject: str
    headers: tuple[tuple[str, str], ...]  # (name, value) in HEADER_NAMES order, present ones only
    body: str
    body_is_html: bool
    attachments: tuple[str, ...]


def read_eml(path: Path) -> EmailContent:
    data = path.read_bytes()
    encoding = decode_bytes(data[:4096])[1]
    if encoding.startswith(("utf-16", "utf-32")):  # whole message saved as UTF-16 text
        message: Message = email.message_from_string(
            decode_bytes(data)[0], policy=email.policy.default
        )
    else:
        message = email.message_from_bytes(data, policy=email.policy.default)
    if message.get_content_type() in _ENCRYPTED_TYPES:
        raise Rejected(
            "The e-mail is encrypted (PGP or S/MIME); its body cannot be read without the "
            "recipient's private key.",
            code="password-protected",
            hint="Forward a decrypted copy to the drop folder instead.",
        )
    if not isinstance(message, EmailMessage) or not (message.keys() or message.get_payload()):
        raise Rejected("The e-mail has no headers and no body.", code="empty")
    body, is_html = _body(message)
    headers = tuple((name, _header(message, name)) for name in HEADER_NAMES)
    return EmailContent(
        subject=_header(message, "Subject"),
        headers=tuple((name, value) for name, value in headers if value),
        body=body,
        body_is_html=is_html,
        attachments=tuple(_attachment_names(message)),
    )


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, TypeError, IndexError):  # malformed encoded words or addresses
        raw = message.get_all(name, failobj=[])
        value = str(raw[0]) if raw else ""
    return " ".join(str(value or "").split())


def _body(message: EmailMessage) -> tuple[str, bool]:
    part = message.get_body(preferencelist=("html", "plain"))
    if part is None:
        return "", False
    is_html = part.get_content_type() == "text/html"
    try:
        content = part.get_content()
    except (LookupError, ValueError, UnicodeError, AssertionError):
        content = None
    if not isinstance(content, str):  # unknown charset or broken transfer encoding
        payload = part.get_payload(decode=True)
        content = decode_bytes(payload)[0] if isinstance(payload, bytes) else ""
    return content, is_html


def _attachment_names(message: EmailMessage) -> list[str]:
    names: list[str] = []
    try:
        for part in message.iter_attachments():
            names.append(part.get_filename() or f"(unnamed {part.get_content_type()})")
    except (TypeError, ValueError, KeyError):
        pass
    return names


def read_msg(path: Path) -> EmailContent:
    """An Outlook .msg (OLE2) message through python-oxmsg."""
    from oxmsg import Message as OutlookMessage

    try:
        message = OutlookMessage.load(str(path))
        html = message.html_body
        plain = message.body or ""
        sent = message.sent_date.isoformat() if message.sent_date else ""
        recipients = ", ".join(r.email_address for r in message.recipients if r.email_address)
        names = [a.file_name or "(unnamed attachment)" for a in message.attachments]
        subject = message.subject or ""
        sender = message.sender or ""
    except (OSError, ValueError, KeyError, IndexError, UnicodeError) as exc:
        raise Rejected(f"The Outlook message is damaged: {exc}", code="corrupt") from exc
    headers = (("From", sender), ("To", recipients), ("Date", sent))
    return EmailContent(
        subject=subject,
        headers=tuple((name, value) for name, value in headers if value),
        body=html or plain,
        body_is_html=bool(html),
        attachments=tuple(names),
    )

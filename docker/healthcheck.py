"""Container health check for Docker's HEALTHCHECK and compose: exit 0 healthy, 1 not.

``healthcheck.py``: GET ``/healthz`` of this container's own server on loopback, over http or
https as the appliance's settings say (``serve.port``, ``serve.tls_cert``; the home is
``APPLIANCE_HOME``). The certificate is not verified: the check talks to its own process.

``healthcheck.py --process WORD...``: some process in the container (other than this check) has
every WORD among its arguments and is neither a zombie nor stopped. For services without an HTTP
port, e.g. ``--process ingest --watch`` for the drop-folder watcher.

Only the standard library and ``appliance.config`` are imported, so a check costs a fraction of a
second. The one line printed is what ``docker inspect`` shows as the last health output.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

DEFAULT_HOME = "/var/lib/appliance"
_DEAD_STATES = {"Z", "T", "t", "X", "x"}  # zombie, stopped, traced, dead


def healthz_url(port: int, *, tls: bool) -> str:
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"


def check_http(url: str, *, timeout_s: float = 4.0) -> tuple[bool, str]:
    """(healthy, reason): healthy only on HTTP 200."""
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # loopback to our own server and certificate
    try:
        response = urllib.request.urlopen(url, timeout=timeout_s, context=context)  # noqa: S310
    except OSError as exc:  # URLError and HTTPError are OSErrors
        return False, f"{url}: {getattr(exc, 'code', None) or getattr(exc, 'reason', exc)}"
    with response:
        status = int(response.status)
    return status == 200, f"{url}: HTTP {status}"


def process_running(words: Sequence[str], *, proc: Path = Path("/proc")) -> bool:
    """Whether a live process other than this one has every word among its arguments."""
    me = str(os.getpid())
    for entry in proc.iterdir():
        if not entry.name.isdigit() or entry.name == me:
            continue
        args = _arguments(entry)
        if not args or any(Path(arg).name == Path(__file__).name for arg in args):
            continue
        if all(word in args for word in words) and _state(entry) not in _DEAD_STATES:
            return True
    return False


def _arguments(entry: Path) -> list[str]:
    try:
        raw = (entry / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _state(entry: Path) -> str:
    """The one-letter state from /proc/PID/stat (after the parenthesised command name)."""
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "--process":
        words = list(argv[1:])
        alive = bool(words) and process_running(words)
        print(f"process {' '.join(words)}: {'running' if alive else 'not running'}")
        return 0 if alive else 1
    from appliance.config import load_settings
    from appliance.errors import ApplianceError

    try:
        settings = load_settings(Path(os.environ.get("APPLIANCE_HOME") or DEFAULT_HOME))
    except ApplianceError as exc:
        print(f"settings: {exc.diagnostics()}")
        return 1
    healthy, reason = check_http(
        healthz_url(settings.serve.port, tls=settings.serve.tls_cert is not None)
    )
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

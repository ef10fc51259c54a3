"""A real Milvus server process for tests, and the backend choice the store tests take.

The ``milvus`` binary that milvus-lite ships is the same engine as the embedded default; started
as ``milvus DATAFILE 127.0.0.1:PORT LOGLEVEL`` (as ``milvus_lite.server.Server`` does when given
an address) it listens on TCP and speaks Milvus' gRPC API, so
``pymilvus.MilvusClient("http://127.0.0.1:PORT")`` talks to it as to Milvus standalone: the
network client, its timeouts, reconnection and a server that goes away are all real.

:class:`MilvusServer` starts it on a free loopback port, kills it (``SIGKILL``), pauses it
(``SIGSTOP``/``SIGCONT``) and starts it again on the same data file and port. No process
outlives its test: :meth:`MilvusServer.close` runs in every fixture's teardown, an ``atexit``
hook kills what is left, and the child is started with ``PR_SET_PDEATHSIG`` so that even a
killed pytest takes its servers with it (which is why servers are started from the main
thread: the signal follows the thread that forked).

:class:`MilvusBackend` is what parametrised tests receive (fixtures ``milvus`` and
``milvus_module`` in ``tests/conftest.py``): ``backend.uri(path)`` is the Lite file ``path``
itself, or the URI of a server process that keeps its data in ``path``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

KINDS = ("lite", "server")
ENV_KINDS = "APPLIANCE_TEST_MILVUS"  # e.g. "lite" to run the store tests on one backend only
_PR_SET_PDEATHSIG = 1
_live: weakref.WeakSet[MilvusServer] = weakref.WeakSet()


#: For tests where the Milvus backend plays no part, next to others in the module that take it.
lite_only = pytest.mark.parametrize("milvus_kind", ["lite"], indirect=True)


def milvus_lib() -> Path:
    with warnings.catch_warnings():  # milvus-lite 2.5 imports the deprecated pkg_resources
        warnings.simplefilter("ignore", UserWarning)
        import milvus_lite

    return Path(milvus_lite.__file__).resolve().parent / "lib"


def backend_kinds() -> list[str]:
    """The backends the parametrised tests run on (both unless the environment narrows it)."""
    wanted = [k.strip() for k in os.environ.get(ENV_KINDS, ",".join(KINDS)).split(",")]
    unknown = [k for k in wanted if k not in KINDS]
    if unknown or not wanted:
        raise ValueError(f"{ENV_KINDS} must list some of {KINDS}, not {unknown or wanted}")
    return wanted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _ExitedEarly(RuntimeError):
    """The server process ended before it listened."""


class MilvusServer:
    """One ``milvus`` server process keeping its data in ``data`` (a file, as for Lite)."""

    def __init__(self, data: Path, *, port: int | None = None, log_level: str = "ERROR") -> None:
        self.data = Path(data).absolute()
        self.port = port or free_port()
        self.log = self.data.parent / f"{self.data.name}.server.log"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- life cycle -----------------------------------------------------------------------------
    def start(self, *, timeout: float = 30.0, attempts: int = 3) -> MilvusServer:
        """Start on ``self.port`` and return once it accepts connections. The binary now and
        then aborts as it starts (about one start in a few dozen on a loaded machine: its gRPC
        poller reports ``epoll_wait error: Bad file descriptor``); it is started again then."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except _ExitedEarly:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> MilvusServer:
        if self.running:
            raise RuntimeError(f"the Milvus server on port {self.port} is already running")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("start Milvus servers from the main thread (PR_SET_PDEATHSIG)")
        if not self.data.parent.is_dir():
            raise FileNotFoundError(f"no directory for the Milvus data file: {self.data.parent}")
        lib = milvus_lib()
        env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        args = [str(lib / "milvus"), str(self.data), f"127.0.0.1:{self.port}", self.log_level]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                env=env,
                cwd=str(self.data.parent),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        _live.add(self)
        self.paused = False
        self.starts += 1
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if code is not None:
                tail = self.log.read_bytes()[-2000:].decode("utf-8", "replace")
                self.proc = None
                raise _ExitedEarly(
                    f"the Milvus server exited with {code} on port {self.port}:\n{tail}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the Milvus server did not listen on {self.port} in time")
            time.sleep(0.02)

    def kill(self) -> None:
        """``SIGKILL`` (a crash, a power cut): nothing is flushed or closed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()  # a stopped process dies of SIGKILL too
        proc.wait(timeout=30)
        self.paused = False

    def pause(self) -> None:
        """``SIGSTOP``: the port stays open, nothing answers (a hung or swapping server)."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, *, timeout: float = 15.0) -> None:
        """A clean shutdown (``SIGTERM``), ``SIGKILL`` if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return
        if self.paused:
            self.resume()
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        self.kill()

    def restart(self, *, timeout: float = 30.0) -> MilvusServer:
        """Kill and start again on the same data file and port."""
        self.kill()
        return self.start(timeout=timeout)

    def close(self) -> None:
        self.kill()
        _live.discard(self)

    def __enter__(self) -> MilvusServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_server(data: Path, *, attempts: int = 3) -> MilvusServer:
    """A started server on a free port (another process may take a port between the pick and
    the start: then another port is tried)."""
    last: Exception | None = None
    for _ in range(attempts):
        server = MilvusServer(data)
        try:
            return server.start()
        except RuntimeError as exc:
            server.close()
            last = exc
    raise RuntimeError(f"no Milvus server could be started for {data}: {last}")


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.close()


def child_pids() -> set[int]:
    """The live ``milvus`` server processes this process started (a leak check)."""
    return {s.pid for s in list(_live) if s.running and s.pid is not None}


class MilvusBackend:
    """Where a test's chunk store lives: a Lite file, or a server process per data file."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown Milvus backend {kind!r}")
        self.kind = kind
        self.servers: dict[Path, MilvusServer] = {}

    @property
    def is_server(self) -> bool:
        return self.kind == "server"

    def uri(self, path: Path) -> str:
        """The URI to give ``ChunkStore.open`` for the data kept in ``path``."""
        if not self.is_server:
            return str(path)
        return self.server(path).uri

    def server(self, path: Path) -> MilvusServer:
        """The server keeping its data in ``path`` (started on first use)."""
        if not self.is_server:
            raise ValueError("the Lite backend has no server process")
        key = Path(path).absolute()
        key.parent.mkdir(parents=True, exist_ok=True)
        if key not in self.servers:
            self.servers[key] = start_server(key)
        return self.servers[key]

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def __enter__(self) -> MilvusBackend:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def backend(kind: str) -> Iterator[MilvusBackend]:
    with MilvusBackend(kind) as chosen:
        yield chosen

"""K3: kill -9 at every step of rotate / rewrap / trim / store creation; the next start must see the
old or the new state, never neither.

A child process runs the operation with the ``os`` module of ``secure._encoding`` (the one that
``atomic_write`` uses) replaced by a counter that SIGKILLs the process at step N, where the steps
are every ``write`` (cut in half first), ``fsync`` and ``rename``. N runs from 0 until the child
finishes, so every crash point of the real code path is hit; nothing in production code is built
for this. After each kill the parent loads everything and checks that every data key survived,
then finishes the job (recovery) and checks again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from secure.keyring import Keyring, KeyStore, retire_old_keys
from secure.keys import new_root_key

REPO = Path(__file__).resolve().parents[2]

WORKER = r"""
import os, signal, sys
from collections.abc import Callable
from pathlib import Path
import secure._encoding as enc
from secure.keyring import Keyring, KeyStore, retire_old_keys

class CrashingOs:
    def __init__(self, target):
        self.step, self.target = 0, target
    def __getattr__(self, name):
        return getattr(os, name)
    def _point(self, before_kill=None):
        if self.step == self.target:
            if before_kill:
                before_kill()
            os.kill(os.getpid(), signal.SIGKILL)
        self.step += 1
    def write(self, fd, data):
        self._point(lambda: os.write(fd, bytes(data)[: len(data) // 2]))
        return os.write(fd, data)
    def fsync(self, fd):
        self._point()
        return os.fsync(fd)
    def replace(self, src, dst):
        self._point()
        return os.replace(src, dst)

home, ark, op, target = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ring = Keyring.load(home / "keyring.json", ark)
enc.os = CrashingOs(target)
if op == "rotate-and-retire":
    ring.rotate()
    retire_old_keys(ring)
elif op == "create-store":
    KeyStore.create(home / "new.json", ring, context="c:new")
print("steps", enc.os.step)
"""

STORES = 3


def _setup(home: Path, ark: bytes) -> dict[str, bytes]:
    home.mkdir()
    ring = Keyring.create(home / "keyring.json", ark)
    return {
        f"c:{i}": KeyStore.create(home / f"{i}.json", ring, context=f"c:{i}")[1]
        for i in range(STORES)
    }


def _check(home: Path, ark: bytes, keys: dict[str, bytes]) -> Keyring:
    """Everything must load and every data key must be the original one."""
    ring = Keyring.load(home / "keyring.json", ark)
    for i in range(STORES):
        store, key = KeyStore.load(home / f"{i}.json", ring, context=f"c:{i}")
        assert key == keys[f"c:{i}"]
        assert store.wrapped.kek_version >= ring.min_version
    return ring


def _run(home: Path, ark: bytes, op: str, target: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", WORKER, str(home), ark.hex(), op, str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _crash_everywhere(tmp_path: Path, op: str, check: Callable[..., None]) -> int:
    ark = new_root_key()
    keys = _setup(tmp_path / "pristine", ark)
    for target in range(200):
        home = tmp_path / f"run{target}"
        shutil.copytree(tmp_path / "pristine", home)
        result = _run(home, ark, op, target)
        if result.returncode == 0:
            assert result.stdout.split() == ["steps", str(target)], result.stdout
            check(home, ark, keys, finished=True)
            return target
        assert result.returncode == -9, result.stderr
        check(home, ark, keys, finished=False)
    pytest.fail("the operation never finished")


def test_k3_kill_at_every_step_of_rotate_rewrap_and_trim(tmp_path: Path) -> None:
    def check(home: Path, ark: bytes, keys: dict[str, bytes], *, finished: bool) -> None:
        ring = _check(home, ark, keys)
        assert ring.current_version in (1, 2)
        assert ring.versions in ([1], [1, 2], [2])
        if finished:
            assert ring.versions == [2] and ring.min_version == 2
        # Recovery: simply run the sequence again; it completes from wherever the crash left it.
        if ring.current_version == 1:
            ring.rotate()
        retire_old_keys(ring)
        ring = _check(home, ark, keys)
        assert ring.versions == [2] and ring.min_version == 2

    steps = _crash_everywhere(tmp_path, "rotate-and-retire", check)
    # rotate + 3 store rewraps + min version + trim, each one atomic write of 4 steps
    assert steps == 4 * (1 + STORES + 1 + 1)


def test_k3_kill_at_every_step_of_key_store_creation(tmp_path: Path) -> None:
    def check(home: Path, ark: bytes, keys: dict[str, bytes], *, finished: bool) -> None:
        ring = _check(home, ark, keys)
        new = home / "new.json"
        if new.exists():
            KeyStore.load(new, ring, context="c:new")
            assert new in ring.stores()
        else:
            assert not finished
            KeyStore.create(new, ring, context="c:new")  # recovery: create again
        ring.rotate()
        assert retire_old_keys(ring) == [1]
        assert KeyStore.load(new, ring, context="c:new")[0].wrapped.kek_version == 2

    assert _crash_everywhere(tmp_path, "create-store", check) == 8

"""Fixtures every test directory shares: the Milvus backend the store tests run on.

``milvus_kind`` is parametrised over the embedded Milvus Lite file and a real Milvus server
process (`tests/support/milvus_server.py`), so every test that takes ``milvus`` (one backend per
test) or ``milvus_module`` (one per module, for module-scoped data) runs on both in `make test`.
``APPLIANCE_TEST_MILVUS=lite`` (or ``server``) narrows the run to one while developing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.milvus_server import MilvusBackend, backend_kinds, child_pids


@pytest.fixture(scope="session", params=backend_kinds())
def milvus_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def milvus(milvus_kind: str) -> Iterator[MilvusBackend]:
    """Where this test's chunk stores live: ``milvus.uri(tmp_path / "x.db")``."""
    with MilvusBackend(milvus_kind) as backend:
        yield backend


@pytest.fixture(scope="module")
def milvus_module(milvus_kind: str) -> Iterator[MilvusBackend]:
    """:func:`milvus` for module-scoped data (its servers stop when the module is done)."""
    with MilvusBackend(milvus_kind) as backend:
        yield backend


@pytest.fixture(scope="session", autouse=True)
def _no_milvus_server_outlives_the_run() -> Iterator[None]:
    yield
    left = child_pids()
    assert not left, f"Milvus server processes still running after the tests: {sorted(left)}"

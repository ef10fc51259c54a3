"""`https://` Milvus URIs with the ``milvus.tls_*`` settings, against a real Milvus server
process behind a TLS terminator (`tests/support/tls_proxy.py`: ALPN h2, as gRPC needs) with
certificates from a private CA: one-way TLS, a server name other than the URI's host, mutual
TLS, and the refusals a wrong CA or a missing client certificate must give."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.knowledge import connect_options
from ingest.errors import StoreUnavailable
from ingest.milvus_conn import ConnectOptions
from ingest.store import ChunkStore
from tests.ingest.test_store import DIM, MODEL, record, terms
from tests.support.milvus_server import MilvusServer, start_server
from tests.support.tls import private_ca
from tests.support.tls_proxy import TlsProxy


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    with start_server(tmp_path_factory.mktemp("tls") / "milvus.db") as started:
        yield started


def open_over(port: int, options: ConnectOptions, host: str = "127.0.0.1") -> ChunkStore:
    return ChunkStore.open(
        f"https://{host}:{port}", dim=DIM, model_id=MODEL, timeout=5.0, connect=options
    )


def round_trip(store: ChunkStore, doc_id: str) -> None:
    with store:
        store.insert([record(doc_id, f"TLS row of {doc_id}")])
        hits = store.search_sparse(terms(f"row of {doc_id}"), groups=["public"], limit=5)
        assert doc_id in {h.doc_id for h in hits}


def test_one_way_tls_with_a_private_ca(server: MilvusServer, tmp_path: Path) -> None:
    pki = private_ca(tmp_path / "pki")
    with TlsProxy(server.port, cert=pki["server"], key=pki["server_key"]) as proxy:
        round_trip(open_over(proxy.port, ConnectOptions(tls_ca=pki["ca"])), "tls-one-way")
        other = private_ca(tmp_path / "other")
        with pytest.raises(StoreUnavailable):  # a certificate this CA did not sign
            open_over(proxy.port, ConnectOptions(tls_ca=other["ca"]))


def test_a_certificate_name_other_than_the_uri_host(server: MilvusServer, tmp_path: Path) -> None:
    pki = private_ca(tmp_path / "pki", server_names=("milvus.internal",))
    with TlsProxy(server.port, cert=pki["server"], key=pki["server_key"]) as proxy:
        with pytest.raises(StoreUnavailable):  # 127.0.0.1 is not in the certificate
            open_over(proxy.port, ConnectOptions(tls_ca=pki["ca"]))
        named = ConnectOptions(tls_ca=pki["ca"], tls_server_name="milvus.internal")
        round_trip(open_over(proxy.port, named), "tls-named")


def test_mutual_tls(server: MilvusServer, tmp_path: Path) -> None:
    pki = private_ca(tmp_path / "pki")
    proxy = TlsProxy(server.port, cert=pki["server"], key=pki["server_key"], client_ca=pki["ca"])
    with proxy:
        with pytest.raises(StoreUnavailable):  # no client certificate
            open_over(proxy.port, ConnectOptions(tls_ca=pki["ca"]))
        settings = load_settings(
            tmp_path / "home",
            milvus={"tls_ca": pki["ca"], "tls_cert": pki["client"], "tls_key": pki["client_key"]},
        )
        round_trip(open_over(proxy.port, connect_options(settings)), "tls-mutual")

"""One target for the whole attack suite (building it ingests documents and logs users in)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.attack.target import Target, running_target


@pytest.fixture(scope="package")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with running_target(tmp_path_factory.mktemp("attack")) as t:
        yield t
    # the server must have survived everything the suite threw at it

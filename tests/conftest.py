"""
Fixtures every test folder shares: a throwaway PostgreSQL cluster
(``taskmesh.testing_postgres``), made once per test session on first use,
and a fresh database in it for each test that asks.

Tests that need PostgreSQL skip, with the reason, only where its binaries
are not installed (.ci/run installs Debian's ``postgresql`` when ``initdb``
is missing, so CI runs them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taskmesh.testing_postgres import PostgresCluster, missing_reason


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One running cluster for the whole session (started again by any test that stops it)."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres(postgres_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The session's cluster, running when the test starts, and again after it (if it stopped it)."""
    postgres_cluster.start()
    yield postgres_cluster
    postgres_cluster.start()


@pytest.fixture
def postgres_url(postgres: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """
    A new, empty database for this test: its libpq URL.  Not dropped
    afterwards (a DROP DATABASE is a checkpoint: seconds with fsync on); the
    whole cluster goes at the end of the session.
    """
    return postgres.create_database(request.node.name)

"""
The throwaway PostgreSQL cluster the journal tests run on (taskservice/_pgcluster.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_clusterRunsUnprivilegedOnLoopback(pgCluster: Any, pgDSN: str) -> None:
    """
    The cluster's postmaster never runs as root, listens on loopback only
    with its UNIX socket in its own directory, and each test gets a
    database of its own, empty.
    """
    status = Path(f"/proc/{pgCluster.pid}/status").read_text()
    uid = int(
        next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
    )
    assert uid != 0
    if os.geteuid() != 0:
        assert uid == os.geteuid()
    with psycopg.connect(pgDSN) as db:
        settings: dict[str, str] = dict(
            db.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('listen_addresses', 'unix_socket_directories', 'port')"
            ).fetchall()
        )
        tables = db.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(pgCluster.directory),
        "port": str(pgCluster.port),
    }
    assert tables == (0,)

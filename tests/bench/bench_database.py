"""The database every benchmark starts from: dropped and made again, so runs never mix."""

from __future__ import annotations

import os
import sys


def bench_database_url(bench: str) -> str:
    """DATABASE_URL, which must name a PostgreSQL database the benchmark may drop and recreate."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit(f"{bench}: set DATABASE_URL to a PostgreSQL database the benchmark may drop and recreate")
    return url


def recreate_database(url: str) -> None:
    """Drops and creates the PostgreSQL database named at the end of `url`."""
    import psycopg

    name = url.rsplit("/", 1)[1].split("?")[0]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')

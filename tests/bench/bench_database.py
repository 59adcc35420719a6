"""What benchmarks start from: a database dropped and made again, so runs never mix, and the
synthetic archive, written once and cached under `.kahn/bench/` (ab.py shares it between trees)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


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


def database_fresh(url: str) -> None:
    """Recreates the database, sets Django up on it and migrates it: an empty Scope."""
    recreate_database(url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kahn_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def synthetic_archive(runs: int, nodes: int) -> Path:
    """The project simulator's archive of `runs` runs of `nodes` nodes, written on first use."""
    # "simulated": archives cached by an earlier producer tool differ and are not reused.
    archive = PROJECT / ".kahn" / "bench" / f"simulated-{runs}x{nodes}"
    if not (archive / "runs").is_dir():
        from ingest.simulator import archive_synthesize

        print(f"writing the synthetic archive to {archive} ...", flush=True)
        # Written aside and renamed when whole: an interrupted write is never taken for the cache.
        partial = archive.with_name(archive.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        archive_synthesize(partial, runs=runs, nodes=nodes)
        partial.rename(archive)
    return archive

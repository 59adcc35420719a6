"""Start-up checks shared by the commands that serve or write: fail early, in one sentence."""

from django.core.management.base import CommandError
from django.db import connections
from django.db.migrations.executor import MigrationExecutor


def require_migrated(using: str = "default") -> None:
    executor = MigrationExecutor(connections[using])
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        raise CommandError("the database has migrations that are not applied: run `manage.py migrate` first")

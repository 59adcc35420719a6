"""Settings of the benchmark's servers: Scope's own, plus the floor view's URL (tests/bench/floor_urls.py)."""

from kahn_site.settings import *  # noqa: F403 (every setting of the server as deployed)

ROOT_URLCONF = "tests.bench.floor_urls"

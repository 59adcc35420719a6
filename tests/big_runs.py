"""A big run for the pages' tests and benchmark: 2,000 nodes, about 6,000 events, a dozen failures.

Written by the project's simulator, so it reads as a real producer's log. The failed nodes are
chosen among nodes with a few dependents each, spread over the graph: each blocks a handful of
nodes downstream, and the rest of the run goes on, as in a big build where a few steps break.
"""

from __future__ import annotations

import random

from ingest.simulator import SimulatedRun, run_simulate, synthetic_edges

BIG_RUN_NODES = 2000
BIG_RUN_FAILURES = 12
# Nodes that fail once and then succeed: retries the page must not mistake for failures.
BIG_RUN_FLAKES = 20


def big_run(
    run_id: str, *, nodes: int = BIG_RUN_NODES, failures: int = BIG_RUN_FAILURES, seed: int = 7
) -> SimulatedRun:
    rng = random.Random(seed)
    edges = synthetic_edges(nodes, rng)
    dependents: dict[str, list[str]] = {node: [] for node in edges}
    for node, deps in edges.items():
        for dep in deps:
            dependents[dep].append(node)
    # A failure here blocks between one and six nodes: its descendants, counted breadth first.
    candidates = [node for node in edges if 1 <= len(descendants(node, dependents, limit=7)) <= 6]
    step = len(candidates) / failures
    failed = [candidates[int(i * step + step / 2)] for i in range(failures)]
    flaky = rng.sample(sorted(set(edges) - set(failed)), BIG_RUN_FLAKES)
    plan: dict[str, list[bool]] = {node: [False, False, False] for node in failed}
    plan.update({node: [False, True] for node in flaky})
    return run_simulate(run_id, edges, plan, workers=8)


def descendants(node: str, dependents: dict[str, list[str]], *, limit: int) -> set[str]:
    """`node`'s descendants, or the first `limit` of them found breadth first."""
    found: set[str] = set()
    frontier = [node]
    while frontier and len(found) < limit:
        frontier = [d for n in frontier for d in dependents[n] if d not in found]
        found.update(frontier)
    return found

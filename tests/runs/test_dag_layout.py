"""The DAG picture draws every dependency once, and never under a box other than its own two ends."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runs.pictures import NODE_H, NODE_W, dag_layout, dag_picture
from runs.timeline import build_timeline
from tests.conftest import SAMPLE_ARCHIVE

# Layout is arithmetic on a graph: no database is involved.
pytestmark = pytest.mark.database_agnostic

Box = tuple[int, int, int, int]  # x, y, width, height


def segments(path: str) -> list[list[tuple[float, float]]]:
    """Each piece of an SVG path as its control polygon: a line's two ends, a cubic's four points.

    A cubic stays within the hull of its control points, so a polygon clear of a box is an exact
    proof that the curve is too."""
    pieces = []
    here = (0.0, 0.0)
    for command, args in re.findall(r"([MLC])([^MLC]*)", path):
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", args)]
        points = list(zip(numbers[::2], numbers[1::2], strict=True))
        assert len(points) == {"M": 1, "L": 1, "C": 3}[command], path
        if command != "M":
            pieces.append([here, *points])
        here = points[-1]
    return pieces


def enters(piece: list[tuple[float, float]], box: Box) -> bool:
    """Whether the piece's bounding box meets the box's inside (touching its border is allowed)."""
    x, y, w, h = box
    xs, ys = [p[0] for p in piece], [p[1] for p in piece]
    return min(xs) < x + w and max(xs) > x and min(ys) < y + h and max(ys) > y


def crossed_boxes(positions: dict[str, tuple[int, int]], path: str) -> set[str]:
    return {
        node_id
        for piece in segments(path)
        for node_id, (x, y) in positions.items()
        if enters(piece, (x, y, NODE_W, NODE_H))
    }


@st.composite
def dags(draw):
    """Random DAGs: nodes in a topological order, each depending on some earlier ones (near and far,
    so diamonds and long edges are common), with some nodes left unconnected."""
    count = draw(st.integers(1, 300))
    names = [f"n{i}" for i in range(count)]
    pairs = []
    for i in range(1, count):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True))
        pairs += [(names[d], names[i]) for d in deps]
    return names, pairs


def layers(names: list[str], pairs: list[tuple[str, str]]) -> dict[str, int]:
    deps: dict[str, list[str]] = {n: [] for n in names}
    for source, target in pairs:
        deps[target].append(source)
    layer: dict[str, int] = {}
    for name in names:  # names are in a topological order
        layer[name] = 1 + max((layer[d] for d in deps[name]), default=-1)
    return layer


@settings(max_examples=40, deadline=None)
@given(dags())
def test_no_edge_passes_under_a_box_and_every_edge_is_drawn_once(dag):
    names, pairs = dag
    layout = dag_layout(names, layers(names, pairs), pairs)
    assert len(layout.paths) == len(pairs)
    boxes = sorted(layout.positions.values())
    assert len(set(boxes)) == len(boxes), "two boxes in one place"
    for (source, target), path in zip(pairs, layout.paths, strict=True):
        assert path.startswith(f"M{layout.positions[source][0] + NODE_W},")
        assert path.endswith(f" {layout.positions[target][0]},{layout.positions[target][1] + NODE_H // 2}")
        assert crossed_boxes(layout.positions, path) == set(), (source, target, path)
    for x, y in boxes:
        assert x + NODE_W <= layout.width and y + NODE_H <= layout.height


def test_an_edge_against_the_layers_runs_above_every_box():
    # A cycle in a malformed graph leaves some edge pointing left or within its own column.
    names = ["a", "b", "c"]
    pairs = [("a", "b"), ("b", "c"), ("c", "a"), ("b", "b")]
    layout = dag_layout(names, {"a": 0, "b": 1, "c": 2}, pairs)
    for path in layout.paths:
        assert crossed_boxes(layout.positions, path) == set(), path


def test_the_demo_graphs_long_edge_goes_round_the_boxes_it_skips():
    graph = json.loads((SAMPLE_ARCHIVE / "runs" / "run_clean" / "graph.json").read_text())
    timeline = build_timeline(graph, [])
    order = [node["id"] for node in graph["nodes"]]
    picture = dag_picture(timeline, order, dict.fromkeys(order, "pending"), dict.fromkeys(order, 0))
    drawn = [(edge.source, edge.target) for edge in picture.edges]
    declared = [(dep, node["id"]) for node in graph["nodes"] for dep in node["deps"]]
    assert sorted(drawn) == sorted(declared)
    positions = {node.id: (node.x, node.y) for node in picture.nodes}
    lint = next(edge for edge in picture.edges if (edge.source, edge.target) == ("lint", "integration-tests"))
    # lint is in the first column, integration-tests in the fourth: the edge crosses two columns
    # beside their boxes (auth-table, users-table, api-routes), never under them.
    assert positions["integration-tests"][0] - positions["lint"][0] == 3 * (
        positions["auth-table"][0] - positions["schema-init"][0]
    )
    assert crossed_boxes(positions, lint.path) == set()
    for edge in picture.edges:
        assert crossed_boxes(positions, edge.path) == set(), edge

"""Geometry for the pages' SVG pictures: the DAG, the Gantt timeline and the history chart.

Pure Python, no database and no templates: the views pass what a template needs to draw (boxes,
paths, bars, ticks), so the pictures render on the server and read without JavaScript. Replay
re-colours the same shapes in the browser from the data attributes set here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runs.timeline import Timeline

# DAG: boxes in columns by dependency depth, left to right.
NODE_W, NODE_H = 172, 44
# A graph may have 100,000 dependencies (SPEC section 2); a page draws at most this many of them.
MAX_DRAWN_EDGES = 3000
COLUMN_GAP, ROW_GAP = 64, 18
DAG_PAD = 12
LABEL_CHARS = 22

# Gantt: one row per node, one bar per attempt.
GANTT_LABEL_W, GANTT_CHART_W = 190, 760
GANTT_ROW_H, GANTT_BAR_H = 24, 14
GANTT_TOP, GANTT_BOTTOM = 8, 26
# An attempt with no length (start and record at one `ts`) still needs a bar wide enough to see its
# colour, and back-to-back attempts of one node need a gap so two bars never read as one.
GANTT_MIN_BAR_W, GANTT_BAR_GAP = 6.0, 2.0
# Bars narrower than this cannot show the failure stripes: they are filled solid instead.
GANTT_STRIPED_W = 12.0
# An axis label closer than this to the label at the run's end is dropped, so labels never overlap.
GANTT_TICK_ROOM = 48
# A closed attempt's outcome by its `ok`, which is None where its end told none (at run_end, say).
GANTT_OUTCOMES: dict[bool | None, str] = {True: "ok", False: "failed"}

# History chart: one bar per listed run, oldest on the left, and a time axis under them.
CHART_W, CHART_H, CHART_BOTTOM, CHART_LEFT = 720, 136, 34, 48
# The axis labels the start of at most this many runs, spread evenly over the listed ones.
CHART_TIME_LABELS = 5


def run_duration_label(row: Any) -> str:
    """A run's length as every page and table writes it: `8m 01.6s` once it ended; `≥ 1m 20.6s`
    while it has no `run_end` (running or interrupted), the time it is known to have lasted."""
    if row.elapsed_s is None:
        return ""
    label = seconds_label(row.elapsed_s)
    return label if row.duration_s is not None else f"≥ {label}"


def short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def seconds_label(seconds: float) -> str:
    """A compact duration for axes and tooltips: 0.4s, 46.8s, 8m 01.6s, 2h 05m."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds % 1 else f"{seconds:.0f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m {secs:04.1f}s" if secs % 1 else f"{int(minutes)}m {int(secs):02d}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h {minutes:02d}m"


# ---------------------------------------------------------------- DAG


@dataclass
class DagNode:
    id: str
    label: str
    x: int
    y: int
    state: str
    attempts: int
    # (seq, state) and (start seq, attempt number): what replay needs to redraw this box.
    changes: list[tuple[int, str]]
    attempt_starts: list[tuple[int, int]]
    title: str


@dataclass
class DagEdge:
    source: str
    target: str
    path: str
    blocking: bool


@dataclass
class DagPicture:
    width: int
    height: int
    nodes: list[DagNode]
    edges: list[DagEdge]
    # Dependencies between drawn nodes left out past MAX_DRAWN_EDGES.
    undrawn_edges: int = 0
    node_w: int = NODE_W
    node_h: int = NODE_H


def dag_picture(
    timeline: Timeline,
    order: Sequence[str],
    states: dict[str, str],
    attempts: dict[str, int],
    *,
    layers: dict[str, int] | None = None,
) -> DagPicture:
    """The DAG at one moment: `states` and `attempts` say how each node stood then.

    Columns are by dependency depth in the whole graph, unless `layers` gives each node's column.
    """
    depth = layers if layers is not None else timeline.depth()
    drawn = set(order)
    pairs: list[tuple[str, str]] = []
    undrawn_edges = 0
    for node_id in order:
        for dep in timeline.nodes[node_id].deps:
            if dep not in drawn:
                continue
            if len(pairs) >= MAX_DRAWN_EDGES:
                undrawn_edges += 1
                continue
            pairs.append((dep, node_id))
    layout = dag_layout(order, {n: depth.get(n, 0) for n in order}, pairs)
    blocking = timeline.blocking_edges(states)
    nodes = []
    for node_id in order:
        x, y = layout.positions[node_id]
        node = timeline.nodes[node_id]
        extra = "".join(f"\n{k}: {v}" for k, v in node.extra.items())
        nodes.append(
            DagNode(
                id=node_id,
                label=short(node_id),
                x=x,
                y=y,
                state=states[node_id],
                attempts=attempts[node_id],
                changes=node.changes,
                attempt_starts=[(a.start_seq, a.attempt) for a in node.attempts],
                title=f"{node_id}: {states[node_id]}, {_attempts_text(attempts[node_id])}{extra}",
            )
        )
    edges = [
        DagEdge(dep, node_id, path, (dep, node_id) in blocking)
        for (dep, node_id), path in zip(pairs, layout.paths, strict=True)
    ]
    # Blocking edges last, so they are drawn over the others.
    edges.sort(key=lambda e: e.blocking)
    return DagPicture(layout.width, layout.height, nodes, edges, undrawn_edges=undrawn_edges)


# The focused subgraph above a big run's DAG: the failures, what led to them, what they blocked.
# Three steps each way keep the failed nodes within the first few columns, so they are in sight
# without scrolling; 60 nodes keep the picture small whatever the graph's size.
FOCUS_GENERATIONS = 3
FOCUS_MAX_NODES = 60


@dataclass
class Focus:
    """The nodes of the focused subgraph, in graph order, and what it left out."""

    nodes: list[str]
    failed: list[str]
    # Dependencies of the failures, and blocked nodes downstream of them, not drawn here.
    ancestors_left_out: int
    blocked_left_out: int
    # Each node's column in the focused subgraph's picture.
    layers: dict[str, int]


def focus_nodes(timeline: Timeline, order: Sequence[str], states: dict[str, str]) -> Focus | None:
    """The failed nodes (or, if none failed, the blocked nodes nothing blocked), the chain of
    dependencies that led to them, and the blocked nodes they caused: nearest first, up to
    FOCUS_GENERATIONS steps away and FOCUS_MAX_NODES in all. None when nothing failed or blocked."""
    failed = [node_id for node_id in order if states[node_id] == "failed"]
    deps = {node_id: [d for d in timeline.nodes[node_id].deps if d in states] for node_id in order}
    seeds = failed or [
        node_id
        for node_id in order
        if states[node_id] == "blocked" and not any(states[d] in ("failed", "blocked") for d in deps[node_id])
    ]
    if not seeds:
        return None
    dependents: dict[str, list[str]] = {node_id: [] for node_id in order}
    for node_id in order:
        for dep in deps[node_id]:
            dependents[dep].append(node_id)
    upstream = _steps_from(seeds, deps.__getitem__)
    downstream = _steps_from(
        seeds, lambda node_id: [d for d in dependents[node_id] if states[d] == "blocked"]
    )
    steps = {**downstream, **upstream}
    position = {node_id: i for i, node_id in enumerate(order)}
    nearest = sorted(
        (node_id for node_id, step in steps.items() if step <= FOCUS_GENERATIONS),
        key=lambda node_id: (steps[node_id], position[node_id]),
    )
    nearest_few = set(nearest[:FOCUS_MAX_NODES])
    chosen = [node_id for node_id in order if node_id in nearest_few]
    return Focus(
        nodes=chosen,
        failed=failed,
        ancestors_left_out=sum(1 for n, step in upstream.items() if step and n not in chosen),
        blocked_left_out=sum(1 for n, step in downstream.items() if step and n not in chosen),
        layers=_focus_layers(chosen, upstream, downstream, deps, dependents),
    )


def _focus_layers(
    chosen: list[str],
    upstream: dict[str, int],
    downstream: dict[str, int],
    deps: dict[str, list[str]],
    dependents: dict[str, list[str]],
) -> dict[str, int]:
    """Columns that line the failures up: each dependency as many columns to their left as its
    longest path to one, each blocked node as many to their right as its longest path from one.

    By depth in the whole graph a failure deep in it would start hundreds of columns in; by depth
    in the subgraph, every dependency with none drawn would crowd the first column."""
    # Longest paths by relaxation from the breadth-first steps: a few rounds for a few nodes, and
    # bounded, so that a cycle in a malformed graph cannot keep it going.
    height = {n: upstream[n] for n in chosen if n in upstream}
    depth = {n: downstream[n] for n in chosen if n in downstream and not upstream.get(n)}
    for _ in range(len(chosen)):
        changed = False
        for node_id in chosen:
            if height.get(node_id):
                longest = max((height[d] + 1 for d in dependents[node_id] if d in height), default=0)
                if longest > height[node_id]:
                    height[node_id], changed = longest, True
            elif depth.get(node_id):
                longest = max((depth[d] + 1 for d in deps[node_id] if d in depth), default=0)
                if longest > depth[node_id]:
                    depth[node_id], changed = longest, True
        if not changed:
            break
    top = max(height.values(), default=0)
    return {n: top - height[n] if height.get(n) else top + depth.get(n, 0) for n in chosen}


def _steps_from(seeds: Sequence[str], neighbours: Callable[[str], list[str]]) -> dict[str, int]:
    """Breadth first from `seeds`: each node reached, with how many steps away it is (seeds: 0)."""
    steps = dict.fromkeys(seeds, 0)
    frontier = list(seeds)
    step = 0
    while frontier:
        step += 1
        frontier = [n for node_id in frontier for n in neighbours(node_id) if n not in steps]
        for node_id in frontier:
            steps.setdefault(node_id, step)
    return steps


# A layered (Sugiyama-style) layout, written here rather than taken from a library: the guarantee
# the picture needs (no edge passes under a box but its own two) follows from three short steps on
# the columns the page already draws (layers by dependency depth), while the layout libraries on
# offer either need a binary outside the project's Python dependencies (Graphviz's dot, ELK) or
# choose their own layering and node placement, so the guarantee would still rest on geometry
# checked here. The steps:
# - an edge that skips columns gets a dummy in each column it crosses: a thin slot of that column
#   that no box uses, where the edge runs straight across;
# - barycentre sweeps, down and up, order each column's boxes and dummies so edges cross less;
# - each column stacks its members top to bottom; between columns an edge is a curve whose control
#   points stay inside the gap, so it can only bend where there are no boxes.
# An edge that does not point rightwards (a cycle in a malformed graph) runs along a lane above
# every box, joining it through the gaps beside its two ends.
DUMMY_H = 16  # the height of an edge's slot in a column it crosses
LANE_H = 16  # the lane above the boxes, there only when an edge needs it
SWEEPS = 4

# A column member: a node's id, or (edge index, layer) for an edge crossing that layer.
Member = str | tuple[int, int]


@dataclass
class DagLayout:
    positions: dict[str, tuple[int, int]]  # each box's top left corner
    paths: list[str]  # one per edge, in the order given
    width: int
    height: int


def dag_layout(order: Sequence[str], layer_of: dict[str, int], pairs: Sequence[tuple[str, str]]) -> DagLayout:
    """Boxes in columns by `layer_of`, and a path for each (source, target) of `pairs`."""
    last = max(layer_of.values(), default=0)
    columns: list[list[Member]] = [[] for _ in range(last + 1)]
    for node_id in order:
        columns[layer_of[node_id]].append(node_id)
    before: dict[Member, list[Member]] = {}
    after: dict[Member, list[Member]] = {}
    chains: list[list[Member]] = []
    for index, (source, target) in enumerate(pairs):
        low, high = layer_of[source], layer_of[target]
        if high <= low:
            chains.append([])
            continue
        chain: list[Member] = [source, *((index, layer) for layer in range(low + 1, high)), target]
        for layer, member in zip(range(low + 1, high), chain[1:-1], strict=True):
            columns[layer].append(member)
        for left, right in itertools.pairwise(chain):
            after.setdefault(left, []).append(right)
            before.setdefault(right, []).append(left)
        chains.append(chain)

    _reduce_crossings(columns, before, after)

    tops: dict[Member, int] = {}
    lane = LANE_H if any(not chain for chain in chains) else 0
    bottom = 0
    for column in columns:
        y = DAG_PAD + lane
        for member in column:
            tops[member] = y
            y += NODE_H + ROW_GAP if isinstance(member, str) else DUMMY_H
        bottom = max(bottom, y)
    positions = {node_id: (_column_x(layer_of[node_id]), tops[node_id]) for node_id in order}

    paths = []
    for (source, target), chain in zip(pairs, chains, strict=True):
        (sx, sy), (tx, ty) = positions[source], positions[target]
        start, end = (sx + NODE_W, sy + NODE_H // 2), (tx, ty + NODE_H // 2)
        if not chain:
            paths.append(_lane_path(start, end, DAG_PAD + lane // 2))
            continue
        points = [start]
        for member in chain[1:-1]:
            assert isinstance(member, tuple)
            x, y = _column_x(member[1]), tops[member] + DUMMY_H // 2
            points += [(x, y), (x + NODE_W, y)]
        points.append(end)
        paths.append(_path_through(points))
    width = DAG_PAD * 2 + (last + 1) * (NODE_W + COLUMN_GAP) - COLUMN_GAP
    height = max(bottom - ROW_GAP, DAG_PAD + NODE_H) + DAG_PAD
    return DagLayout(positions, paths, width, height)


def _column_x(layer: int) -> int:
    return DAG_PAD + layer * (NODE_W + COLUMN_GAP)


def _reduce_crossings(
    columns: list[list[Member]], before: dict[Member, list[Member]], after: dict[Member, list[Member]]
) -> None:
    """Barycentre sweeps: each member moves towards the mean place of its neighbours in the column
    swept from; members with none keep their place. Sorting is stable, so ties keep the graph's order."""
    sweeps = [(range(1, len(columns)), before, -1), (range(len(columns) - 2, -1, -1), after, 1)]
    for _ in range(SWEEPS):
        for layers, neighbours, step in sweeps:
            for layer in layers:
                place = {member: i for i, member in enumerate(columns[layer + step])}
                column = columns[layer]
                keys = {
                    member: _mean([place[n] for n in neighbours.get(member, ()) if n in place], float(i))
                    for i, member in enumerate(column)
                }
                column.sort(key=keys.__getitem__)


def _path_through(points: list[tuple[int, int]]) -> str:
    """Straight across each column the edge crosses, a curve within each gap between columns.

    `points` alternate: a point leaving a column (a box's right side, or a dummy's) and one entering
    the next. A gap's curve has its control points inside the gap, and a cubic stays within the
    hull of its control points, so it never reaches into a column."""
    (x, y), *rest = points
    parts = [f"M{x},{y}"]
    for i, (nx, ny) in enumerate(rest):
        if i % 2:
            parts.append(f"L{nx},{ny}")
        else:
            middle = (x + nx) // 2
            parts.append(f"C{middle},{y} {middle},{ny} {nx},{ny}")
        x, y = nx, ny
    return " ".join(parts)


def _lane_path(start: tuple[int, int], end: tuple[int, int], lane_y: int) -> str:
    """An edge that points left or stays in its column: out into the gap on its source's right,
    up to the lane above every box, along it, and down the gap on its target's left."""
    (sx, sy), (tx, ty) = start, end
    out, back = sx + DAG_PAD // 2, tx - DAG_PAD // 2
    return f"M{sx},{sy} L{out},{sy} L{out},{lane_y} L{back},{lane_y} L{back},{ty} L{tx},{ty}"


def _attempts_text(attempts: int) -> str:
    return "not run" if attempts == 0 else "1 attempt" if attempts == 1 else f"{attempts} attempts"


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


# ---------------------------------------------------------------- Gantt


@dataclass
class GanttBar:
    node: str
    attempt: int
    x: float
    width: float
    # The bar's full width once the attempt is over; replay shortens it while the attempt runs.
    final_width: float
    outcome: str  # ok, failed, open, unknown: as drawn at the replay position
    final_outcome: str
    start_seq: int
    end_seq: int | None
    title: str
    # Too narrow for the failure stripes: drawn in solid colour.
    narrow: bool = False
    hidden: bool = False


@dataclass
class GanttMark:
    """A moment with no bar: a node blocked by a failure upstream."""

    x: float
    seq: int
    label: str
    hidden: bool = False


@dataclass
class GanttRow:
    node: str
    label: str
    y: int
    state: str
    bars: list[GanttBar] = field(default_factory=list)
    marks: list[GanttMark] = field(default_factory=list)


@dataclass
class GanttPicture:
    width: int
    height: int
    rows: list[GanttRow]
    ticks: list[tuple[float, str]]
    # x of every event, by position in the log: where replay puts its cursor.
    event_x: list[float]
    cursor_x: float | None
    label_w: int = GANTT_LABEL_W
    chart_w: int = GANTT_CHART_W
    row_h: int = GANTT_ROW_H
    bar_h: int = GANTT_BAR_H
    axis_y: int = 0


def gantt_picture(
    timeline: Timeline, order: Sequence[str], states: dict[str, str], at: int | None
) -> GanttPicture:
    start = timeline.started
    span = 1.0
    if start is not None and timeline.finished is not None:
        span = max(1.0, (timeline.finished - start).total_seconds())
    scale = GANTT_CHART_W / span

    def x_of(ts: datetime | None) -> float:
        if ts is None or start is None:
            return GANTT_LABEL_W
        return GANTT_LABEL_W + max(0.0, (ts - start).total_seconds()) * scale

    times = dict(timeline.event_times)
    # x_of for every event, written out: a long run has thousands.
    event_x = (
        [
            round(GANTT_LABEL_W + max(0.0, (ts - start).total_seconds()) * scale, 1)
            for _seq, ts in timeline.event_times
        ]
        if start is not None
        else [float(GANTT_LABEL_W)] * len(timeline.event_times)
    )
    final_x = x_of(timeline.finished)
    cursor_x = x_of(times.get(at)) if at is not None else None
    rows = []
    for index, node_id in enumerate(order):
        row = GanttRow(node_id, short(node_id, 26), GANTT_TOP + index * GANTT_ROW_H, states[node_id])
        attempts = timeline.nodes[node_id].attempts
        spans = _bar_spans([(x_of(a.start), x_of(a.end) if a.end is not None else final_x) for a in attempts])
        for attempt, (x, final_width) in zip(attempts, spans, strict=True):
            outcome = "open" if attempt.open else GANTT_OUTCOMES.get(attempt.ok, "unknown")
            bar = GanttBar(
                node=node_id,
                attempt=attempt.attempt,
                x=round(x, 1),
                width=round(final_width, 1),
                final_width=round(final_width, 1),
                outcome=outcome,
                final_outcome=outcome,
                start_seq=attempt.start_seq,
                end_seq=attempt.end_seq,
                title=_bar_title(node_id, attempt, outcome),
                narrow=final_width < GANTT_STRIPED_W,
            )
            if at is not None:
                if attempt.start_seq > at:
                    bar.hidden = True
                elif attempt.end_seq is None or attempt.end_seq > at:
                    bar.outcome = "open"
                    bar.width = round(max(GANTT_MIN_BAR_W, (cursor_x or x) - x), 1)
            row.bars.append(bar)
        for seq, state in timeline.nodes[node_id].changes:
            if state == "blocked":
                hidden = at is not None and seq > at
                row.marks.append(GanttMark(round(x_of(times.get(seq)), 1), seq, "blocked", hidden))
        rows.append(row)
    axis_y = GANTT_TOP + len(order) * GANTT_ROW_H
    # The axis runs to the run's end: its last label is the run's length, and a regular tick too
    # close to it gives way.
    ticks = [
        (round(GANTT_LABEL_W + s * scale, 1), seconds_label(s))
        for s in _nice_ticks(span)
        if (span - s) * scale >= GANTT_TICK_ROOM
    ]
    ticks.append((round(GANTT_LABEL_W + span * scale, 1), seconds_label(span)))
    return GanttPicture(
        width=GANTT_LABEL_W + GANTT_CHART_W + 72,  # room for a "blocked" mark at the very end
        height=axis_y + GANTT_BOTTOM,
        rows=rows,
        ticks=ticks,
        event_x=event_x,
        cursor_x=round(cursor_x, 1) if cursor_x is not None else None,
        axis_y=axis_y,
    )


def _bar_spans(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """x and width of each attempt's bar: at least GANTT_MIN_BAR_W wide, GANTT_BAR_GAP apart.

    A bar that would touch the next one is cut short when it is long enough to lose the gap,
    otherwise the next bar moves right: a few pixels off true time, never two attempts as one bar.
    """
    placed: list[list[float]] = []
    # Rounded as drawn at every step, so the gap holds in the page's numbers too.
    for start_x, end_x in spans:
        x = round(start_x, 1)
        if placed:
            previous = placed[-1]
            room = round(x - GANTT_BAR_GAP - previous[0], 1)
            if previous[1] > room:
                previous[1] = max(GANTT_MIN_BAR_W, room)
            x = max(x, round(previous[0] + previous[1] + GANTT_BAR_GAP, 1))
        placed.append([x, max(GANTT_MIN_BAR_W, round(end_x - x, 1))])
    return [(x, width) for x, width in placed]


def _bar_title(node_id: str, attempt: Any, outcome: str) -> str:
    words = {"ok": "succeeded", "failed": "failed", "open": "still running", "unknown": "ended, no record"}
    text = f"{node_id} attempt {attempt.attempt}: {words[outcome]}"
    if attempt.duration_s is not None:
        text += f" in {seconds_label(attempt.duration_s)}"
    if attempt.error:
        text += f" — {attempt.error}"
    return text


def _nice_ticks(span: float, target: int = 6) -> list[float]:
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400]
    step = next(
        (s for s in steps if span / s <= target), steps[-1] * max(1, round(span / steps[-1] / target))
    )
    count = int(span // step)
    return [i * step for i in range(count + 1)]


# ---------------------------------------------------------------- history chart


@dataclass
class ChartBar:
    run_id: str
    x: float
    y: float
    width: float
    height: float
    verdict: str
    title: str


@dataclass
class ChartTime:
    """A label of the time axis: when the run under it started. The template writes the time, in
    the reader's zone; `anchor` keeps the first and last labels inside the picture."""

    x: float
    started: datetime
    anchor: str


@dataclass
class HistoryChart:
    width: int
    height: int
    bars: list[ChartBar]
    max_label: str
    times: list[ChartTime] = field(default_factory=list)
    left: int = CHART_LEFT
    baseline: int = CHART_H - CHART_BOTTOM


def history_chart(rows: Sequence[Any]) -> HistoryChart | None:
    """Duration (bar height) and verdict (colour) of the listed runs, oldest first, over the time
    each started."""
    if not rows:
        return None
    durations = [row.elapsed_s or 0.0 for row in reversed(rows)]
    longest = max(durations) or 1.0
    slot = (CHART_W - CHART_LEFT) / len(durations)
    width = max(2.0, min(28.0, slot * 0.72))
    usable = CHART_H - CHART_BOTTOM - 8
    bars = []
    for i, (row, seconds) in enumerate(zip(reversed(rows), durations, strict=True)):
        height = max(2.0, usable * seconds / longest)
        bars.append(
            ChartBar(
                run_id=row.run_id,
                x=round(CHART_LEFT + i * slot + (slot - width) / 2, 1),
                y=round(CHART_H - CHART_BOTTOM - height, 1),
                width=round(width, 1),
                height=round(height, 1),
                verdict=row.verdict,
                title=f"{row.run_id}: {row.verdict}, {run_duration_label(row) or 'not started'}",
            )
        )
    oldest_first = list(reversed(rows))
    return HistoryChart(CHART_W, CHART_H, bars, seconds_label(longest), _chart_times(oldest_first, bars))


def _chart_times(rows: Sequence[Any], bars: Sequence[ChartBar]) -> list[ChartTime]:
    """The axis: the start times of the first and last listed runs that started and of a few evenly
    between, under their bars. The bars stand in list order, not at their times, so each label
    names its bar; the outer two are aligned to their bar's outer edge, to stay in the picture."""
    started = [index for index, row in enumerate(rows) if row.started is not None]
    if not started:
        return []
    last = len(started) - 1
    picked = sorted({started[round(i * last / (CHART_TIME_LABELS - 1))] for i in range(CHART_TIME_LABELS)})
    times = []
    for place, index in enumerate(picked):
        bar = bars[index]
        if len(picked) == 1:
            x, anchor = bar.x + bar.width / 2, "middle"
        elif place == 0:
            x, anchor = bar.x, "start"
        elif place == len(picked) - 1:
            x, anchor = bar.x + bar.width, "end"
        else:
            x, anchor = bar.x + bar.width / 2, "middle"
        times.append(ChartTime(round(x, 1), rows[index].started, anchor))
    return times

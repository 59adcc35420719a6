"""Writes simulated runs into an archive (ingest/simulator.py): many at once, or one slowly, live."""

import random
import signal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingest.simulator import SimulationError, archive_synthesize, run_live, synthetic_edges
from runs.read_model import verdict_word


class Command(BaseCommand):
    help = (
        "Writes simulated KAHN runs into an archive, as a producer would: --runs N complete runs at once, "
        "or --live RUN_ID to append one run slowly while Scope follows the archive."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path", nargs="?", type=Path, help="the archive root, holding runs/ (default: KAHN_ARCHIVE)"
        )
        parser.add_argument("--runs", type=int, help="how many runs to write (default 100)")
        parser.add_argument(
            "--nodes",
            type=int,
            default=None,
            help="nodes of the synthetic DAG (default 40; with --live, the sample's 7-node DAG)",
        )
        parser.add_argument(
            "--seed", type=int, default=1, help="the same seed writes the same runs (default 1)"
        )
        parser.add_argument(
            "--flake", type=float, default=0.1, help="chance a node fails once or twice, then succeeds"
        )
        parser.add_argument(
            "--fail",
            type=float,
            default=0.005,
            help="chance a node fails all its attempts, blocking the rest",
        )
        parser.add_argument("--live", metavar="RUN_ID", help="append this one run slowly, as it runs")
        parser.add_argument(
            "--interval", type=float, help="with --live: seconds between instants (default 1)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        root = options["path"] or settings.KAHN_ARCHIVE
        if not isinstance(root, Path):
            raise CommandError(
                f"KAHN_ARCHIVE is {root}: the simulator writes into a folder; give a folder's path"
            )
        if options["live"] is not None and options["runs"] is not None:
            raise CommandError("--runs writes many runs at once and --live one run slowly: give one of them")
        if options["live"] is None and options["interval"] is not None:
            raise CommandError("--interval paces a live run: it needs --live RUN_ID")
        try:
            if options["live"] is not None:
                self._live(root, options)
            else:
                self._synthesize(root, options)
        except SimulationError as refused:
            raise CommandError(str(refused)) from None

    def _synthesize(self, root: Path, options: dict[str, Any]) -> None:
        synthesis = archive_synthesize(
            root,
            runs=100 if options["runs"] is None else options["runs"],
            nodes=40 if options["nodes"] is None else options["nodes"],
            seed=options["seed"],
            flake=options["flake"],
            fail=options["fail"],
        )
        outcomes = [summary["outcome"] for summary in synthesis.summaries]
        counts = ", ".join(
            f"{outcomes.count(name)} {verdict_word('complete', name)}"
            for name in ("clean", "clean_with_flake", "failed")
        )
        self.stdout.write(
            f"wrote {len(outcomes)} runs ({counts}), {synthesis.events} events, under {root / 'runs'}"
        )

    def _live(self, root: Path, options: dict[str, Any]) -> None:
        edges = None
        if options["nodes"] is not None:
            if options["nodes"] < 1:
                raise CommandError(f"--nodes must be at least 1 (got {options['nodes']})")
            edges = synthetic_edges(options["nodes"], random.Random(options["seed"]))
        run_id = options["live"]
        interval = 1.0 if options["interval"] is None else options["interval"]
        # Ctrl-C and a service manager's SIGTERM both end the producer like a crash; set here, as a
        # process started in the background inherits SIGINT ignored.
        previous = {
            signum: signal.signal(signum, signal.default_int_handler)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        written = 0

        def show(event: dict[str, Any]) -> None:
            # The first line is written only once the run id, the plan and the folder were accepted.
            nonlocal written
            if not written:
                self.stdout.write(
                    f"writing run {run_id} under {root / 'runs'}, one instant every {interval} s"
                )
            written += 1
            self.stdout.write(_line_shown(event))

        try:
            run = run_live(
                root,
                run_id,
                interval=interval,
                edges=edges,
                seed=options["seed"],
                flake=options["flake"],
                fail=options["fail"],
                on_line=show,
            )
        except KeyboardInterrupt:
            self.stdout.write(
                f"stopped: run {run_id} is left unfinished (no summary.json), as a crashed producer leaves it"
            )
            return
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        summary = run.summary or {}
        result = verdict_word("complete", summary["outcome"])
        self.stdout.write(
            f"run {run_id} ended: {result}, {summary['total_attempts']} attempts, "
            f"{summary['flake_retries']} flake retries"
        )


def _line_shown(event: dict[str, Any]) -> str:
    kind = event["event"]
    if kind == "transition":
        return (
            f"  {event['ts']}  {event['node']}: {event['from']} → {event['to']} (attempt {event['attempt']})"
        )
    if kind == "node_attempt":
        verdict = "ok" if event["ok"] else "failed"
        return f"  {event['ts']}  {event['node']}: attempt {event['attempt']} {verdict}"
    return f"  {event['ts']}  {kind}"

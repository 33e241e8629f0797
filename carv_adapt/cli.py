"""The ``carv-adapt`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _cmd_schedule(args: argparse.Namespace) -> int:
    from carv_adapt.schedule import refit_steps

    steps = refit_steps(args.warmup_steps, args.refit_every, args.total_steps)
    print(f"warm-up: steps 0..{args.warmup_steps - 1}; refits at steps {steps}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from carv_adapt.demo import DemoSettings, format_table, run_demo

    settings = DemoSettings(
        workload=args.workload,
        steps=args.steps,
        seed=args.seed,
        out=Path(args.out),
        replications=args.replications,
        quick=args.quick,
    )
    console = Console()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        summary = run_demo(settings, progress)
    rows = format_table(summary)
    table = Table(title=f"carv-adapt demo: {args.workload}, equal compute, seed {args.seed}")
    for h in rows[0]:
        table.add_column(h, justify="right")
    for r in rows[1:]:
        table.add_row(*r)
    console.print(table)
    m = summary["measured"]
    console.print(
        f"measured ECM {m['ecm']:.2f} from {m['replications']} replications per policy at the adaptive "
        f"run's final parameters (variance rel. SE {100 * m['variance_relative_se']:.0f}%); "
        f"report in {settings.out}/"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carv-adapt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schedule", help="print the warm-up and refit steps a config implies")
    s.add_argument("--warmup-steps", type=int, default=20)
    s.add_argument("--refit-every", type=int, default=10)
    s.add_argument("--total-steps", type=int, default=100)
    s.set_defaults(func=_cmd_schedule)
    d = sub.add_parser("demo", help="baseline vs adaptive at equal compute on a workload; writes a report")
    d.add_argument("--workload", default="sds3d", choices=["sds3d"])
    d.add_argument("--steps", type=int, default=60, help="baseline steps (the adaptive run gets equal compute)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="carv_report")
    d.add_argument("--replications", type=int, default=30, help="per policy, for the measured ECM")
    d.add_argument("--quick", action="store_true", help="a smaller scene and fewer ray samples (tests)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

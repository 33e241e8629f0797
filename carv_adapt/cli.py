"""The ``carv-adapt`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_schedule(args: argparse.Namespace) -> int:
    from carv_adapt.schedule import refit_steps

    steps = refit_steps(args.warmup_steps, args.refit_every, args.total_steps)
    print(f"warm-up: steps 0..{args.warmup_steps - 1}; refits at steps {steps}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carv-adapt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schedule", help="print the warm-up and refit steps a config implies")
    s.add_argument("--warmup-steps", type=int, default=20)
    s.add_argument("--refit-every", type=int, default=10)
    s.add_argument("--total-steps", type=int, default=100)
    s.set_defaults(func=_cmd_schedule)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""The ``carv-adapt`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from carv_adapt.errors import CarvError, ConfigError

__all__ = ["main"]

_WORKLOADS = ("sds3d", "distill", "attribution", "diffusion_head")
_TEACHER_HELP = "sds3d's teacher: 'tiny-digits' (default), 'sd-tiny' or a local diffusers folder with a VAE"


def _version() -> str:
    """The installed distribution's version, else ``carv_adapt.__version__``, else ``"unknown"``."""
    from importlib import metadata

    try:
        return metadata.version("carv_adapt")
    except metadata.PackageNotFoundError:
        import carv_adapt

        return str(getattr(carv_adapt, "__version__", "unknown"))


def _cmd_schedule(args: argparse.Namespace) -> int:
    from carv_adapt.schedule import refit_steps

    steps = refit_steps(args.warmup_steps, args.refit_every, args.total_steps)
    print(f"warm-up: steps 0..{args.warmup_steps - 1}; refits at steps {steps}")
    return 0


def _demo_config(args: argparse.Namespace, defaults: dict[str, dict]) -> dict | None:
    if args.max_angle_deg is None:
        return None
    if args.workload != "sds3d":
        raise ConfigError(f"--max-angle-deg applies to the sds3d workload only, not {args.workload!r}")
    return {**defaults["sds3d"], "max_angle_deg": args.max_angle_deg}


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from carv_adapt.demo import DEMO_CONFIG, DemoSettings, format_table, run_demo

    torch.set_num_threads(args.threads)

    settings = DemoSettings(
        workload=args.workload,
        steps=args.steps,
        seed=args.seed,
        out=Path(args.out),
        replications=args.replications,
        quick=args.quick,
        teacher=args.teacher,
        config=_demo_config(args, DEMO_CONFIG),
    )
    console = Console(width=180)  # the table has 13 columns
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
    clock, ttq = summary["clock"], summary["time_to_quality"]
    b_sec, a_sec = summary["baseline"]["compute_seconds"], summary["adaptive"]["compute_seconds"]
    measured = f" (measured stage seconds: baseline {b_sec:.1f}, adaptive {a_sec:.1f})" if clock["costs"] else ""
    console.print(
        f"compute: {clock['description']}{measured}. to base@F: the compute (fraction of the baseline's budget) a "
        f"run needs to reach the baseline's {ttq['metric']} at F of its budget (>1: not within it); curves in "
        f"{settings.out}/quality_vs_compute.png"
    )
    m = summary["measured"]
    console.print(
        f"measured ECM {m['ecm']:.2f} from {m['replications']} replications per policy at the adaptive "
        f"run's final parameters (variance rel. SE {100 * m['variance_relative_se']:.0f}%); "
        f"report in {settings.out}/"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from carv_adapt.inspect import load_inspectable, report_lines, write_plots

    policy, log = load_inspectable(args.path)
    for line in report_lines(policy, log):
        print(line)
    written = write_plots(Path(args.out), policy, log, preview=args.preview)
    print("plots: " + ", ".join(str(p) for p in written))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from carv_adapt.fit.bayesopt import DEFAULT_SPACE, bayes_optimize
    from carv_adapt.fit.closed_form import policy_from_record
    from carv_adapt.fit.logs import read_refit_log
    from carv_adapt.fit.replay import replay_objective

    console = Console(width=160)
    records = read_refit_log(args.log)
    record = records[-1]
    T = args.num_timesteps if args.num_timesteps is not None else getattr(record, "num_timesteps", None)
    if T is None:
        raise ConfigError(
            f"{args.log}: the refit log does not record num_timesteps (T); pass --num-timesteps (e.g. 1000)"
        )
    closed = policy_from_record(record, T)
    console.print(
        f"closed form from step {record.step}: K*={closed.allocation.K}, predicted ECM "
        f"{closed.provenance['predicted_ecm']:.3g}"
    )
    # The replay simulates a problem with the record's variances, so it needs both positive; a last between estimate
    # within its own noise of 0 (it can read <= 0) is replayed from the latest record that has them.
    source = next((r for r in reversed(records) if min(r.sigma_b2, r.sigma_w2) > 0), None)
    if source is None:
        raise ConfigError(f"{args.log}: no record has positive sigma_b2 and sigma_w2 to replay the hyper-parameters on")
    if source is not record:
        console.print(
            f"replaying the statistics of step {source.step}: step {record.step}'s sigma_B^2 {record.sigma_b2:.3g} "
            "is not positive"
        )
    objective = replay_objective(source, T, steps=args.replay_steps, seeds=args.replay_seeds)
    with Progress(console=console) as progress:
        task = progress.add_task("BoTorch trials (replays of the log)", total=args.trials)
        res = bayes_optimize(
            objective,
            DEFAULT_SPACE,
            n_trials=args.trials,
            n_init=min(5, args.trials),
            seed=args.seed,
            on_trial=lambda t: progress.advance(task),
        )
    table = Table(title="trials (W = mean work-normalized variance over the replay; lower is better)")
    for col in ["#", *[p.name for p in DEFAULT_SPACE], "W", "se"]:
        table.add_column(col, justify="right")
    for i, t in enumerate(res.trials):
        table.add_row(str(i), *[f"{t.params[p.name]:.4g}" for p in DEFAULT_SPACE], f"{t.value:.4g}", f"{t.se:.2g}")
    console.print(table)
    best = res.best.params
    ints = {p.name for p in DEFAULT_SPACE if p.integer}
    # Every tuned setting goes into the policy by its own name (bins, alpha, smoothing, forgetting, ...).
    tuned = {k: int(v) if k in ints else float(v) for k, v in best.items()}
    policy = policy_from_record(
        record,
        T,
        adaptive=not args.frozen,
        provenance={"log": Path(args.log).name, "trials": args.trials, "seed": args.seed, "best_W": res.best.value},
        **tuned,
    )
    policy.save(args.output)
    console.print(
        f"wrote {args.output}: K={policy.allocation.K}, best replay W={res.best.value:.4g} "
        f"(trial {res.trials.index(res.best)})"
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import shlex

    import torch
    from rich.console import Console
    from rich.markdown import Markdown

    from carv_adapt.bench import BenchSettings, run_bench

    torch.set_num_threads(args.threads)
    settings = BenchSettings(
        workloads=tuple(args.workloads),
        seed=args.seed,
        replications=args.replications,
        e2e_seeds=tuple(range(args.seeds)),
        sweep=not args.no_sweep,
        scaling=not args.no_scaling,
        quick=args.quick,
        out=Path(args.out),
        teacher=args.teacher,
    )
    console = Console(width=200)
    command = "carv-adapt " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "carv-adapt bench"
    with console.status("benchmarking") as status:
        result = run_bench(settings, command=command, progress=lambda msg: status.update(msg))
    console.print(Markdown((Path(args.out) / "bench.md").read_text()))
    console.print(f"wrote {args.out}/bench.json, bench.md and figures in {result['wall_seconds'] / 60:.1f} min")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carv-adapt", description=__doc__)
    p.add_argument("--version", action="version", version=f"carv-adapt {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("schedule", help="print the warm-up and refit steps a config implies")
    s.add_argument("--warmup-steps", type=int, default=20, help="steps of warm-up before the first refit")
    s.add_argument("--refit-every", type=int, default=10, help="steps between refits after the warm-up")
    s.add_argument("--total-steps", type=int, default=100, help="training steps in all")
    s.set_defaults(func=_cmd_schedule)
    d = sub.add_parser(
        "demo", help="baseline vs adaptive at equal compute on a workload: quality against compute; writes a report"
    )
    d.add_argument("--workload", default="sds3d", choices=_WORKLOADS, help="the workload to run")
    d.add_argument("--steps", type=int, default=300, help="baseline steps (the adaptive run gets equal compute)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the workload and the controller")
    d.add_argument("--out", default="carv_report", help="folder for the report (table, plots, summary.json)")
    d.add_argument("--replications", type=int, default=30, help="per policy, for the measured ECM")
    d.add_argument("--quick", action="store_true", help="a smaller scene and fewer ray samples (tests)")
    d.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small models: 1 is fastest)")
    d.add_argument("--teacher", default=None, help=_TEACHER_HELP)
    d.add_argument(
        "--max-angle-deg",
        type=float,
        default=None,
        help="sds3d: the training cameras' cone around the front view (default 90; 25 saturates both runs early)",
    )
    d.set_defaults(func=_cmd_demo)
    i = sub.add_parser("inspect", help="report and plots for a policy or a refit log (told apart by content)")
    i.add_argument(
        "path",
        help="a policy file (a JSON object with schema_version) or a refit log (one JSON refit record per line)",
    )
    i.add_argument("--out", default="carv_inspect", help="folder for the PNG plots")
    i.add_argument("--preview", type=int, default=0, help="draw this many timesteps through the training path")
    i.set_defaults(func=_cmd_inspect)
    f = sub.add_parser("fit", help="fit a policy from a refit log: closed form, then BoTorch on replays")
    f.add_argument("log", help="refit log (JSONL) written by JsonlRefitLog; its last record is fitted")
    f.add_argument("-o", "--output", required=True, help="path of the policy JSON file to write")
    f.add_argument(
        "--num-timesteps",
        type=int,
        default=None,
        help="read from the log; needed only for logs that lack it",
    )
    f.add_argument("--trials", type=int, default=12, help="BoTorch trials (each one a replay of the log)")
    f.add_argument("--seed", type=int, default=0, help="random seed of the BoTorch search")
    f.add_argument("--replay-steps", type=int, default=150, help="training steps per replay of the log")
    f.add_argument("--replay-seeds", type=int, default=2, help="seeds per trial (W is their mean)")
    f.add_argument("--frozen", action="store_true", help="write a frozen (non-adaptive) policy")
    f.set_defaults(func=_cmd_fit)
    b = sub.add_parser("bench", help="ECM ablation, equal-compute runs, cost sweep and scaling; writes a report")
    b.add_argument(
        "--workloads",
        nargs="+",
        default=list(_WORKLOADS),
        choices=_WORKLOADS,
        help="workloads to benchmark (default: all)",
    )
    b.add_argument("--seed", type=int, default=0, help="random seed of the benchmark")
    b.add_argument("--replications", type=int, default=80, help="per policy and checkpoint")
    b.add_argument("--seeds", type=int, default=3, help="seeds of the equal-compute runs (0 skips them)")
    b.add_argument("--no-sweep", action="store_true", help="skip the SDS-3D cost sweep")
    b.add_argument("--no-scaling", action="store_true", help="skip the controller scaling table")
    b.add_argument("--quick", action="store_true", help="tiny sizes everywhere: a smoke test, not a measurement")
    b.add_argument("--out", default="bench_report", help="folder for bench.json, bench.md and the figures")
    b.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    b.add_argument("--teacher", default=None, help=_TEACHER_HELP)
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; a library error (:class:`~carv_adapt.errors.CarvError`) prints one line to stderr
    and returns 2, like a usage error."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CarvError as e:
        print(f"carv-adapt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The README's benchmark blocks, regenerated from ``bench.json``:

    python -m carv_adapt.bench.report --readme README.md --bench docs/bench/bench.json

(or ``python -m carv_adapt.bench.readme``). :func:`readme_sections` renders the blocks, every table through
:func:`~carv_adapt.bench.markdown.md_table` and checked by :func:`~carv_adapt.bench.markdown.check_markdown_tables`;
the README is only changed between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (:func:`update_readme`)."""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from carv_adapt.bench import report
from carv_adapt.bench.ablation import VARIANTS
from carv_adapt.bench.markdown import _checked, check_markdown_tables, md_table
from carv_adapt.bench.readme_blocks import extra_sections
from carv_adapt.bench.report import _adaptive_over_oracle, _adaptive_over_oracle_ci, _ci, _f, ablation_table
from carv_adapt.errors import ConfigError

__all__ = ["README_SECTIONS", "readme_sections", "render_readme", "update_readme", "main"]

#: The README's generated blocks (marker names), in the order they appear. ``wall_time`` is one line, used
#: inline (its markers sit inside a sentence); the others are blocks (each marker alone on its line).
README_SECTIONS = ("wall_time", "ablation", "targets", "misses", "calibration", "e2e", "sweep", "scaling")

#: The targets the README's targets table checks the run against.
ECM_TARGETS = {"sds3d": 3.0, "attribution": 2.5}
IS_STRAT_GAIN_TARGET = 0.25
ORACLE_RATIO_TARGET = 0.95
IDDPM_MULTIPLE_TARGET = 1.5
OVERHEAD_TARGET = 0.01

_NAMES = {"sds3d": "SDS-3D", "distill": "distillation", "attribution": "attribution"}


def _ratio_w_b(x: Any) -> str:
    """``sigma_W^2 / sigma_B^2`` for the README: whole numbers from 10 up, one decimal below (618, 28, 4.0, 0.5)."""
    return _f(x, "{:.0f}" if isinstance(x, int | float) and abs(x) >= 10 else "{:.1f}")


def _name(workload: str) -> str:
    return _NAMES.get(workload, workload)


def _sig(x: Any, n: int = 3) -> str:
    """``x`` with ``n`` significant figures in fixed point (0.998, 50.1, 76.0)."""
    if x is None or not math.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{max(0, n - 1 - math.floor(math.log10(abs(x))))}f}"


def _span(values: Sequence[Any], fmt: Any = str) -> str:
    """``lo-hi`` of the formatted minimum and maximum, or the one value when they print the same."""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _mb(x: Any) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if x >= 1024:
        return f"{x / 1024:.3g} GB"
    return f"{x:.0f} MB" if x >= 1 else f"{x:.2f} MB"


def _ecm(c: dict[str, Any], variant: str) -> float:
    r = next((r for r in c["variants"] if r["variant"] == variant), None)
    return math.nan if r is None else r["ecm"]


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _status(flags: Sequence[bool]) -> str:
    if all(flags):
        return "met"
    return "missed" if not any(flags) else f"met in {sum(flags)} of {len(flags)}"


def _per_workload(
    result: dict[str, Any],
    value: Callable[[dict[str, Any]], float],
    fmt: Callable[[float], str],
    target: float,
    suffix: str = "",
) -> tuple[list[str], list[str], list[bool]]:
    """Per workload: ``value(checkpoint)`` at every checkpoint joined by `` / ``, its status against ``target``
    (at least), and the flags of all checkpoints."""
    measured, status, flags = [], [], []
    for w in result["ablation"]:
        vs = [value(c) for c in w["checkpoints"]]
        ok = [v >= target for v in vs]
        measured.append(f"{_name(w['workload'])} " + " / ".join(fmt(v) for v in vs) + suffix)
        status.append(f"{_name(w['workload'])} {_status(ok)}")
        flags += ok
    return measured, status, flags


def _targets(result: dict[str, Any]) -> list[str]:
    rows = []
    for w in result["ablation"]:
        if w["workload"] in ECM_TARGETS:
            t = ECM_TARGETS[w["workload"]]
            vs = [_ecm(c, "adaptive") for c in w["checkpoints"]]
            when = " (early / mid / late)" if len(vs) == 3 and not rows else ""
            rows.append(
                [f"ECM >= {t:g} on {_name(w['workload'])}", "adaptive " + " / ".join(f"{v:.1f}" for v in vs) + when]
                + [_status([v >= t for v in vs])]
            )
    measured, status, _ = _per_workload(
        result,
        lambda c: _ratio(_ecm(c, "+strat"), _ecm(c, "reuse")) - 1,
        lambda v: f"{100 * v:+.0f} %",
        IS_STRAT_GAIN_TARGET,
    )
    rows.append(
        [f"IS + stratification add >= {100 * IS_STRAT_GAIN_TARGET:.0f} % over reuse", "; ".join(measured)]
        + ["; ".join(status)]
    )
    measured, _, flags = _per_workload(result, _adaptive_over_oracle, lambda v: f"{v:.2f}", ORACLE_RATIO_TARGET)
    reach = sum(hi >= ORACLE_RATIO_TARGET for hi in report.oracle_ratio_highs(result))
    note = f"; 90 % CI reaches {ORACLE_RATIO_TARGET:g} in {reach} of {len(flags)}" if reach and not all(flags) else ""
    rows.append([f"adaptive / oracle >= {ORACLE_RATIO_TARGET:g}", "; ".join(measured), _status(flags) + note])
    measured, status, _ = _per_workload(
        result,
        lambda c: _ratio(_ecm(c, "adaptive"), _ecm(c, "iddpm")),
        lambda v: f"{v:.1f}",
        IDDPM_MULTIPLE_TARGET,
        suffix="x",
    )
    rows.append([f"adaptive >= {IDDPM_MULTIPLE_TARGET:g}x the IDDPM resampler", "; ".join(measured), "; ".join(status)])
    o = [(w["workload"], w["overhead"]) for w in result["ablation"]]
    ok = [x["controller_fraction"] <= OVERHEAD_TARGET for _, x in o]
    status = _status(ok)
    if not all(ok):
        status += (
            f": {_span([x['controller_ms_per_step'] for _, x in o], '{:.2f}'.format)} ms per step against "
            f"{_span([x['ms_per_step'] for _, x in o], '{:.0f}'.format)} ms steps"
        )
    rows.append(
        [f"controller overhead <= {100 * OVERHEAD_TARGET:g} % of step time"]
        + [", ".join(f"{100 * x['controller_fraction']:.1f} % ({_name(wl)})" for wl, x in o), status]
    )
    return md_table(["target", "measured", "status"], rows)


def _calibration(result: dict[str, Any]) -> list[str]:
    ratios = [r["W_predicted"] / r["W"] for w in result["ablation"] for c in w["checkpoints"] for r in c["variants"]]
    ratios = [x for x in ratios if math.isfinite(x)]  # no pilot prediction for outer designs
    ctl = "; ".join(
        f"{_name(w['workload'])} "
        + " / ".join(_f(c["controller"]["predicted_ecm"]) for c in w["checkpoints"])
        + " against "
        + " / ".join(_f(_ecm(c, "adaptive")) for c in w["checkpoints"])
        + (" measured" if i == 0 else "")
        for i, w in enumerate(result["ablation"])
    )
    text = (
        "**Calibration.** The pilot's variance model predicts the measured `W` of every policy at every "
        f"checkpoint within {min(ratios):.2f}-{max(ratios):.2f}x (median {statistics.median(ratios):.2f}; "
        "`calibration.png`, full table in `docs/bench/bench.md`). The controller's own predicted ECM, from its "
        f"online statistics: {ctl}. {report.cost_agreement(result)}"
    )
    # Wrapped like the README's prose, never inside ``a / b / c``.
    lines = textwrap.wrap(text.replace(" / ", "\0/\0"), 110, break_long_words=False, break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def _e2e(result: dict[str, Any]) -> list[str]:
    rows = []
    for w in result.get("e2e", []):
        s = w["seeds"]
        rows.append(
            [f"{w['workload']}, {w['quality_metric']}", " / ".join(str(r["seed"]) for r in s)]
            + [
                " / ".join(_sig(r["baseline_quality"]) for r in s)
                + f" ({_span([r['baseline_steps'] for r in s])} steps)",
                " / ".join(_sig(r["adaptive_quality"]) for r in s)
                + f" ({_span([r['adaptive_steps'] for r in s])} steps, "
                f"K = {_span([r['adaptive_final_K'] for r in s])})",
                " / ".join(_sig(r["progress_quality"]) for r in s)
                + f" ({_span([r['progress_steps'] for r in s])} steps, "
                f"K = {_span([r['progress_final_K'] for r in s])})"
                if all("progress_quality" in r for r in s)
                else "-",
            ]
        )
    header = ["workload", "seed", "baseline", "adaptive, variance (steps, final K)", "adaptive, progress"]
    return md_table(header, rows)


def _sweep(result: dict[str, Any]) -> list[str]:
    rows = [
        [f"{r['resolution']} / {r['samples_per_ray']}", f"{1e3 * r['c_out']:.1f}", f"{1e3 * r['c_in']:.2f}"]
        + [f"{r['cost_ratio']:.1f}", f"{r['K_reuse']} / {r['K_carv']}", _ci(r, "ecm_reuse"), _ci(r, "ecm_carv")]
        + [f"{r['predicted_ecm_reuse']:.2f} / {r['predicted_ecm_carv']:.2f}"]
        for r in result["sweep"]["rows"]
    ]
    header = ["render / samples per ray", "c_out ms", "c_in ms", "c_out/c_in", "K reuse / CARV", "ECM reuse"]
    return md_table([*header, "ECM CARV", "predicted reuse / CARV"], rows)


def _scaling(result: dict[str, Any], gpu: Sequence[dict[str, Any]] | None) -> list[str]:
    cpu = {(r["bins"], r["dim"]): r for r in result.get("scaling", [])}
    dev = {(r["bins"], r["dim"]): r for r in gpu or []}
    cols = (("plan ms", "plan_ms", "{:.2f}".format), ("observe ms", "observe_ms", "{:.2f}".format))
    cols += (("refit ms", "refit_ms", "{:.1f}".format), ("peak extra memory", "peak_extra_mb", _mb))
    rows = []
    for key in sorted(cpu.keys() | dev.keys()):
        a, b = cpu.get(key), dev.get(key)
        cells = [key[0], f"{key[1]:,}".replace(",", " ")]
        for _, k, fmt in cols:
            x = "-" if a is None else fmt(a[k])
            cells.append(x if gpu is None else f"{x} / {'-' if b is None else fmt(b[k])}")
        cells.append(_mb((a or b)["contributions_mb"]))
        rows.append(cells)
    header = [c for c, _, _ in cols] if gpu is None else [f"{c} CPU / GPU" for c, _, _ in cols]
    return md_table(["bins", "contribution size", *header, "contributions"], rows)


def _misses(result: dict[str, Any]) -> list[str]:
    """Checkpoints where adaptive / oracle falls short: measured, and as the pilot's model predicts it (a model
    ratio near 1 says the measured gap is replication noise; one below says the policy itself is worse)."""
    rows = []
    for w in result["ablation"]:
        for c in w["checkpoints"]:
            by = {r["variant"]: r for r in c["variants"]}
            if not _adaptive_over_oracle(c) < ORACLE_RATIO_TARGET or "adaptive" not in by:
                continue
            a, o = by["adaptive"], by["oracle"]
            pred = _f(o["W_predicted"] / a["W_predicted"])
            sb = c["controller"].get("sigma_b2")  # the controller's at its last refit; the pilot's at frozen state
            rows.append(
                [_name(w["workload"]), str(c["step"]), _adaptive_over_oracle_ci(c), pred, f"{a['K']} / {o['K']}"]
                + [f"{a['proposal']} / {o['proposal']}"]
                + [f"{_f(sb, '{:.3g}') if sb is not None else '-'} / {_f(c['pilot']['sigma_b2'], '{:.3g}')}"]
            )
    if not rows:
        return ["_Adaptive / oracle met the target at every checkpoint._"]
    header = ["workload", "step", "adaptive / oracle [90 % CI]", "predicted by the pilot", "K (adaptive / oracle)"]
    return md_table([*header, "proposal (adaptive / oracle)", "σ_B² (controller / pilot)"], rows)


def readme_sections(bench: dict[str, Any], gpu_scaling: Sequence[dict[str, Any]] | None = None) -> dict[str, str]:
    """The README's benchmark blocks, by marker name (:data:`README_SECTIONS`), from a ``bench.json`` result;
    ``gpu_scaling`` (rows of ``docs/gpu/scaling_cuda.json``, from ``benchmarks/gpu_check.sh``) adds a GPU
    figure to every scaling cell. Raises ``ConfigError`` if a generated table is malformed."""
    missing = "_Not in this benchmark run ({})._"
    blocks = {
        "wall_time": [f"**{bench['wall_seconds'] / 60:.1f} min**"],
        "ablation": ablation_table(
            bench, [v for v in VARIANTS if v != "baseline"], without_k=("iddpm",), ratio_w_b=_ratio_w_b
        ),
        "targets": _targets(bench),
        "misses": _misses(bench),
        "calibration": _calibration(bench),
        "e2e": _e2e(bench) if bench.get("e2e") else [missing.format("`--seeds`")],
        "sweep": _sweep(bench) if bench.get("sweep") else [missing.format("`--no-sweep`")],
        "scaling": _scaling(bench, gpu_scaling)
        if bench.get("scaling") or gpu_scaling
        else [missing.format("`--no-scaling`")],
    }
    return {name: _checked(name, blocks[name]) for name in README_SECTIONS}


_MARKER = re.compile(r"<!--\s*(/?)bench:([^\s>]*)\s*-->")


def _replace_blocks(text: str, sections: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with the text between every ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` replaced by
    ``sections[NAME]`` and nothing else changed, and the names of the blocks whose text changed. Block markers
    (each alone on its line) get the block on lines of its own with a blank line either side; inline markers
    (inside a line) get it in place. Raises ``ConfigError`` for an unknown name or an unclosed, unopened or
    nested marker."""

    def where(pos: int) -> str:
        return f"README line {text.count(chr(10), 0, pos) + 1}"

    def alone(m: re.Match[str]) -> bool:
        start, end = text.rfind("\n", 0, m.start()) + 1, text.find("\n", m.end())
        return not text[start : m.start()].strip() and not text[m.end() : len(text) if end < 0 else end].strip()

    out: list[str] = []
    changed: list[str] = []
    pos = 0
    markers = _MARKER.finditer(text)
    for m in markers:
        name = m.group(2)
        if m.group(1):
            raise ConfigError(f"{where(m.start())}: closing marker {m.group(0)!r} has no opening marker before it")
        if name not in sections:
            raise ConfigError(
                f"{where(m.start())}: unknown benchmark block {name!r} in {m.group(0)!r}; "
                f"known blocks: {', '.join(sections)}"
            )
        end = next(markers, None)
        if end is None or not end.group(1) or end.group(2) != name:
            found = "the end of the file" if end is None else f"{end.group(0)!r} ({where(end.start())})"
            raise ConfigError(
                f"{where(m.start())}: {m.group(0)!r} is not closed: expected '<!-- /bench:{name} -->' before {found}"
            )
        block = sections[name]
        if alone(m):
            if not alone(end):
                raise ConfigError(f"{where(end.start())}: {end.group(0)!r} must be alone on its line, like its opening")
            block = f"\n\n{block}\n\n"
        elif "\n" in block:
            raise ConfigError(f"{where(m.start())}: block {name!r} spans lines; put its markers on lines of their own")
        if text[m.end() : end.start()] != block:
            changed.append(name)
        out += [text[pos : m.end()], block]
        pos = end.start()
    out.append(text[pos:])
    return "".join(out), changed


def _load_gpu_scaling(bench_json: Path, gpu_scaling_json: Path | str | None) -> list[dict[str, Any]] | None:
    if gpu_scaling_json is None:
        return None
    if gpu_scaling_json == "auto":
        path = bench_json.parent.parent / "gpu" / "scaling_cuda.json"
        return json.loads(path.read_text()) if path.is_file() else None
    return json.loads(Path(gpu_scaling_json).read_text())


def render_readme(
    readme: Path, bench_json: Path, gpu_scaling_json: Path | str | None = "auto"
) -> tuple[str, list[str]]:
    """What :func:`update_readme` would write, and the names of the blocks it would change; writes nothing."""
    bench_json = Path(bench_json)
    gpu = _load_gpu_scaling(bench_json, gpu_scaling_json)
    sections = {**readme_sections(json.loads(bench_json.read_text()), gpu), **extra_sections(bench_json)}
    return _replace_blocks(Path(readme).read_text(), sections)


def update_readme(readme: Path, bench_json: Path, gpu_scaling_json: Path | str | None = "auto") -> list[str]:
    """Regenerate the README's benchmark blocks from ``bench_json``: the text between ``<!-- bench:NAME -->``
    and ``<!-- /bench:NAME -->`` becomes ``readme_sections(bench)[NAME]``, nothing outside the markers changes.
    Writes the file only if a block changed; returns the names of the changed blocks (empty: up to date).
    Raises ``ConfigError`` for an unknown or unclosed marker, or a malformed generated table.

    ``gpu_scaling_json``: GPU rows for the scaling table (``benchmarks/gpu_check.sh``'s ``scaling_cuda.json``);
    ``"auto"`` reads ``gpu/scaling_cuda.json`` beside ``bench_json``'s folder (``docs/gpu/`` for
    ``docs/bench/bench.json``) when it exists; ``None`` leaves the GPU out."""
    new, changed = render_readme(readme, bench_json, gpu_scaling_json)
    if changed:
        Path(readme).write_text(new)
    return changed


def main(argv: Sequence[str] | None = None, prog: str = "python -m carv_adapt.bench.readme") -> int:
    """``python -m carv_adapt.bench.readme --readme README.md --bench docs/bench/bench.json [--check]`` (also
    ``python -m carv_adapt.bench.report``, which passes its own ``prog``)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Regenerate the README's benchmark blocks (between <!-- bench:NAME --> and <!-- /bench:NAME -->) "
        "from a `carv-adapt bench` result. `carv-adapt bench` itself never touches the README.",
    )
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--bench", type=Path, default=Path("docs/bench/bench.json"), help="the bench.json to report")
    p.add_argument(
        "--gpu-scaling",
        default="auto",
        help="GPU scaling rows (scaling_cuda.json from benchmarks/gpu_check.sh); 'auto' (default): "
        "gpu/scaling_cuda.json beside the bench folder when it exists; 'none': CPU only",
    )
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the README is out of date")
    args = p.parse_args(argv)
    gpu = None if args.gpu_scaling == "none" else args.gpu_scaling
    try:
        new, changed = render_readme(args.readme, args.bench, gpu)
    except (ConfigError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems = check_markdown_tables(new)
    for problem in problems:
        print(f"{args.readme}: {problem}", file=sys.stderr)
    if args.check:
        print(f"{args.readme}: out of date: {', '.join(changed)}" if changed else f"{args.readme}: up to date")
        return 1 if changed or problems else 0
    if changed:
        args.readme.write_text(new)
    print(f"{args.readme}: updated {', '.join(changed)}" if changed else f"{args.readme}: up to date")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""README blocks generated from benchmark outputs other than ``bench.json`` (:mod:`carv_adapt.bench.readme` renders
``bench.json``'s blocks and merges these in). Each reads its own JSON beside ``bench.json``; when the file is absent
the block says so instead of showing figures.

- ``attribution_curve``: the table of :mod:`carv_adapt.bench.attribution_curve` (``attribution_curve.json``);
- ``crn_gain``: one inline sentence, the paired gain of common random numbers per policy at the full budget;
- ``outer``: "+outer" against "+strat" from every ``outer/*.json`` (:func:`carv_adapt.bench.markdown.outer_table`);
- ``control_variate``: "+CV" on SDS-3D from ``cv/ablation_sds3d.json`` (paired variance ratio, ECMs, correlation);
- ``diffusion_head``: the equal-compute arms of ``diffusion_head.json`` (:mod:`carv_adapt.bench.head`);
- ``real_scale``: SD-2.1-sized stage costs and where they fall on the ECM curve (``real_scale.json``);
- ``distill_ttq``: distillation at equal cost-clock compute, FD per seed (``distill_ttq.json``);
- ``ttq``: SDS-3D time to quality, the tables of :func:`carv_adapt.bench.ttq_analysis.markdown` (``ttq/ttq.json``);
- ``sd_tiny``: the shipped SD-shaped pipeline's classifier check (``sd_tiny.json``);
- ``profile_space``: output- against parameter-space profile per workload (``profile_space.json``, docs/theory.md §7.9);
- ``ablation_more``: the ECM ablation rows of runs kept apart from ``bench.json`` (``*_ablation/bench.json``: SDS-3D
  on the SD-shaped teacher), rendered like the main table;
- ``cold_overhead``: the controller's time per step in a tight loop and between a stand-in workload's calls
  (``cold_overhead.json``, ``benchmarks/cold_overhead.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from carv_adapt.bench.markdown import _checked, md_table, outer_table

__all__ = ["EXTRA_SECTIONS", "extra_sections", "attribution_sections"]

EXTRA_SECTIONS = ("attribution_curve", "crn_gain", "outer", "control_variate", "diffusion_head")
EXTRA_SECTIONS += ("real_scale", "distill_ttq", "ttq", "sd_tiny", "ablation_more", "demo", "profile_space")
EXTRA_SECTIONS += ("cold_overhead",)

_SHORT = {
    "baseline": "baseline",
    "fixed_k8": "fixed K=8",
    "adaptive_variance": "adaptive (variance)",
    "adaptive_progress": "adaptive (progress)",
}


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def attribution_sections(curve: dict[str, Any] | None) -> dict[str, str]:
    """The two blocks from an ``attribution_curve.json`` result (``None``: not measured)."""
    from carv_adapt.bench.attribution_curve import markdown

    if curve is None:
        note = "_Not measured: run `python benchmarks/attribution_curve.py`._"
        return {"attribution_curve": note, "crn_gain": "(not measured)"}
    s = curve["settings"]
    rel = [r["reliability"] for r in curve["references"]]
    seeds = len({r["seed"] for r in curve["runs"]})
    lines = markdown(curve)
    lines += [
        "",
        f"{seeds} seeds; {s['num_train']} training examples and {s['num_queries']} queries per seed, `N = "
        f"{s['batch_size']}`, controller `K <= {s['k_max']}`; cells: mean Spearman over seeds [95 % t-interval]; "
        f"CRN gain: paired difference (same seed) at the full budget. Reference: two halves of "
        f"{s['reference_outer']} x {s['reference_inner']} draws per example, agreeing with each other at "
        f"Spearman {min(rel):.2f}-{max(rel):.2f}. Figure: `docs/bench/attribution_curve.png`.",
    ]
    full = max(e["fraction"] for e in curve["summary"])
    gains = [e for e in curve["summary"] if e["fraction"] == full and "crn_gain" in e]
    evals = sum(e["evals_per_example"] for e in gains) / max(len(gains), 1)
    parts = [
        f"{_SHORT.get(e['arm'], e['arm'])} {_signed(e['crn_gain'])} "
        f"[{_signed(e['crn_gain_lo'])}, {_signed(e['crn_gain_hi'])}]"
        for e in gains
    ]
    sentence = f"{', '.join(parts)} at {evals:.0f} teacher evaluations per example ({seeds} seeds, 95 % t-intervals)"
    return {"attribution_curve": _checked("attribution_curve", lines), "crn_gain": sentence}


def _interval(x: dict[str, float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(x['mean'])} [{fmt.format(x['lo'])}, {fmt.format(x['hi'])}]"


def outer_section(results: list[tuple[str, dict[str, Any]]]) -> str:
    """``outer``: one table per outer-design run (file name, outer draws per step ``N``)."""
    if not results:
        return "_Not measured: run `python benchmarks/outer_designs.py`._"
    lines: list[str] = []
    for name, r in results:
        w = r["ablation"][0]
        cfg = w["config"]
        lines += [
            f"`docs/bench/outer/{name}`: `N = {cfg['batch_size']}` views per step, cameras about the "
            f"`{cfg.get('camera_axis', 'front')}` axis at {cfg.get('min_angle_deg', 0):g}-{cfg['max_angle_deg']:g} "
            f"degrees, {r['settings']['replications']} replications per policy; cells: ECM of the design over "
            '"+strat" at the same `K` [90 % bootstrap interval].',
            "",
            *outer_table(r),
            "",
        ]
    return _checked("outer", lines[:-1])


def control_variate_section(result: dict[str, Any] | None) -> str:
    """``control_variate``: per checkpoint, the paired variance ratio with/without the control, "+strat" and "+CV"
    ECM, the share of the latent second moment removed and the per-bin correlation at low/high timesteps."""
    if result is None:
        return "_Not measured: run `python scripts/bench_cv.py --out docs/bench/cv`._"
    rows = []
    for c in result["checkpoints"]:
        cv, v = c["control_variate"], {x["variant"]: x for x in c["variants"]}
        pr = cv["paired"]
        corr = cv["correlation"]
        rows.append(
            [
                f"{c['step']}/{result['training']['steps']}",
                v["+strat"]["K"],
                "{:.2f} [{:.2f}, {:.2f}]".format(v["+strat"]["ecm"], *v["+strat"]["ecm_ci90"]),
                "{:.2f} [{:.2f}, {:.2f}]".format(v["+CV"]["ecm"], *v["+CV"]["ecm_ci90"]),
                "{:.3f} [{:.3f}, {:.3f}]".format(pr["variance_ratio"], *pr["variance_ratio_ci90"]),
                f"{cv['share_of_second_moment_removed']:.3f}",
                f"{corr[0]:.2f} / {max(corr[len(corr) // 2 :]):.2f}",
            ]
        )
    header = ["step", "K", "+strat ECM", "+CV ECM", "variance with / without CV (paired)", "latent 2nd moment removed",
              "correlation: first bin / max over t > 500"]  # fmt: skip
    cfg = result["config"]
    note = (
        f"SDS-3D on the shipped digits teacher (CFG {cfg['guidance_scale']:g}, cameras within "
        f"{cfg['max_angle_deg']:g} degrees, `N = {cfg['batch_size']}`), `{result['command']}`; independent "
        f"replications ({result['checkpoints'][0]['control_variate']['paired']['R']} per policy) for the ECMs, and the "
        "paired ratio from the same draws with and without the control. Raw numbers: `docs/bench/cv/`."
    )
    return _checked("control_variate", [*md_table(header, rows), "", note])


_HEAD_ARMS = ("K=1", "K=4", "iddpm K=4", "adaptive (variance)", "adaptive (progress)")


def diffusion_head_section(result: dict[str, Any] | None) -> str:
    """``diffusion_head``: final validation loss, FD and accuracy per arm at equal compute, and the paired
    difference to the fixed ``K = 4`` (95 % t-intervals over seeds)."""
    if result is None:
        return "_Not measured: run `python benchmarks/diffusion_head.py`._"
    rows = []
    for arm in [a for a in _HEAD_ARMS if a in result["summary"]] + [
        a for a in result["summary"] if a not in _HEAD_ARMS
    ]:
        s = result["summary"][arm]
        d = s.get("minus_K4")
        fmts = (("val_loss", "{:+.3f}"), ("fd", "{:+.1f}"), ("accuracy", "{:+.3f}"))
        diff = ["-", "-", "-"] if not d else [_interval(d[k], f) for k, f in fmts]
        rows.append(
            [arm, f"{s['mean_K']['mean']:.1f}", _interval(s["val_loss"]), _interval(s["fd"], "{:.1f}"),
             _interval(s["accuracy"]), *diff]
        )  # fmt: skip
    st, clock = result["settings"], result["clock"]
    header = ["arm", "mean K", "val loss", "FD", "accuracy", "val loss - K=4", "FD - K=4", "accuracy - K=4"]
    note = (
        f"Equal compute on the cost clock (budget: {st['steps']} `K = 1` steps of `N = {st['batch_size']}`; "
        f"c_0 {clock['c_0'] * 1e3:.1f} ms, c_out {clock['c_out'] * 1e3:.2f} ms, c_in {clock['c_in'] * 1e3:.3f} ms per "
        f"draw), seeds {st['seeds']}; means [95 % t-interval over seeds], differences paired by seed. "
        "Full tables, the K chosen against the pilot's K*: `docs/bench/diffusion_head.md`."
    )
    return _checked("diffusion_head", [*md_table(header, rows), "", note])


def real_scale_section(result: dict[str, Any] | None) -> str:
    """``real_scale``: :func:`carv_adapt.bench.real_scale.real_scale_markdown` and what it was measured on."""
    if result is None:
        return "_Not measured: run `python benchmarks/real_scale_costs.py`._"
    from carv_adapt.bench.real_scale import real_scale_markdown

    st = result["settings"]
    where = (
        f"{st['device']} {st['dtype']}, UNet and VAE at width 1/{st['width_scale']}, {st['resolution']}x"
        f"{st['resolution']} renders with {st['samples_per_ray']} samples per ray, fitted over N in {st['Ns']} and "
        f"K in {st['Ks']}"
    )
    note = (
        f"Measured by `benchmarks/real_scale_costs.py` ({result['wall_seconds'] / 60:.0f} min; {where}). "
        "CPU seconds on a loaded machine are inflated; the ratios are what carry over. The full-width row scales "
        "each network's per-draw cost by its FLOP ratio (counted by `torch.utils.flop_counter`) and keeps the "
        "render as measured. Raw numbers: `docs/bench/real_scale.json`."
    )
    return _checked("real_scale", [real_scale_markdown(result), "", note])


def distill_ttq_section(result: dict[str, Any] | None) -> str:
    """``distill_ttq``: :func:`carv_adapt.bench.distill_ttq.distill_table` with its budget and clock."""
    if result is None:
        return "_Not measured: run `python benchmarks/distill_ttq.py`._"
    from carv_adapt.bench.distill_ttq import distill_table

    c = result["clock"]
    note = (
        f"Budget: {result['settings']['steps']} baseline steps on the cost clock (a step costs "
        f"{c['c_0'] * 1e3:.0f} + N ({c['c_out'] * 1e3:.1f} + {c['c_in'] * 1e3:.1f} K) ms, probes charged their "
        f"calibrated cost), seeds {result['settings']['seeds']}; FD of 200 generator samples in the digits "
        "classifier's feature space (lower is better); differences paired by seed [95 % t-interval]"
        + (
            "; `baseline_reseeded` is the baseline on other timestep and noise draws (same initialization and "
            "generator inputs), so its row is the noise floor of a per-seed difference"
            if "baseline_reseeded" in result["settings"]["arms"]
            else ""
        )
        + ". Raw numbers: `docs/bench/distill_ttq.json`."
    )
    return _checked("distill_ttq", [distill_table(result), "", note])


def sd_tiny_section(result: dict[str, Any] | None) -> str:
    """``sd_tiny``: classifier accuracy of the SD-shaped pipeline's samples per guidance scale, and its size."""
    if result is None:
        return "_Not measured: run `python scripts/check_sd_tiny.py --out docs/bench/sd_tiny.json`._"
    acc = result["accuracy_by_cfg"]
    rows = [[f"CFG {k}", f"{v:.2f}"] for k, v in sorted(acc.items(), key=lambda kv: float(kv[0]))]
    p = result["parameters"]
    note = (
        f"{result['samples']} samples ({result['ddim_steps']} DDIM steps, `{result['command']}`), scored by the "
        f"logistic-regression digits classifier; UNet {p['unet']:,} parameters, VAE {p['vae']:,}, text encoder "
        f"{p['text_encoder']:,}; weights {result['weights_bytes'] / 1e6:.1f} MB."
    )
    return _checked("sd_tiny", [*md_table(["guidance", "accuracy"], rows), "", note])


def ablation_more_section(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """``ablation_more``: one ablation table per separate run, with the command that produced it."""
    if not runs:
        cmd = "carv-adapt bench --workloads sds3d --teacher sd-tiny --seeds 0 --no-sweep --no-scaling"
        return f"_Not measured: run `{cmd}`._"
    from carv_adapt.bench.report import ablation_table

    lines: list[str] = []
    for name, r in runs:
        teacher = (r.get("settings") or {}).get("teacher") or "the shipped digits teacher"
        lines += [f"`docs/bench/{name}/bench.json` (`{r['command']}`; teacher: {teacher}):", "", *ablation_table(r), ""]
    return _checked("ablation_more", lines[:-1])


def extra_sections(bench_json: Path | str) -> dict[str, str]:
    """Every extra block, from the JSON files beside ``bench_json`` (``docs/bench/`` for the committed run)."""
    root = Path(bench_json).parent

    def load(rel: str) -> dict[str, Any] | None:
        path = root / rel
        return json.loads(path.read_text()) if path.is_file() else None

    outer = [(p.name, json.loads(p.read_text())) for p in sorted((root / "outer").glob("*.json"))]
    return {
        **attribution_sections(load("attribution_curve.json")),
        "outer": outer_section(outer),
        "control_variate": control_variate_section(load("cv/ablation_sds3d.json")),
        "diffusion_head": diffusion_head_section(load("diffusion_head.json")),
        "real_scale": real_scale_section(load("real_scale.json")),
        "distill_ttq": distill_ttq_section(load("distill_ttq.json")),
        "ttq": ttq_section(load("ttq/ttq.json")),
        "sd_tiny": sd_tiny_section(load("sd_tiny.json")),
        "ablation_more": ablation_more_section(
            [(p.parent.name, json.loads(p.read_text())) for p in sorted(root.glob("*_ablation/bench.json"))]
        ),
        "demo": demo_section(load("../demo/summary.json")),
        "profile_space": profile_space_section(load("profile_space.json")),
        "cold_overhead": cold_overhead_section(load("cold_overhead.json")),
    }


def cold_overhead_section(result: dict[str, Any] | None) -> str:
    """``cold_overhead``: milliseconds per step of each controller call, tight loop against stand-in workload."""
    if result is None:
        return "_Not measured: run `python benchmarks/cold_overhead.py --out docs/bench/cold_overhead.json`._"
    med, s = result["median_ms_per_step"], result["settings"]
    arms = (("hot", "tight loop"), ("cold", "between workload calls"))
    rows = [[label, *(f"{med[a][k]:.3f}" for k in ("plan", "observe", "step", "total"))] for a, label in arms]
    note = (
        f"Controller milliseconds per step, medians of {s['reps']} runs per arm, alternating, in one process: "
        f"`N = {s['N']}`, {s['dim']}-dim contributions, a {s['params']:,}-parameter step gradient and split-half "
        f"probes when due, {s['steps']} steps with refits, one CPU thread. The stand-in is a matrix product over "
        f"{s['evict_mb']:g} MB after `plan()` and after `step()`; cold / hot {result['cold_over_hot']:.2f}. "
        "`python benchmarks/cold_overhead.py`; raw numbers: `docs/bench/cold_overhead.json`."
    )
    header = ["controller calls", "plan ms", "observe ms", "step ms", "total ms"]
    return _checked("cold_overhead", [*md_table(header, rows), "", note])


def profile_space_section(result: dict[str, Any] | None) -> str:
    """``profile_space``: :func:`carv_adapt.bench.profile_space.profile_space_table` and how it was measured."""
    if result is None:
        return "_Not measured: run `python benchmarks/profile_space.py --out docs/bench/profile_space.json`._"
    from carv_adapt.bench.profile_space import profile_space_table

    s = result["settings"]
    note = (
        f"Pilot: {s['plans']} plans of 4 x {s['K']} uniform i.i.d. draws per checkpoint, each draw's squared norm "
        f'in both spaces; "calibrated" fits the ratio (theory §7.9) from one held-out plan\'s pairs. Within: the '
        "parameter-space within variance of each proposal over that of `p*` of the parameter-space profile. "
        f"{result['wall_seconds'] / 60:.1f} min on one CPU thread; raw numbers: `docs/bench/profile_space.json`."
    )
    return _checked("profile_space", [*profile_space_table(result).splitlines(), "", note])


def ttq_section(result: dict[str, Any] | None) -> str:
    """``ttq``: the time-to-quality report of ``ttq/ttq.json`` (:func:`carv_adapt.bench.ttq_analysis.markdown`),
    its title dropped and its section headings as bold lines."""
    if result is None:
        return "_Not measured: run `python -m carv_adapt.bench.ttq --out docs/bench/ttq`._"
    from carv_adapt.bench.ttq_analysis import markdown

    lines = markdown(result).strip().splitlines()[2:]  # the title and the blank line after it
    lines = [f"**{ln[3:]}.**" if ln.startswith("## ") else ln for ln in lines]
    return _checked("ttq", lines)


def demo_section(summary: dict[str, Any] | None) -> str:
    """``demo``: the committed ``carv-adapt demo`` run (``docs/demo/summary.json``): per run its steps, final ``K``,
    final quality, the compute it needed to reach the baseline's quality at each level, and the measured ECM."""
    if summary is None:
        return "_Not measured: run `carv-adapt demo --out docs/demo`._"
    ttq, c = summary["time_to_quality"], summary["config"]
    levels = [f"{100 * lv['fraction']:g}%" for lv in ttq["levels"]]

    def reach(x: float | None) -> str:
        return ">1 (not reached)" if x is None else f"{x:.2f}"

    rows = [
        [
            name,
            r["steps"],
            r["final_K"],
            f"{r['quality']:.3f}",
            *(reach(r["compute_to_baseline_quality"][lv]) for lv in levels),
        ]
        for name, r in (("baseline", summary["baseline"]), ("adaptive", summary["adaptive"]))
    ]
    m = summary["measured"]
    lines = md_table(
        ["run", "steps", "final K", f"final {ttq['metric']}", *(f"compute to base@{lv}" for lv in levels)], rows
    )
    lines += [
        "",
        f"{summary['workload']}, seed {summary['seed']}, cameras up to {c.get('max_angle_deg', '-')}° "
        f"(init noise {c.get('init_noise', 0)}); compute as a fraction of the baseline's budget on the "
        f"{summary['clock']['kind'].replace('_', ' ')}; measured ECM at the adaptive run's final parameters "
        f"{m['ecm']:.2f} ({m['replications']} replications per policy). Raw numbers: `docs/demo/summary.json`.",
    ]
    return _checked("demo", lines)

"""``carv-adapt inspect``: a text report of a policy or a statistics log (in the spirit of ``mlmc.test``), plots,
and a preview of timesteps sampled through the same code path training uses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from carv_adapt.errors import ConfigError
from carv_adapt.fit.logs import read_refit_log
from carv_adapt.plan import Refit, make_plan
from carv_adapt.policy import Policy
from carv_adapt.proposals import PmfProposal, TargetMeasure, bin_sums

__all__ = ["load_inspectable", "report_lines", "write_plots", "preview_timesteps"]


_EXPECTED = (
    "expected a refit log (one JSON object per line, each with 'step' and 'sigma_b2') "
    "or a policy (one JSON object with 'schema_version')"
)


def load_inspectable(path: str | Path) -> tuple[Policy | None, list[Refit]]:
    """A policy file or a refit log, told apart by content (the file name's suffix plays no part).

    A file whose first non-empty line is a JSON object with ``step`` and ``sigma_b2`` is a refit log (every line
    must then be a refit record); a file that is one JSON object with ``schema_version`` is a policy; anything
    else is a :class:`~carv_adapt.errors.ConfigError` naming the path and what was expected."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; {_EXPECTED}") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder; {_EXPECTED}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file; {_EXPECTED}") from None
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise ConfigError(f"{p}: the file is empty; {_EXPECTED}")
    head = _json_or_none(first)
    if isinstance(head, dict) and "step" in head and "sigma_b2" in head:
        return None, read_refit_log(p)
    whole = _json_or_none(text)
    if isinstance(whole, dict) and "schema_version" in whole:
        return Policy.from_dict(whole, source=str(p)), []
    raise ConfigError(f"{p}: neither a refit log nor a policy; {_EXPECTED}")


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _f(x: float | str | None) -> str:
    # Log extras come back from JSON with non-finite values as strings ("nan", "inf").
    x = None if x is None else float(x)
    return "-" if x is None or math.isnan(x) else f"{x:.4g}"


def report_lines(policy: Policy | None, log: list[Refit]) -> list[str]:
    """The text report: per-bin profile, K*, variances, costs, predicted ECM and what dominates."""
    lines: list[str] = []
    if policy is not None:
        a = policy.allocation
        lines += [
            f"policy (schema {policy.schema_version}, {'adaptive' if policy.adaptive else 'frozen'}): "
            f"mode={a.mode} N={a.N} K={a.K} (bounds {a.k_min}..{a.k_max}) stratification={policy.stratification}",
            f"target: T={policy.target.num_timesteps} t in [{policy.target.t_min}, {policy.target.t_max}]",
            f"proposal: {policy.proposal.kind}",
            f"provenance: {policy.provenance}",
        ]
        target = TargetMeasure(policy.target.num_timesteps, policy.target.t_min, policy.target.t_max)
        edges = target.bin_edges(policy.num_bins)
        p_b, pi_b = bin_sums(policy.proposal_pmf(), edges), target.bin_mass(edges)
        lines.append(f"{'bin':>12} {'pi':>8} {'p':>8} {'p/pi':>6}")
        for b in range(len(p_b)):
            lines.append(
                f"{f'[{int(edges[b])},{int(edges[b + 1]) - 1}]':>12} {float(pi_b[b]):8.4f} "
                f"{float(p_b[b]):8.4f} {float(p_b[b] / pi_b[b]):6.2f}"
            )
    if log:
        r = log[-1]
        e = r.bin_edges
        width = torch.tensor(e[1:]) - torch.tensor(e[:-1])
        pi_b = width.double() / width.sum()
        lines += [
            f"refits: {len(log)} (steps {log[0].step}..{r.step}); last refit at step {r.step}:",
            f"{'bin':>12} {'count':>8} {'m(t)':>10} {'pi':>8} {'p':>8}",
        ]
        for b in range(len(r.profile)):
            lines.append(
                f"{f'[{e[b]},{e[b + 1] - 1}]':>12} {r.profile_counts[b]:8.1f} {r.profile[b]:10.4g} "
                f"{float(pi_b[b]):8.4f} {r.proposal[b]:8.4f}"
            )
        within_share = (r.sigma_w2 / r.K) / (r.sigma_b2 + r.sigma_w2 / r.K) if r.sigma_b2 + r.sigma_w2 > 0 else math.nan
        cost_out_share = r.c_out / (r.c_out + r.K * r.c_in) if r.c_out + r.c_in > 0 else math.nan
        lines += [
            f"K = {r.K} (N = {r.N})   sigma_B^2 = {_f(r.sigma_b2)}   sigma_W^2 = {_f(r.sigma_w2)}   "
            f"(space: {r.extra.get('space', '?')})",
            f"c_out = {_f(r.c_out)} s   c_in = {_f(r.c_in)} s   c_0 = {_f(r.c_0)} s   c_out/c_in = "
            f"{_f(r.c_out / r.c_in) if r.c_in > 0 else 'inf'}",
            f"predicted W = {_f(r.predicted_W)}   baseline W = {_f(r.predicted_W_baseline)}   "
            f"predicted ECM = {_f(r.predicted_ecm)}   IS gain (sigma_W^2 uniform / proposal) = {_f(r.is_gain)}",
            f"dominates: variance {'within (more K pays)' if within_share > 0.5 else 'between (more N pays)'} "
            f"({_f(100 * within_share)} % within at this K); cost "
            f"{'upstream' if cost_out_share > 0.5 else 'teacher'} "
            f"({_f(100 * cost_out_share)} % upstream per outer draw)",
            f"progress (space {r.extra.get('space', '?')}): |G|^2 = {_f(r.extra.get('G2', math.nan))}   "
            f"noise scale = {_f(r.extra.get('noise_scale', math.nan))}   V/|G|^2 = "
            f"{_f(r.extra.get('v_over_g2', math.nan))}   predicted progress per second vs baseline = "
            f"{_f(r.extra.get('progress_gain', math.nan))}x   probe time = "
            f"{_f(1e3 * float(r.extra.get('probe_seconds_per_step', math.nan)))} ms/step",
            f"K band at the last refit: {r.k_interval or '-'}; within variance before -> after: "
            f"{_f(r.sigma_w2)} -> {_f(r.predicted_sigma_w2)}",
            f"last decision: {r.reason}",
        ]
        lines += _control_variate_lines(r)
    return lines


def _control_variate_lines(r: Refit) -> list[str]:
    """Per-bin control-variate coefficients, correlations and variance removed (docs/theory.md §14), when the run
    observed a control."""
    x = r.extra
    if "cv_beta" not in x:
        return []
    e = r.bin_edges
    lines = [
        "control variate (output space, rho-free): per bin the coefficient, the correlation of f - mu_g with the "
        "control, and the variance removed per draw (share of m_b = E||f||^2)",
        f"{'bin':>12} {'draws':>8} {'beta':>8} {'corr':>7} {'removed':>10} {'% of m_b':>8}",
    ]
    for b in range(len(x["cv_beta"])):
        m, removed = float(x["cv_m"][b]), float(x["cv_removed"][b])
        share = _f(100 * removed / m) if m > 0 else "-"
        lines.append(
            f"{f'[{e[b]},{e[b + 1] - 1}]':>12} {float(x['cv_counts'][b]):8.1f} {_f(x['cv_beta'][b]):>8} "
            f"{_f(x['cv_correlation'][b]):>7} {_f(removed):>10} {share:>8}"
        )
    return lines


def preview_timesteps(policy: Policy, n: int = 20000, K: int | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` timesteps drawn exactly as training draws them (``make_plan`` with the policy's proposal)."""
    target = TargetMeasure(policy.target.num_timesteps, policy.target.t_min, policy.target.t_max)
    prop = PmfProposal(target, policy.proposal_pmf())
    K = K or policy.allocation.K
    N = max(1, n // K)
    plan = make_plan(prop, N, K, torch.Generator().manual_seed(seed), stratification=policy.stratification)
    return plan.t.reshape(-1)


def write_plots(out: Path, policy: Policy | None, log: list[Refit], preview: int = 0) -> list[Path]:
    """PNG plots: proposal vs target and profile (last refit), K and ECM over training, cost breakdown,
    and the preview histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from carv_adapt import plots

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    if log:
        save(plots.plot_profile(log[-1]), "profile.png")
        save(plots.plot_proposal_history(log), "proposal_history.png")
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.step([r.step for r in log], [r.K for r in log], where="post", label="K")
        ax.set_xlabel("step")
        ax.set_ylabel("K")
        ax2 = ax.twinx()
        ax2.plot([r.step for r in log], [r.predicted_ecm for r in log], "C1.-", label="predicted ECM")
        ax2.set_ylabel("predicted ECM")
        fig.tight_layout()
        save(fig, "k_ecm.png")
        r = log[-1]
        save(plots.plot_cost_breakdown({"per outer draw": {"c_out": r.c_out, "K c_in": r.K * r.c_in}}), "costs.png")
    if policy is not None:
        target = TargetMeasure(policy.target.num_timesteps, policy.target.t_min, policy.target.t_max)
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(target.pmf().numpy(), label="target pi")
        ax.plot(policy.proposal_pmf().numpy(), label="proposal p")
        if preview:
            t = preview_timesteps(policy, preview)
            ax.hist(t.numpy(), bins=50, density=True, alpha=0.4, label=f"{preview} sampled t (training path)")
        ax.set_xlabel("timestep t")
        ax.legend()
        fig.tight_layout()
        save(fig, "proposal.png")
    return written

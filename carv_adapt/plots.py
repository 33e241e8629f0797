"""Figures (matplotlib, Agg backend). Functions return figures; callers save them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("plots need matplotlib: pip install 'carv_adapt[plots]'") from e

__all__ = [
    "plot_proposal_history",
    "plot_k_history",
    "plot_cost_breakdown",
    "plot_views",
    "plot_profile",
    "plot_quality_vs_compute",
]


def plot_proposal_history(history: Sequence[Any]) -> Figure:
    """Proposal bin masses relative to the target at each refit (a heat map: > 1 means over-sampled)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if not history:
        ax.text(0.5, 0.5, "no refits", ha="center")
        return fig
    edges = history[0].bin_edges
    width = torch.tensor(edges[1:], dtype=torch.float64) - torch.tensor(edges[:-1], dtype=torch.float64)
    pi_b = width / width.sum()
    ratio = torch.stack([torch.tensor(r.proposal, dtype=torch.float64) / pi_b for r in history])
    im = ax.imshow(
        ratio.T.numpy(),
        aspect="auto",
        origin="lower",
        cmap="magma",
        extent=(history[0].step, history[-1].step + 1, edges[0], edges[-1]),
    )
    fig.colorbar(im, ax=ax, label="p / pi per bin")
    ax.set_xlabel("step")
    ax.set_ylabel("timestep t")
    ax.set_title("timestep proposal over training")
    fig.tight_layout()
    return fig


def plot_profile(history_entry: Any) -> Figure:
    """The per-bin second-moment profile ``m(t)`` and the proposal against the target at one refit."""
    fig, ax = plt.subplots(figsize=(6, 3))
    e = history_entry.bin_edges
    centers = [(a + b) / 2 for a, b in zip(e[:-1], e[1:])]
    ax.plot(centers, history_entry.profile, "o-", label="m(t) per bin")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("m(t)")
    ax2 = ax.twinx()
    ax2.step(centers, history_entry.proposal, where="mid", color="C1", label="proposal")
    ax2.set_ylabel("bin mass")
    fig.legend(loc="upper right")
    fig.tight_layout()
    return fig


def plot_k_history(runs: dict[str, Sequence[tuple[int, int]]]) -> Figure:
    """``K`` per step for each named run (``[(step, K), ...]``)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, pts in runs.items():
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("K (inner draws per outer draw)")
    ax.set_yscale("log", base=2)
    ax.legend()
    ax.set_title("K over training")
    fig.tight_layout()
    return fig


def plot_cost_breakdown(runs: dict[str, dict[str, float]]) -> Figure:
    """Stacked bars of seconds per step by stage for each named run."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    stages = sorted({s for v in runs.values() for s in v})
    bottom = [0.0] * len(runs)
    for s in stages:
        vals = [runs[name].get(s, 0.0) * 1e3 for name in runs]
        ax.bar(list(runs), vals, bottom=bottom, label=s)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("ms per step")
    ax.legend()
    ax.set_title("measured cost per step by stage")
    fig.tight_layout()
    return fig


def plot_views(rows: dict[str, torch.Tensor]) -> Figure:
    """Side-by-side rendered views: one row per named run, images ``V x C x H x W`` in ``[-1, 1]`` (``C = 3``: RGB,
    else the first channel in grey)."""
    n_cols = max(v.shape[0] for v in rows.values())
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols, 1.7 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows.items()):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < imgs.shape[0]:
                img = imgs[j].detach().cpu()
                if img.shape[0] == 3:
                    ax.imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
                else:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[i][0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def plot_quality_vs_compute(
    curves: dict[str, Sequence[tuple[float, float]]],
    levels: Sequence[dict[str, Any]],
    ylabel: str,
    xlabel: str = "compute (fraction of the baseline's budget)",
    higher_is_better: bool = True,
) -> Figure:
    """Quality against compute for each named run (``[(compute, quality), ...]`` at its checkpoints; dashed: the
    best reached so far), with the baseline's quality at fractions of its budget marked: each of ``levels``
    (``{"fraction": f, "baseline_quality": q, name: compute that run needs to reach q or None, ...}``) draws a
    dotted line at ``q`` and a marker where each run first reaches it."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4))
    colors: dict[str, Any] = {}
    for name, pts in curves.items():
        if not pts:
            continue
        x, q = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        best = np.maximum.accumulate(q) if higher_is_better else np.minimum.accumulate(q)
        (line,) = ax.plot(x, q, "o-", ms=3.5, lw=1.2, label=name)
        colors[name] = line.get_color()
        ax.plot(x, best, "--", lw=0.9, color=line.get_color(), alpha=0.7)
    for lv in levels:
        q = lv.get("baseline_quality")
        if q is None:
            continue
        ax.axhline(q, color="0.55", ls=":", lw=0.9)
        ax.annotate(
            f"baseline @ {100 * lv['fraction']:g} %",
            (1.0, q),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 2),
            textcoords="offset points",
            ha="right",
            fontsize=7,
            color="0.35",
        )
        for name in curves:
            need = lv.get(name)
            if need is not None:
                ax.plot([need], [q], "D" if name == "baseline" else "*", ms=6, color=colors.get(name, "k"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (higher is better)" if higher_is_better else " (lower is better)"))
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if higher_is_better else "upper right")
    ax.set_title("time to quality: quality against compute", fontsize=10)
    fig.tight_layout()
    return fig

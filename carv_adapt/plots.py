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

__all__ = ["plot_proposal_history", "plot_k_history", "plot_cost_breakdown", "plot_views", "plot_profile"]


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
    """Side-by-side rendered views: one row per named run, images ``V x 1 x H x W`` in ``[-1, 1]``."""
    n_cols = max(v.shape[0] for v in rows.values())
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.6 * n_cols, 1.7 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows.items()):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < imgs.shape[0]:
                ax.imshow(imgs[j, 0].detach().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[i][0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    return fig

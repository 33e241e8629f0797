"""Helpers shared by several test modules (fixtures live in conftest.py)."""

import torch

from carv_adapt.plan import Refit
from carv_adapt.proposals import TargetMeasure
from carv_adapt.workloads import SyntheticNested


def synthetic_record():
    target = TargetMeasure(200, 0, 199)
    edges = target.bin_edges(10)
    wl = SyntheticNested(target, edges, 0.3 + 3 * torch.linspace(0, 1, 10, dtype=torch.float64) ** 2, D=16)
    pi_b = target.bin_mass(edges)
    rec = Refit(
        step=100,
        K=2,
        N=8,
        proposal=pi_b.tolist(),
        bin_edges=edges.tolist(),
        profile=wl.m_bins().tolist(),
        profile_counts=[100.0] * 10,
        sigma_b2=wl.sigma_b2,
        sigma_w2=wl.sigma_w2(pi_b),
        c_0=0.002,
        c_out=wl.c_out,
        c_in=wl.c_in,
        predicted_W=0.0,
        predicted_W_baseline=0.0,
        predicted_ecm=1.0,
        is_gain=1.0,
        k_changed=False,
        proposal_changed=False,
        reason="",
        extra={"M2": wl.M2},
        num_timesteps=200,
        predicted_sigma_w2=wl.sigma_w2(pi_b),
    )
    return wl, rec


# A small controller configuration and a loop that feeds it contributions made from each plan.
SMALL_CONTROLLER = dict(num_timesteps=100, num_bins=10, warmup_steps=4, refit_every=2)


def run_with(ctrl, make_f, steps=10, costs=True):
    """``steps`` plan/observe/step rounds with contributions ``make_f(plan)`` and (unless ``costs`` is false)
    linear stage costs."""
    for _ in range(steps):
        p = ctrl.plan()
        ctrl.observe(p, make_f(p), costs={"upstream": 0.01 * p.N, "teacher": 0.001 * p.N * p.K} if costs else None)
        ctrl.step()

"""Shared test fixtures for the core tests."""

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

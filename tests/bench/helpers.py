"""The synthetic workload (known statistics) the benchmark tests run on."""

import torch

from carv_adapt.proposals import TargetMeasure
from carv_adapt.workloads import SyntheticNested

T, BINS, D = 60, 6, 16


def synthetic_workload(c_out=0.010, c_in=0.001):
    target = TargetMeasure(T, 0, T - 1)
    edges = target.bin_edges(BINS)
    s = 0.3 + 3.0 * torch.linspace(0, 1, BINS, dtype=torch.float64) ** 2
    return SyntheticNested(target, edges, s, D=D, sb=1.0, mu0=0.5, c_out=c_out, c_in=c_in)


def synthetic_draws(wl, seed=0):
    g = torch.Generator().manual_seed(seed)

    def fn(plan, final):
        f = wl.contributions(plan, g)
        return (f if final else None), f.norm(dim=-1)

    return fn

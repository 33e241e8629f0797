"""Measured ECM of a policy file on a workload at its initial parameters (frozen), against the baseline.

    python benchmarks/policy_ecm.py policies/sds3d.json --workload sds3d [--replications 40]

W = variance of the final estimate (parameter gradient, or attribution feature) x measured seconds per
estimate, both policies measured side by side in one run.
"""

from __future__ import annotations

import argparse

import torch

from carv_adapt import HierarchicalEstimator, UniformProposal
from carv_adapt.adapters import WORKLOADS, build_adapter
from carv_adapt.measure import measure_W
from carv_adapt.policy import Policy
from carv_adapt.proposals import PmfProposal, TargetMeasure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy")
    ap.add_argument("--workload", required=True, choices=WORKLOADS)
    ap.add_argument("--replications", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pol = Policy.load(args.policy)
    a = build_adapter(args.workload, args.seed)
    init = a.run(0)  # zero training steps: the initial parameters
    estimate = a.estimator(getattr(init, "final_state", {}))
    t = pol.target
    target = TargetMeasure(t.num_timesteps, t.t_min, t.t_max)
    base = measure_W(
        estimate,
        HierarchicalEstimator(UniformProposal(target), N=a.batch_size, K=1, stratification="iid", seed=1),
        args.replications,
    )
    ours = measure_W(
        estimate,
        HierarchicalEstimator(
            PmfProposal(target, pol.proposal_pmf()),
            N=a.batch_size,
            K=pol.allocation.K,
            stratification=pol.stratification,
            seed=2,
        ),
        args.replications,
    )
    print(
        f"{args.workload}: policy K={pol.allocation.K}  baseline W={base.W:.4g} (rel SE {base.relative_se:.0%})  "
        f"policy W={ours.W:.4g} (rel SE {ours.relative_se:.0%})  measured ECM={ours.ecm_against(base):.2f}"
    )


if __name__ == "__main__":
    main()

"""The policies every workload's unbiasedness test runs, and the two-sample z-score of projected means."""

from carv_adapt import HierarchicalEstimator, UniformProposal, defensive_mixture, teacher_weight_proposal
from carv_adapt.proposals import TargetMeasure

TARGET = TargetMeasure(1000, 20, 980)


def policies(weight, alphas_cumprod, N):
    prior = defensive_mixture(teacher_weight_proposal(TARGET, weight, alphas_cumprod), 0.2)
    return {
        "uniform iid K=1": HierarchicalEstimator(UniformProposal(TARGET), N=N, K=1, stratification="iid", seed=11),
        "uniform stratified K=4": HierarchicalEstimator(UniformProposal(TARGET), N=N, K=4, seed=12),
        "IS iid K=3": HierarchicalEstimator(prior, N=N, K=3, stratification="iid", seed=13),
        "IS global K=1": HierarchicalEstimator(prior, N=N, K=1, stratification="global", seed=14),
    }


def z_scores(acc, R, ref, R_ref):
    se2 = acc.per_dim_variance() / R + ref.per_dim_variance() / R_ref
    return (acc.mean - ref.mean) / se2.sqrt()

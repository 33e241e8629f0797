"""Every decision in one pure function (STYLE §18; docs/theory.md §12): ``decide(stats, state, config)``.

The controller reduces its trackers to :class:`~carv_adapt.stats.snapshot.Statistics`, calls :func:`decide`
and applies the returned :class:`Decision`; ``carv-adapt fit`` calls the same function on logged statistics.
Every clamp of ``K`` (bounds, memory), the confidence band that damps ``K``, the proposal's move and the
guards live here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import replace

from torch import Tensor

from carv_adapt.allocation import budget_outer_batch, memory_k_max, optimal_allocation
from carv_adapt.config import ControllerConfig
from carv_adapt.decision_state import Decision, DecisionState
from carv_adapt.plan import resolve_stratification
from carv_adapt.probing import probe_due
from carv_adapt.proposals.base import PmfProposal, Proposal, TargetMeasure, bin_sums
from carv_adapt.proposals.families import BinnedProposal, UniformProposal
from carv_adapt.proposals.shaping import capped_move, is_gain, regularized_profile
from carv_adapt.schedule import warmup_k, warmup_share
from carv_adapt.stats.snapshot import Statistics
from carv_adapt.stats.steps import PolicySegment, pooled_between
from carv_adapt.variance import (
    is_second_moment,
    optimal_proposal_bins,
    stratified_within,
    within_variance_for_proposal,
    work_normalized_variance,
)

_MAX_LOG = math.log(1e6)  # the widest log-scale band of a variance (R5)
__all__ = ["DecisionState", "Decision", "decide", "initial_state", "scheduled_k", "k_cap", "proposal_of", "probe_due"]
__all__ += ["warmup_cycles"]


def k_cap(config: ControllerConfig, N: int) -> int:
    """The largest ``K`` allowed: ``k_max``, lowered by the memory cap for ``N`` outer draws (at least 1)."""
    a = config.policy.allocation
    return memory_k_max(config.memory_cap_bytes, config.inner_bytes, N, a.k_max)


def _clamp(K: int, config: ControllerConfig, N: int) -> int:
    cap = k_cap(config, N)
    return max(min(K, cap), min(config.policy.allocation.k_min, cap))


def initial_state(config: ControllerConfig, edges: Tensor, prior_pmf: Tensor | None = None) -> DecisionState:
    """The state before the first step: the policy's ``K`` (or the first warm-up ``K``) within every bound, and
    the starting bin proposal over ``edges``: the policy's binned one, else the prior ``prior_pmf`` (``T``-dim)
    when the policy is weighted or warms up on the prior, else the target."""
    pol = config.policy
    a, spec = pol.allocation, pol.proposal
    pi_b = pol.target_measure().bin_mass(edges)
    if spec.kind == "binned":
        probs, kind = bin_sums(pol.proposal_pmf(), edges), "binned"
    elif prior_pmf is not None and (spec.kind == "weighted" or pol.schedule.warmup_proposal == "prior"):
        probs, kind = bin_sums(prior_pmf, edges), "prior"
    else:
        probs, kind = pi_b.double().clone(), "uniform"
    # No starting K: an adaptive policy cycles the warm-up K; a frozen one runs k_min.
    K = a.K if a.K is not None else warmup_k(0, a.warmup_k) if pol.adapts_k else a.k_min
    return DecisionState(
        K=_clamp(K, config, a.N),
        N=a.N,
        probs=probs.double(),
        proposal_kind=kind,
        refits_since_k_change=pol.safeguards.k_cooldown,
    )


def proposal_of(state: DecisionState, target: TargetMeasure, edges: Tensor, prior_pmf: Tensor | None) -> Proposal:
    """The sampler of ``state``'s proposal: the target, the exact prior pmf, or the binned proposal."""
    if state.proposal_kind == "uniform":
        return UniformProposal(target)
    if state.proposal_kind == "prior" and prior_pmf is not None:
        return PmfProposal(target, prior_pmf)
    return BinnedProposal(target, edges, state.probs)


def warmup_cycles(step: int, config: ControllerConfig) -> bool:
    """Whether ``step`` is in a warm-up that cycles ``K`` (a policy that adapts ``K`` and starts without one)."""
    pol = config.policy
    return step < pol.schedule.warmup_steps and pol.allocation.K is None and pol.adapts_k


def scheduled_k(step: int, state: DecisionState, config: ControllerConfig) -> DecisionState:
    """The state for ``step`` between refits: the warm-up cycle's ``K`` (clamped) while it cycles, else unchanged."""
    if not warmup_cycles(step, config):
        return state
    return replace(state, K=_clamp(warmup_k(step, config.policy.allocation.warmup_k), config, state.N))


def decide(
    stats: Statistics, state: DecisionState, config: ControllerConfig, prior_b: Tensor | None = None
) -> Decision:
    """Refit the proposal and ``K`` from ``stats`` (docs/theory.md §12, rules R1-R8).

    Args:
        stats: reduced statistics (profile, proxy and probe between/within, costs).
        state: the state in force (``K``, ``N``, proposal, counters).
        config: the policy and run-time settings.
        prior_b: optional ``B``-dim analytic prior proposal (already mixed with ``pi``): a candidate at each refit.
    """
    pol, sg, a = config.policy, config.policy.safeguards, config.policy.allocation
    z = sg.confidence
    reasons: list[str] = []
    warnings: list[str] = []

    def warn_once(key: str, text: str) -> None:
        if key not in state.warned and key not in [w.split(":", 1)[0] for w in warnings]:
            warnings.append(f"{key}: {text}")

    # R1: the space K* reads its variances from.
    use_param = config.space == "parameter" and stats.param is not None and stats.param.groups > 0
    if config.space == "parameter" and not use_param:
        warn_once(
            "no-probe",
            "space='parameter' but no probe was observed, so K is decided from output-space (proxy) statistics, "
            "which can set K several-fold off; pass probe=(g_A, g_B) to observe() (see split_half_probe)",
        )
    src = stats.param if use_param else stats.proxy
    assert src is not None
    pi_b, p_cur, m, m_se = stats.pi_b.double(), state.probs.double(), stats.m.double(), stats.m_se.double()
    M2 = stats.proxy.M2 if math.isfinite(stats.proxy.M2) else 0.0
    if use_param and (calibrated := stats.param_profile()) is not None:  # §7.9: all in parameter space
        m, m_se = calibrated
        M2 = src.M2 if math.isfinite(src.M2) else 0.0
        reasons.append("profile calibrated to the parameter space by per-draw probes")
    S_cur = float(is_second_moment(pi_b, p_cur, m))
    sw_iid = src.sigma_w2_iid
    if not use_param:
        # Proxy: sigma_W^2(p) = S(p) - M2 for any p from the profile, when it resolves the difference.
        from_profile = S_cur - M2 if math.isfinite(stats.proxy.M2) else math.nan
        sw_iid = from_profile if from_profile > 0 else sw_iid
    sb, sb_se = src.sigma_b2, src.sigma_b2_se
    # §15: under an outer design K* and W read the design's between variance; the baseline keeps the i.i.d. one.
    sb_d, sb_d_se = sb, sb_se
    if pol.outer != "iid":
        if math.isfinite(src.sigma_b2_design):
            sb_d, sb_d_se = src.sigma_b2_design, src.sigma_b2_design_se
            reasons.append(f"outer {pol.outer}: sigma_B^2 {sb_d:.4g} (i.i.d. {sb:.4g})")
        else:
            reasons.append(f"outer {pol.outer}: its sigma_B^2 is not measured yet, the i.i.d. one is used")
    r_w = src.sigma_w2_se / src.sigma_w2 if src.sigma_w2 > 0 else math.inf
    phi = stats.proxy.phi if math.isfinite(stats.proxy.phi) else 1.0

    def sw_of(p: Tensor) -> float:
        if math.isnan(sw_iid):
            return math.nan
        return within_variance_for_proposal(sw_iid, S_cur, float(is_second_moment(pi_b, p, m)), M2)

    def sw_at(sw: float, K: int, design: str | None = None) -> float:  # design: the policy's at K unless given
        design = resolve_stratification(pol.stratification, K) if design is None else design
        return stratified_within(sw, phi, K) if design == "stratified" else sw

    if use_param and pol.outer == "iid" and stats.steps:
        # §7.8: every step's gradient measures its policy's group-mean variance; less that policy's within share.
        def within_share(seg: PolicySegment) -> float:
            return sw_at(sw_of(seg.probs.double()), seg.K, seg.design) / seg.K

        sb, sb_se, dof = pooled_between((sb, sb_se, src.sigma_b2_dof), stats.steps, within_share, r_w)
        sb_d, sb_d_se = sb, sb_se
        reasons.append(f"sigma_B^2 {sb:.4g} from probes and step gradients ({dof:.0f} dof)")

    # R2-R3: the proposal.
    p_new, kind, proposal_changed = p_cur, state.proposal_kind, False
    if pol.adapts_proposal:
        m_hat = regularized_profile(m, m_se, stats.counts, sg.smoothing)
        target = (1.0 - sg.alpha) * optimal_proposal_bins(pi_b, m_hat) + sg.alpha * pi_b
        candidates = [
            ("learned", target, "binned"),
            ("learned, capped", capped_move(p_cur, target, sg.max_move), "binned"),
        ]
        if prior_b is not None and state.proposal_kind != "prior":
            candidates.append(("prior", prior_b.double(), "prior"))
        chosen = "current"
        for name, p, k in candidates:
            gain, se = is_gain(pi_b, p_cur, p, m, m_se)
            if gain > 0 and gain > z * se:
                # Two significant digits: a tracked drift moves the proposal by hundredths of a percent.
                p_new, kind, proposal_changed = p, k, True
                chosen = f"{name} (gain {100 * gain / S_cur:.2g} % > {z:g} se)"
                break
        reasons.append(f"proposal: {chosen}")
    sw_new = sw_of(p_new)

    # R5-R6: K (and N under a budget) from the confidence band; provisional while the warm-up weighs (R5c).
    provisional = warmup_share(state.refits, pol.schedule, sg.forgetting) > sg.provisional_share
    N = state.N if a.mode == "fixed_budget" else a.N
    K_cur = _clamp(state.K, config, N)
    c = stats.costs
    c_out_eff = c.c_out + (c.c_0 / N if a.mode == "fixed_batch" else 0.0)
    band = (K_cur, K_cur)
    K_new, N_new = K_cur, N
    keep_reason = None
    if not pol.adapts_k:
        keep_reason = "K fixed by the policy"
    elif c.steps <= 0:
        keep_reason = "no cost observations (use timer() or observe(costs=...)): K kept"
    elif a.mode == "fixed_budget" and not (a.budget is not None and a.budget > c.c_0):
        keep_reason = f"budget {a.budget!r} s does not exceed the fixed cost c_0={c.c_0:.4g} s: K and N kept"
    elif math.isnan(sb) or math.isnan(sw_new):
        keep_reason = "between/within not identified yet (needs N >= 2 and K >= 2): K kept"
        if N == 1:
            warn_once(
                "n1",
                "batch_size=1: sigma_B^2 comes from successive steps' means, which needs K >= 2 on two steps in "
                "a row; until then K cannot adapt (batch_size >= 2 identifies it within one step)",
            )
    elif state.refits_since_k_change < sg.k_cooldown and not provisional:
        keep_reason = "K in cooldown"
    # Progress (§13): for a fixed batch the signal N |G|^2 acts as extra between variance; under a per-step budget
    # progress per second falls with V alone, so the variance decision is already the progress one.
    G2, G2_se = src.G2, src.G2_se
    signal, signal_se = 0.0, 0.0
    if a.objective == "progress" and a.mode == "fixed_batch":
        if math.isfinite(G2):
            signal, signal_se = N * max(G2, 0.0), N * G2_se
            reasons.append(f"objective: progress (N |G|^2 = {signal:.4g} added to sigma_B^2)")
        else:
            reasons.append("objective: progress, but |G|^2 is not estimated yet: deciding by variance")
    if keep_reason is None:
        cap, k_min = k_cap(config, N), min(a.k_min, k_cap(config, N))
        # R5: log-scale bands sigma^2 e^(+-z r), positive at both ends: noise widens K's band around the point estimate.
        x_w = min(z * r_w, _MAX_LOG) if math.isfinite(r_w) else _MAX_LOG

        def best(sb_: float, log_scale: float) -> tuple[int, int]:
            curve = [sw_at(sw_new * math.exp(log_scale), K) for K in range(1, cap + 1)]
            alloc = optimal_allocation(
                max(sb_, 0.0),
                curve,
                c.c_out,
                c.c_in,
                mode=a.mode,
                N=N,
                budget=a.budget,
                c_0=c.c_0,
                k_min=k_min,
                k_max=cap,
            )
            return alloc.K, alloc.N

        se_b = math.sqrt(sb_d_se**2 + signal_se**2) if math.isfinite(sb_d_se) else math.inf
        sb_eff = sb_d + signal
        K_hat = None
        if math.isfinite(se_b) and sb_eff > 0:
            x_b = min(z * se_b / sb_eff, _MAX_LOG)
            K_lo, K_hi = best(sb_eff * math.exp(x_b), -x_w)[0], best(sb_eff * math.exp(-x_b), x_w)[0]
            K_hat = best(sb_eff, 0.0)[0]
        elif math.isfinite(se_b):  # no positive point estimate: sigma_B^2 +- z se (the upper end gives k_cap)
            K_lo, K_hi = best(sb_eff + z * se_b, -x_w)[0], best(sb_eff - z * se_b, x_w)[0]
        else:
            K_lo, K_hi = k_min, cap
        band = K_lo, K_hi = min(K_lo, K_hi), max(K_lo, K_hi)
        # Out of the band, or where a warm-up's cycle left K (no decision for the hysteresis to protect): to the
        # point estimate, which the log band contains; without a positive sigma_B^2 the point estimate is k_cap on
        # noise alone, so only to the band's near end.
        first = (not state.k_decided or provisional) and a.K is None and K_hat is not None
        if first or not K_lo <= K_cur <= K_hi:
            K_new = min(max(K_hat, K_lo), K_hi) if K_hat is not None else K_lo if K_cur < K_lo else K_hi
        move = (
            f"K {K_cur} -> {K_new}" + (" (provisional: the warm-up still weighs)" if first else "")
            if K_new != K_cur
            else f"K kept at {K_cur}"
        )
        reasons.append(f"{move} (K* in [{K_lo}, {K_hi}] at z={z:g})")
        # R5b: K = 1 observes no within variance, and the between variance its steps give is V_g less that unobserved
        # share: a within estimate that no longer holds would keep K at 1 for good. Held past one decision, K = 1
        # gives way to K = 2 for a cooldown, which measures both again (theory §12, R5b).
        if K_new == K_cur == 1 and cap >= 2 and state.refits_since_k_change > sg.k_cooldown:
            K_new = 2
            reasons.append("K 1 -> 2 to measure the within variance again (K = 1 observes none)")
        if a.mode == "fixed_budget":
            N_new = budget_outer_batch(a.budget, K_new, c.c_out, c.c_in, c.c_0)  # type: ignore[arg-type]
    else:
        reasons.append(keep_reason)
    if K_cur != state.K:
        reasons.append(f"K {state.K} clamped to {K_cur} (k_max / memory cap)")
    if k_cap(config, N) < a.k_max:
        reasons.append(f"K capped at {k_cap(config, N)} by memory_cap_bytes")

    # R8: predictions for the chosen policy.
    sw_uniform = sw_of(pi_b)
    W = _W(sb_d, sw_at(sw_new, K_new), K_new, c_out_eff, c.c_in)
    W_base = _W(sb, sw_at(sw_uniform, 1), 1, c_out_eff, c.c_in)
    V = (max(sb_d, 0.0) + sw_at(sw_new, K_new) / K_new) / N_new if math.isfinite(sb_d) else math.nan
    V0 = (max(sb, 0.0) + sw_at(sw_uniform, 1)) / N if math.isfinite(sb) else math.nan
    C, C0 = c.c_0 + N_new * (c.c_out + K_new * c.c_in), c.c_0 + N * (c.c_out + c.c_in)
    g2 = G2 if math.isfinite(G2) and G2 > 0 else math.nan
    progress_gain = (g2 + V0) * C0 / ((g2 + V) * C) if C > 0 and math.isfinite(g2 + V + V0) else math.nan
    k_changed = K_new != state.K
    new_state = DecisionState(
        K=K_new,
        N=N_new,
        probs=p_new.clone(),
        proposal_kind=kind,
        refits_since_k_change=0 if k_changed else state.refits_since_k_change + 1,
        refits=state.refits + 1,
        warned=state.warned + tuple(w.split(":", 1)[0] for w in warnings),
        k_decided=state.k_decided or (keep_reason is None and not provisional),
    )
    return Decision(
        state=new_state,
        space="parameter" if use_param else "proxy",
        sigma_b2=sb,
        sigma_b2_se=sb_se,
        sigma_w2=sw_of(p_cur),
        predicted_sigma_w2=sw_at(sw_new, K_new),
        sigma_w2_uniform=sw_uniform,
        k_interval=band,
        W=W,
        W_baseline=W_base,
        ecm=W_base / W if W > 0 and math.isfinite(W) else math.nan,
        is_gain=sw_uniform / sw_new if sw_new > 0 else 1.0,
        k_changed=k_changed,
        proposal_changed=proposal_changed,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        G2=G2,
        G2_se=G2_se,
        noise_scale=(max(sb_d, 0.0) + sw_at(sw_new, K_new) / K_new) / g2 if math.isfinite(sb_d) else math.nan,
        v_over_g2=V / g2,
        progress_gain=progress_gain,
        sigma_b2_design=sb_d,
    )


def _W(sigma_b2: float, sigma_w2: float, K: int, c_out: float, c_in: float) -> float:
    if math.isnan(sigma_b2) or math.isnan(sigma_w2):
        return math.nan
    return work_normalized_variance(max(sigma_b2, 0.0), max(sigma_w2, 0.0), K, c_out, c_in)

"""The compute-aware variance model (docs/theory.md §2-§5, §7): pure functions, no state.

Symbols follow docs/theory.md: ``sigma_b2`` (between outer draws), ``sigma_w2`` (within one outer draw, per
inner draw, with the IS weights applied), ``K`` inner draws per outer draw, ``c_out`` / ``c_in`` the
upstream and marginal inner costs. Floats and tensors in, floats and tensors out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError, ShapeError

__all__ = [
    "work_normalized_variance",
    "estimator_variance",
    "step_cost",
    "ecm",
    "optimal_proposal_bins",
    "is_second_moment",
    "within_variance_for_proposal",
    "group_sums",
    "split_half_sums",
    "step_sums",
    "stratified_within",
    "stratum_within_from_groups",
    "split_half_within",
    "fit_linear_cost",
    "linear_cost_from_shape",
    "total_variation",
]


def _check_nonneg(name: str, value: float) -> None:
    if not (value >= 0.0) or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def step_cost(N: int, K: int, c_out: float, c_in: float, c_0: float = 0.0) -> float:
    """Per-step compute ``C(N, K) = c_0 + N (c_out + K c_in)`` (docs/theory.md §3)."""
    return c_0 + N * (c_out + K * c_in)


def estimator_variance(sigma_b2: float, sigma_w2: float, N: int, K: int) -> float:
    """``Var(G_hat) = sigma_b2 / N + sigma_w2 / (N K)`` (docs/theory.md §2)."""
    return sigma_b2 / N + sigma_w2 / (N * K)


def work_normalized_variance(sigma_b2: float, sigma_w2: float, K: float, c_out: float, c_in: float) -> float:
    """``W(K) = (sigma_b2 + sigma_w2 / K) (c_out + K c_in)`` (docs/theory.md §3), ignoring ``c_0``."""
    for name, value in (("sigma_w2", sigma_w2), ("c_out", c_out), ("c_in", c_in)):
        _check_nonneg(name, value)
    if K < 1:
        raise ConfigError(f"K must be >= 1, got {K!r}")
    return (sigma_b2 + sigma_w2 / K) * (c_out + K * c_in)


def ecm(W_baseline: float, W_policy: float) -> float:
    """Effective compute multiplier ``W_baseline / W_policy`` (docs/theory.md §3)."""
    if W_policy <= 0.0:
        return math.inf if W_baseline > 0.0 else 1.0
    return W_baseline / W_policy


def is_second_moment(pi: Tensor, p: Tensor, m: Tensor) -> Tensor:
    """``E_{t~p}[rho(t)^2 m(t)] = sum_t pi(t)^2 / p(t) m(t)`` (docs/theory.md §5).

    Args:
        pi: ``B``-dim target mass per bin (or per timestep).
        p: ``B``-dim proposal mass on the same cells.
        m: ``B``-dim second moment ``E ||f||^2`` per cell (rho-free).
    """
    # B numbers, evaluated many times per decision: NumPy, where torch's masked indexing costs its dispatch.
    a_pi, a_p, a_m = (x.detach().cpu().double().numpy() for x in (pi, p, m))
    s = a_pi > 0
    if bool((a_p[s] <= 0).any()):
        return torch.scalar_tensor(math.inf, dtype=torch.float64)
    return torch.scalar_tensor(float((a_pi[s] ** 2 / a_p[s] * a_m[s]).sum()), dtype=torch.float64)


def optimal_proposal_bins(pi: Tensor, m: Tensor) -> Tensor:
    """IS-optimal bin masses ``p*_b ∝ pi_b sqrt(m_b)`` for a piecewise-constant profile (docs/theory.md §5).

    With ``p ∝ pi`` inside each bin, ``sum_b pi_b^2 / p_b m_b`` is minimized by this choice
    (Cauchy-Schwarz). Falls back to ``pi`` when the profile carries no mass.

    Args:
        pi: ``B``-dim target mass per bin (sums to 1).
        m: ``B``-dim per-bin second moment (>= 0).

    Returns:
        ``B``-dim float64 pmf.
    """
    if pi.shape != m.shape:
        raise ConfigError(f"pi {tuple(pi.shape)} and m {tuple(m.shape)} must have the same shape")
    if bool((m < 0).any()) or not bool(torch.isfinite(m).all()):
        raise ConfigError(f"profile m must be finite and >= 0, got {m.tolist()}")
    q = pi.double() * m.double().sqrt()
    total = q.sum()
    if total <= 0:
        return pi.double() / pi.double().sum()
    return q / total


def within_variance_for_proposal(
    sigma_w2_obs: float, S_obs: float, S_new: float, M2: float, min_within_share: float = 0.02
) -> float:
    """Predict the within variance under a new proposal from one measured under the current one.

    For i.i.d. inner draws ``sigma_w2(p) = S(p) - M2`` with ``S(p) = E_{t~p}[rho^2 m]`` and
    ``M2 = E_xi ||mu(xi)||^2`` (docs/theory.md §2, §5). The measured ``sigma_w2_obs`` may live in another space
    than the profile (a parameter-space probe against an output-space proxy profile), so the profile
    only supplies the ratio: ``sigma_w2_obs * (S_new - M2) / (S_obs - M2)``. When the profile's within
    share ``(S_obs - M2) / S_obs`` is below ``min_within_share`` the difference is mostly noise, and the
    ratio falls back to ``S_new / S_obs`` (treating ``M2`` as 0: it never inflates a prediction).
    """
    if not S_obs > 0:
        return max(sigma_w2_obs, 0.0)
    if not (S_obs - M2) > min_within_share * S_obs:
        M2 = 0.0
    return max(sigma_w2_obs, 0.0) * max(S_new - M2, 0.0) / (S_obs - M2)


def _per_group(xg: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per group of ``G x K x D`` (weighted) draws: within sum of squares, the two stratified within sums of
    :func:`stratum_within_from_groups` (``G``-dim each) and the ``G x D`` group means."""
    m = xg.mean(dim=1)
    r = xg - m[:, None]
    ssw = r.mul_(r).sum(dim=(1, 2))
    split, pairs = _stratum_per_group(xg)
    return ssw, split, pairs, m


def group_sums(
    x: Tensor, weights: Tensor | None = None, chunk_elements: int = 1 << 20
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor], float]:
    """One step's grouped sums of squares (docs/theory.md §7) of ``N x K x ...`` contributions.

    Args:
        x: ``N x K x ...`` contributions (``rho f``, or ``f`` with ``weights``).
        weights: optional ``N x K`` weights ``rho`` applied on the fly (no full-size product is kept).
        chunk_elements: outer draws are processed in chunks of about this many elements, bounding temporaries.

    Returns:
        ``(ssw, means, (split, pairs), groups)``: the within sum of squares ``sum_nk ||x_nk - xbar_n||^2``
        (0-dim), the ``N x D`` group means, the two stratified within sums of :func:`stratum_within_from_groups`
        (0-dim) and their count. Reductions stay on ``x``'s device and dtype.
    """
    n, K = x.shape[0], x.shape[1]
    ssw, split, pairs, means = _chunked(x.reshape(n, K, -1), weights, chunk_elements)
    return ssw.sum(), means, (split.sum(), pairs.sum()), float(n) if K >= 2 else 0.0


def _chunked(flat: Tensor, weights: Tensor | None, chunk_elements: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, K, D = flat.shape
    step = max(1, chunk_elements // max(1, K * D))
    parts = []
    for i in range(0, n, step):
        xi = flat[i : i + step] if weights is None else flat[i : i + step] * weights[i : i + step, :, None]
        parts.append(_per_group(xi))
    if len(parts) == 1:
        return parts[0]
    return tuple(torch.cat([p[j] for p in parts]) for j in range(4))  # type: ignore[return-value]


def step_sums(x: Tensor, weights: Tensor | None = None, chunk_elements: int = 1 << 20) -> tuple[Tensor, Tensor]:
    """:func:`group_sums` for ``S`` steps at once: ``x`` is ``S x N x K x ...`` (``weights`` ``S x N x K``).

    Returns ``(totals, means)``: an ``S x 5`` float64 Tensor of each step's ``[ssw, split, pairs, sum_n ||m_n||^2,
    sum_n ||m_n - mean_n m_n||^2]`` (the group means ``m_n`` weighted) and the ``S x N x D`` means, on ``x``'s
    device. A step's row does not depend on the others: many small steps cost one batch of reductions.
    """
    S, n, K = x.shape[0], x.shape[1], x.shape[2]
    flat = x.reshape(S * n, K, -1)
    w = None if weights is None else weights.reshape(S * n, K)
    ssw, split, pairs, means = _chunked(flat, w, chunk_elements)
    m = means.reshape(S, n, -1)
    c = m - m.mean(dim=1, keepdim=True)
    cols = [v.reshape(S, n).sum(1) for v in (ssw, split, pairs)] + [m.mul(m).sum((1, 2)), c.mul_(c).sum((1, 2))]
    return torch.stack(cols, dim=1).double(), m


def split_half_sums(
    g_a: Tensor, g_b: Tensor, K: int, keep_means: bool = False, chunk_elements: int = 1 << 17
) -> tuple[tuple[float, float, float], Tensor | None]:
    """A split-half probe's sums (docs/theory.md §7.5) from the ``N x P`` gradients of the even (``k_A = ceil(K/2)``
    draws) and odd (``k_B``) halves of each outer draw.

    Returns ``((ssw, sum_n ||m_n||^2, sum_n ||m_n - mbar||^2), means)``: ``ssw = sum_n ||g_A - g_B||^2 / (1/k_A +
    1/k_B)``, the group means ``m_n = (k_A g_A + k_B g_B) / K``, and the ``N x P`` means themselves only with
    ``keep_means``. The columns are reduced in chunks of about
    ``chunk_elements``: full-size temporaries of large gradients cost more (allocation, page faults, cache
    misses) than the arithmetic; each chunk's sums accumulate in float64.
    """
    n, P = g_a.shape
    k_a, k_b = (K + 1) // 2, K // 2
    wide = torch.float32 if g_a.dtype in (torch.float16, torch.bfloat16) else g_a.dtype
    means = torch.empty(n, P, dtype=wide, device=g_a.device) if keep_means else None
    acc = torch.zeros(3, dtype=torch.float64, device=g_a.device)
    width = max(1, chunk_elements // max(1, n))
    for s in range(0, P, width):
        a, b = g_a[:, s : s + width].to(wide), g_b[:, s : s + width].to(wide)
        d = torch.sub(a, b).reshape(-1)
        m = torch.add(a, b, alpha=k_b / k_a).mul_(k_a / K)
        c = (m - m.mean(0)).reshape(-1) if n >= 2 else None
        mf = m.reshape(-1)
        parts = [torch.dot(d, d), torch.dot(mf, mf), torch.dot(c, c) if c is not None else d.new_zeros(())]
        acc += torch.stack(parts).double()
        if means is not None:
            means[:, s : s + width] = m
    ssw, msq, ssb = acc.tolist()
    return (ssw / (1.0 / k_a + 1.0 / k_b), msq, ssb), means


def stratified_within(sigma_w2_iid: float, phi: float, K: int) -> float:
    """Per-draw within variance at ``K`` per-draw strata: ``sigma_iid (phi + (1 - phi) / K^2)`` (§12, R4).

    ``phi`` is the share of the i.i.d. within variance that stratifying the timesteps cannot remove (the noise
    part); the rest, the variation of the conditional mean over ``t``, falls as ``1/K^2`` per draw for a smooth
    integrand. ``phi = 1`` is an i.i.d. design.
    """
    phi = min(max(phi, 0.0), 1.0)
    return sigma_w2_iid * (phi + (1.0 - phi) / (K * K))


def stratum_within_from_groups(x: Tensor) -> tuple[Tensor, Tensor, float]:
    """Two estimates of the stratified within variance ``sbar^2`` (a group mean's variance is ``sbar^2 / K``) from
    one draw per stratum: ``(split sum, pair sum, groups)``, each sum over the ``N`` groups (docs/theory.md §7.4).

    Both weight every stratum's variance equally and exceed ``sbar^2`` only by a non-negative part of the stratum
    means' spread. *Split*: the even- and odd-indexed strata as two halves, ``||a - b||^2 / (1/k_a + 1/k_b)``;
    its excess is the squared difference of the halves' means, small when the stratum means are rough (their
    adjacent differences cancel) but growing as ``1/K`` for a linear trend. *Pairs*: first differences
    ``d_j = x_2j - x_{2j+1}`` with ``mean_j ||d_j||^2 / 2 - mean_j <d_j, d_{j+1}> / 2``; the cross term removes
    a smooth trend's excess exactly for a linear one (for ``K < 4``: ``||d_0||^2 / 2``). For odd ``K`` both use the
    ``K - 1`` strata other than the middle one. ``x`` is ``N x K x ...``;
    the sums are 0-dim Tensors on ``x``'s device (no host transfer, so callers can batch theirs).
    """
    n, k = x.shape[0], x.shape[1]
    if k < 2:
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return zero, zero, 0.0
    split, pairs = _stratum_per_group(x.reshape(n, k, -1))
    return split.sum(), pairs.sum(), float(n)


def _stratum_per_group(flat: Tensor) -> tuple[Tensor, Tensor]:
    """``G``-dim split and pair sums of :func:`stratum_within_from_groups` for ``G x K x D`` draws (0 for K < 2)."""
    k = flat.shape[1]
    if k < 2:
        z = flat.new_zeros(flat.shape[0])
        return z, z
    # Odd K: halves of unequal size would weight the end strata unlike the rest; leave out the middle stratum,
    # whose variance is the most typical, and use the K - 1 others.
    if k % 2 == 1:
        keep = torch.cat([torch.arange(k // 2), torch.arange(k // 2 + 1, k)]).to(flat.device)
        flat, k = flat.index_select(1, keep), k - 1
    k_a, k_b = (k + 1) // 2, k // 2
    even, odd = flat[:, 0::2], flat[:, 1::2]
    a, b = flat[:, 0 : 2 * k_b : 2], flat[:, 1 : 2 * k_b : 2]
    diff = even.mean(1) - odd.mean(1)
    split = diff.mul_(diff).sum(1) / (1.0 / k_a + 1.0 / k_b)
    d = a - b
    pairs = d.pow(2).sum(dim=(1, 2)) / (2.0 * k_b)
    if k_b >= 2:
        pairs = pairs - (d[:, :-1] * d[:, 1:]).sum(dim=(1, 2)) / (2.0 * (k_b - 1))
    return split, pairs


def split_half_within(g_a: Tensor, g_b: Tensor, K: int) -> float:
    """Parameter-space within variance from one split-half probe (docs/theory.md §7).

    ``g_a`` and ``g_b`` are ``N x P`` gradients of the means of two interleaved halves (even and odd inner
    indices, sizes ``ceil(K/2)`` and ``floor(K/2)``) of each outer draw's ``K`` inner contributions;
    ``E ||g_A - g_B||^2 = sigma_w2 (1/k_A + 1/k_B)`` (``= 4 sigma_w2 / K`` for even K) for i.i.d. draws.
    """
    if g_a.shape != g_b.shape or g_a.dim() != 2:
        raise ShapeError(f"split-half probe needs two N x P gradients, got {tuple(g_a.shape)}, {tuple(g_b.shape)}")
    if K < 2:
        raise ShapeError(f"split-half probe needs K >= 2 inner draws, got K={K}")
    d = (g_a.double() - g_b.double()).pow(2).sum(dim=1).mean()
    k_a, k_b = (K + 1) // 2, K // 2
    return float(d) / (1.0 / k_a + 1.0 / k_b)


def fit_linear_cost(
    sw: float, sx: float, sxx: float, sy: float, sxy: float, min_rel_spread: float = 1e-3
) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` from sufficient sums, as ``(a, b)`` with ``a, b >= 0`` (docs/theory.md §7).

    Falls back to a line through the origin (``a = 0, b = sy / sx``) when ``x`` has (almost) no spread,
    since then the intercept is not identified.
    """
    if sw <= 0 or sx <= 0:
        return 0.0, 0.0
    mx, my = sx / sw, sy / sw
    var_x = sxx / sw - mx * mx
    if var_x <= (min_rel_spread * mx) ** 2:
        return 0.0, max(sy / sx, 0.0)
    b = (sxy / sw - mx * my) / var_x
    a = my - b * mx
    if b <= 0:
        return 0.0, max(sy / sx, 0.0)
    if a < 0:
        # A negative fixed cost is noise; refit through the origin.
        return 0.0, max(sxy / sxx, 0.0)
    return a, b


def linear_cost_from_shape(r: float, sw: float, sx: float, sy: float) -> tuple[float, float]:
    """``y = a + b x`` with the shape ``r = a / b`` given and the level from weighted sums ``(sw, sx, sy)``:
    ``b = mean(y) / (r + mean(x))``, ``a = r b`` (docs/theory.md §7.1); a negative ``r`` (noise) is taken as 0."""
    if sw <= 0 or sx <= 0:
        return 0.0, 0.0
    r = max(r, 0.0)
    b = max(sy / sw, 0.0) / (r + sx / sw)
    return r * b, b


def total_variation(p: Tensor, q: Tensor) -> float:
    """Total-variation distance ``0.5 sum |p - q|`` between two pmfs on the same cells."""
    return float(0.5 * (p.double() - q.double()).abs().sum())

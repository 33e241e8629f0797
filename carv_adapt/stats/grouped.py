"""Grouped between/within variance estimators with their standard errors (docs/theory.md §7, §12 R4-R5)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from carv_adapt.errors import ShapeError
from carv_adapt.outer import OuterLayout, outer_step_between
from carv_adapt.stats.base import NonFinitePolicy, SumStatistic, all_finite, precision_mean_se, reliability_mean_se
from carv_adapt.variance import split_half_sums, step_sums

__all__ = ["GroupedVariance", "BetweenWithin", "Design"]

Design = Literal["iid", "stratified"]  # the K inner draws of one outer draw: independent, or one stratum each
# Per-group sums of the split and the pair estimates of the stratified within variance (docs/theory.md §7.4).
_STRAT_SUMS = ("strat_split", "strat_pairs")
# Two families of between estimates: the i.i.d. sigma_B^2 and the outer design's (docs/theory.md §15.2). Each has
# sums by degrees of freedom d (d, d^2 [square decay], d b, d b^2); precision-weighted sums (docs/theory.md §7.10:
# w, f w [square decay], f, w b, w b^2); and counts of every estimate (f, f^2 d [square decay], f d / K), which
# convert the first pool to a first reference.
_FAMILIES = {
    "iid": (("dof_b", "dof_b2", "sb_num", "sb_sq"), ("prec_w", "prec_fw", "prec_f", "prec_x", "prec_x2"),
            ("b_f", "b_fd", "b_invk")),
    "design": (("dof_bd", "dof_bd2", "sbd_num", "sbd_sq"), ("dprec_w", "dprec_fw", "dprec_f", "dprec_x", "dprec_x2"),
               ("bd_f", "bd_fd", "bd_invk")),
}  # fmt: skip
_SQUARE = {"dof_b2", "dof_bd2", "prec_fw", "dprec_fw", "b_fd", "bd_fd", "dof_w2", "g2_w2"}
# States that checkpoints from before them lack (they start at 0): all but the within, M2, |G|^2 and i.i.d. dof sums.
_LATER = {*_STRAT_SUMS, *(n for family in _FAMILIES.values() for sums in family for n in sums)} - {*_FAMILIES["iid"][0]}
_SCALE_Z = 4.0  # a reference's noise scale that grew by more than e^(4 relative se) rescales the held weights
_DEFER_BYTES = 1 << 18  # update(defer=True) holds steps up to this size: their reductions cost dispatch, not arithmetic


@dataclass(frozen=True)
class BetweenWithin:
    """Estimates from grouped observations (NaN where not identified, ``inf`` standard errors until two steps).

    ``sigma_w2`` is the per-draw within variance of the designs that ran (stratified where they were);
    ``sigma_w2_iid`` the timestep-marginal (i.i.d.) one; ``phi`` the share of ``sigma_w2_iid`` stratification
    cannot remove (NaN when no stratified step was seen); ``x_mean`` the window's mean design factor
    (``1/K^2`` for a stratified step, 1 for an i.i.d. one); ``M2 = E ||mu(xi)||^2``; ``G2 = |G|^2``, the squared
    norm of the expected gradient, from products of independent draws (docs/theory.md §13). ``sigma_b2_design``
    is the between variance of the outer design that ran, ``N Var(mean_n mu(xi_n))`` (NaN when no step had a
    stratified or antithetic outer design; docs/theory.md §15). ``sigma_b2_dof`` is the forgetting-weighted sum of
    the between estimate's degrees of freedom.
    """

    sigma_b2: float
    sigma_b2_se: float
    sigma_w2: float
    sigma_w2_se: float
    sigma_w2_iid: float
    phi: float
    x_mean: float
    M2: float
    groups: float
    G2: float = math.nan
    G2_se: float = math.inf
    sigma_b2_design: float = math.nan
    sigma_b2_design_se: float = math.inf
    sigma_b2_dof: float = 0.0


class GroupedVariance(SumStatistic):
    """Accumulates grouped sums of squares across steps; ``K``, the design and the proposal may change.

    Each step gives one within estimate ``sw_s`` (effective per-draw variance of its design: the pooled
    within-group estimate for i.i.d. draws, the smaller pooled of two one-draw-per-stratum estimates for stratified
    draws) and one between estimate
    ``b_s = (ssb_s - (n - 1) sw_s / K_s) / (n - 1)``: the variance of a group mean is ``sw_s / K_s`` for either
    design, so the between term is not biased by an i.i.d.-style correction under stratification. Within estimates
    are pooled by degrees of freedom, between estimates by the precision a reference predicts (:meth:`set_reference`,
    docs/theory.md §7.10); standard errors come from the spread of the per-step estimates (§12, R5). Steps with
    ``K = 1`` carry no within information and are only checked for non-finite values.
    """

    def __init__(self, nonfinite: NonFinitePolicy = "skip") -> None:
        super().__init__(nonfinite)
        # Within (dof_w ..., with the two stratified estimates of §7.4), M2, |G|^2, then the two between families.
        names = ["dof_w", "dof_w2", "sw_num", "sw_sq", "x_num", "iid_num", "phi_num", "phi_den", *_STRAT_SUMS,
                 "m2_num", "groups", "g2_w", "g2_w2", "g2_num", "g2_sq"]  # fmt: skip
        names += [n for family in _FAMILIES.values() for sums in family for n in sums]
        for name in names:
            decay = "square" if name in _SQUARE else "linear"
            self.add_state(name, torch.zeros(()), decay=decay, added_later=name in _LATER)  # type: ignore[arg-type]
        # The last step's group mean when it had one outer draw: successive steps then pair up (N = 1, §13).
        self._prev: tuple[Tensor, float] | None = None
        # The last outer-design step's mean, v = sw / K, N and design, when that step alone did not identify the
        # design's between variance: successive steps pair up (§15.2).
        self._prev_outer: tuple[Tensor, float, int, str] | None = None
        # (sigma_B^2, sigma_W^2, the outer design's sigma_B^2) the between estimates are weighted by.
        self._ref: tuple[float, float, float] | None = None

    def _accumulate(self, n: int, K: int, sw: float, dof_w: float, iid: float | None, x: float, msq: float, ssb: float,
                    mean: Tensor | None = None, outer: OuterLayout | None = None) -> None:  # fmt: skip
        """Add one step: ``n`` groups of ``K`` draws, its within estimate ``sw`` (``dof_w`` degrees of freedom),
        its i.i.d. within estimate ``iid`` (None when the step cannot tell), design factor ``x``, and the group
        means' sums of squares. With ``n = 1`` the step's group ``mean`` pairs with the previous single-draw step's:
        ``||g_t - g_{t-1}||^2 / 2`` less the two group-mean variances estimates ``sigma_B^2``, ``<g_t, g_{t-1}>``
        estimates ``|G|^2`` (both up to the drift between the two steps). Under a stratified or antithetic ``outer``
        layout they come from paired group means (:func:`~carv_adapt.outer.outer_step_between`)."""
        names = ["dof_w", "dof_w2", "sw_num", "sw_sq", "x_num", "m2_num", "groups"]
        values = [dof_w, dof_w * dof_w, dof_w * sw, dof_w * sw * sw, dof_w * x, msq - n * sw / K, n]
        if iid is not None:
            names.append("iid_num")
            values.append(dof_w * iid)
        if iid is not None and x < 1.0:
            names += ["phi_num", "phi_den"]
            values += [dof_w * (sw - x * iid), dof_w * (1.0 - x) * iid]
        b = g2 = None
        d = w = 0.0
        if outer is not None and not outer.is_iid:
            est, self._prev_outer = outer_step_between(self._prev_outer, n, sw / K, ssb, mean, outer)
            self._prev = None
            if est is not None:
                b_design, b, dof, d = est
                self._between_sums("design", b_design, dof, K, names, values)
                # Draws of one design are dependent: sum_{n != m} Cov(mu_n, mu_m) = n (b_design - b_iid).
                g2 = (n * (msq - ssb) - msq - n * (b_design - b)) / (n * (n - 1))
                w = n * (n - 1) / 2.0
        elif n >= 2:
            b, d = (ssb - (n - 1) * sw / K) / (n - 1), float(n - 1)
            # sum_{n != m} <g_n, g_m> = ||sum g||^2 - sum ||g||^2 = n (msq - ssb) - msq, over n (n - 1) ordered pairs.
            g2, w = (n * (msq - ssb) - msq) / (n * (n - 1)), n * (n - 1) / 2.0
            self._prev = None
        elif mean is not None:
            cur = mean.detach().reshape(-1)
            if self._prev is not None and self._prev[0].shape == cur.shape:
                prev, prev_var = self._prev[0].to(cur.device, cur.dtype), self._prev[1]
                pair = torch.stack([(cur - prev).pow(2).sum(), (cur * prev).sum()]).double().tolist()
                b, d = pair[0] / 2.0 - (sw / K + prev_var) / 2.0, 1.0
                g2, w = pair[1], 1.0
            self._prev = (cur.clone(), sw / K)
        if b is not None:
            self._between_sums("iid", b, d, K, names, values)
        if g2 is not None:
            names += ["g2_w", "g2_w2", "g2_num", "g2_sq"]
            values += [w, w * w, w * g2, w * g2 * g2]
        self._add(tuple(names), values)

    def _between_sums(self, family: str, b: float, d: float, K: int, names: list[str], values: list[float]) -> None:
        """Append one between estimate ``b`` (``d`` degrees of freedom, ``K`` inner draws) of ``family`` to the
        step's sums: by degrees of freedom, its counts, and, once a reference is set, by its precision."""
        dof, prec, count = _FAMILIES[family]
        names += [*dof, *count]
        values += [d, d * d, d * b, d * b * b, 1.0, d, d / K]
        if self._ref is not None:  # weighted by the reference's precision (docs/theory.md §7.10)
            om = d / (self._ref[0 if family == "iid" else 2] + self._ref[1] / K) ** 2
            names += prec
            values += [om, om, 1.0, om * b, om * b * b]

    def update(
        self,
        x: Tensor,
        weights: Tensor | None = None,
        design: Design = "iid",
        outer: OuterLayout | None = None,
        defer: bool = False,
        finite: bool = False,
    ) -> None:
        """Accumulate one step's ``N x K x ...`` weighted contributions ``rho f`` (or ``f`` with ``N x K``
        ``weights`` ``rho``, which avoids materializing the product), drawn under ``design`` (inner) and the
        ``outer`` layout (default i.i.d. outer draws; docs/theory.md §15).

        An outer draw with any non-finite entry is dropped whole (its group would be biased otherwise). With
        ``defer``, a small step (i.i.d. outer draws, ``N >= 2``) is copied and reduced later together with the
        next ones (:meth:`flush`; every read flushes), with the forgetting it missed: the sums are those of
        immediate updates up to rounding. ``finite``: the caller knows ``x`` and ``weights`` are finite (their
        squared norms were), which spares the check.
        """
        if x.dim() < 2:
            raise ShapeError(f"grouped update needs N x K x ... contributions, got shape {tuple(x.shape)}")
        if weights is not None and tuple(weights.shape) != tuple(x.shape[:2]):
            raise ShapeError(f"weights: shape {tuple(weights.shape)}, expected N x K = {tuple(x.shape[:2])}")
        x = x.detach()
        w = None if weights is None else weights.detach().to(x.device, x.dtype)
        if x.shape[1] < 2:
            self._drop_nonfinite("contribution", *((x,) if w is None else (x, w)))
            return
        small = x.numel() * x.element_size() <= _DEFER_BYTES
        iid_outer = outer is None or outer.is_iid
        # A non-finite step is reduced now, so that it is counted (and warned about) when it is seen.
        held = defer and small and x.shape[0] >= 2 and iid_outer  # checked first: only a held step needs the check
        if held and (finite or (all_finite(x) and (w is None or all_finite(w)))):
            w_copy = None if w is None else (w.clone() if w is weights else w)  # a caller may reuse its buffers
            self._defer((x.clone(), w_copy, design))
            return
        self.flush()
        self._update_now(x, w, design, outer)

    def _reduce_deferred(self, pending: list[tuple[Tensor, Tensor | None, Design]], missed: np.ndarray) -> None:
        # Held steps of one shape, dtype, device, design and weighting are reduced as one batch; their sums are then
        # added in the order the steps came, runs of one kind at a time (a warm-up cycling K holds two kinds).
        keys = [(tuple(x.shape), x.dtype, x.device, d, w is None) for x, w, d in pending]
        rows = np.empty((len(pending), 5))
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            xs = torch.stack([pending[i][0] for i in idx])
            ws = None if key[4] else torch.stack([pending[i][1] for i in idx])  # type: ignore[misc]
            rows[idx] = step_sums(xs, ws)[0].cpu().numpy()
        for _, run in itertools.groupby(range(len(pending)), key=keys.__getitem__):
            i = list(run)
            self._add_run(pending[i[0] : i[-1] + 1], rows[i], missed[i])

    def _add_run(self, run: list[tuple[Tensor, Tensor | None, Design]], rows: np.ndarray, missed: np.ndarray) -> None:
        n, K = run[0][0].shape[:2]
        design = run[0][2]
        finite = np.isfinite(rows).all(axis=1)
        # Every step of a run shares N >= 2, K and the design: their sums are added together, each row scaled by the
        # forgetting it missed. Held steps are finite, so a non-finite row is an overflow: then one at a time.
        if finite.all():
            with self._scaled(missed):
                self._from_totals(n, K, design, list(rows.T), None, None)
            return
        for i, ((x, w, _), row) in enumerate(zip(run, rows.tolist())):
            with self._scaled(missed[i : i + 1]):
                if finite[i]:
                    self._from_totals(n, K, design, row, None, None)
                else:
                    self._update_now(x, w, design, None)

    def _update_now(self, x: Tensor, w: Tensor | None, design: Design, outer: OuterLayout | None) -> None:
        # The same reductions as a deferred batch (step_sums), so a step's sums do not depend on how it was reduced.
        rows, means = step_sums(x[None], None if w is None else w[None])
        totals = rows[0].tolist()
        # A NaN or an infinity anywhere makes a total non-finite: only then pay the per-draw filter.
        if not all(math.isfinite(v) for v in totals):
            kept = self._drop_nonfinite("contribution", *((x,) if w is None else (x, w)))
            if kept is None:
                return
            x, w = kept[0], (kept[1] if w is not None else None)
            rows, means = step_sums(x[None], None if w is None else w[None])
            totals = rows[0].tolist()
        self._from_totals(x.shape[0], x.shape[1], design, totals, means[0], outer)

    def _from_totals(self, n: int, K: int, design: Design, totals: list, means: Tensor | None,
                     outer: OuterLayout | None) -> None:  # fmt: skip
        """Add one step from its ``[ssw, split, pairs, sum ||m||^2, sum ||m - mbar||^2]`` over ``n`` groups (floats),
        or ``S`` deferred steps of the same ``n``, ``K`` and design at once (``S``-vectors; :meth:`_add`)."""
        ssw_f, split_f, pairs_f, msq, ssb = totals
        if design == "stratified":
            # Both estimates only over-state sbar^2 (a group mean's variance is sbar^2 / K): the smaller pooled one
            # is the closer, and each step uses it, as pooled up to and including that step (docs/theory.md §7.4).
            before = float(self.strat_split), float(self.strat_pairs)
            self._add(_STRAT_SUMS, (split_f, pairs_f))
            f = 1.0 if self._add_scale is None else self._add_scale[:, self._layout["strat_split"][0]]
            rows = np.column_stack([f * np.asarray(split_f), f * np.asarray(pairs_f)])
            pooled = np.cumsum(np.vstack([before, rows]), axis=0)[1:]  # sequential, as added
            sw = np.where(pooled[:, 0] <= pooled[:, 1], split_f, pairs_f) / n
            sw = float(sw[0]) if self._add_scale is None else sw
            iid = (ssw_f / n + sw) / K  # E SSW_group = K sigma_iid - mean stratum variance
            self._accumulate(n, K, sw, float(n), iid, 1.0 / (K * K), msq, ssb, means, outer)
        else:
            sw = ssw_f / (n * (K - 1))
            self._accumulate(n, K, sw, float(n * (K - 1)), sw, 1.0, msq, ssb, means, outer)

    def update_split_half(
        self, g_a: Tensor, g_b: Tensor, K: int, design: Design = "iid", outer: OuterLayout | None = None
    ) -> None:
        """Accumulate a parameter-space split-half probe (docs/theory.md §7): ``N x P`` gradients of the means of
        the even- and odd-indexed inner draws of each outer draw. Each outer draw gives one within degree of
        freedom, ``||g_A - g_B||^2 / (1/k_A + 1/k_B)`` (the per-draw variance of the design that ran); the
        weighted group means feed the between sums."""
        if g_a.shape != g_b.shape or g_a.dim() != 2:
            raise ShapeError(f"split-half probe needs two N x P gradients, got {tuple(g_a.shape)}, {tuple(g_b.shape)}")
        if K < 2:
            raise ShapeError(f"split-half probe needs K >= 2 inner draws, got K={K}")
        design_reads = outer is not None and not outer.is_iid  # the means are kept only where something reads them
        a, b = g_a.detach(), g_b.detach()
        tot, means = split_half_sums(a, b, K, a.shape[0] == 1 or design_reads)
        if not all(math.isfinite(v) for v in tot):
            kept = self._drop_nonfinite("probe gradient", a, b)
            if kept is None:
                return
            a, b = kept
            tot, means = split_half_sums(a, b, K, a.shape[0] == 1 or design_reads)
        n = a.shape[0]
        sw = tot[0] / n
        x = 1.0 / (K * K) if design == "stratified" else 1.0
        # The probe measures the design's variance only; its i.i.d. counterpart comes from the proxy's phi.
        self._accumulate(n, K, sw, float(n), None, x, tot[1], tot[2], means, outer)

    def compute(self, phi: float | None = None) -> BetweenWithin:
        """Current estimates; ``phi`` (default: this tracker's own) converts the design's within variance into
        the i.i.d. one when this tracker only saw designs (probes) that cannot separate them."""
        v = self.scalars()
        dof_w, dof_b = v["dof_w"], v["dof_b"]
        sw, sw_se = reliability_mean_se(dof_w, v["dof_w2"], v["sw_num"], v["sw_sq"])
        (sb, sb_se), (bd, bd_se) = (_pooled(v, family) for family in ("iid", "design"))
        own_phi = v["phi_num"] / v["phi_den"] if v["phi_den"] > 0 else math.nan
        use_phi = own_phi if phi is None else phi
        x_mean = v["x_num"] / dof_w if dof_w > 0 else math.nan
        if v["iid_num"] > 0 and phi is None:
            iid = v["iid_num"] / dof_w
        elif dof_w > 0:
            f = 1.0 if math.isnan(use_phi) else min(max(use_phi, 0.0), 1.0)
            iid = sw / (f + (1.0 - f) * x_mean) if f + (1.0 - f) * x_mean > 0 else sw
        else:
            iid = math.nan
        m2 = v["m2_num"] / v["groups"] if v["groups"] > 0 else math.nan
        g2, g2_se = reliability_mean_se(v["g2_w"], v["g2_w2"], v["g2_num"], v["g2_sq"])
        return BetweenWithin(
            sigma_b2=sb,
            sigma_b2_se=sb_se,
            sigma_w2=sw,
            sigma_w2_se=sw_se,
            sigma_w2_iid=iid,
            phi=own_phi,
            x_mean=x_mean,
            M2=m2,
            groups=v["groups"],
            G2=g2,
            G2_se=g2_se,
            sigma_b2_design=bd,
            sigma_b2_design_se=bd_se,
            sigma_b2_dof=dof_b,
        )

    def set_reference(self, sigma_b2: float, sigma_w2: float, sigma_b2_design: float | None = None,
                      se: tuple[float, float, float] | None = None) -> None:  # fmt: skip
        """Weight the between estimates of the steps to come by ``d / (sigma_B^2 + sigma_W^2 / K)^2``, their
        precision under these estimates (docs/theory.md §7.10; a controller sets them at each refit from the
        statistics it decided on, the same on every rank); an outer design's by its own ``sigma_b2_design`` (default:
        ``sigma_b2``). Until a first reference, estimates are pooled by degrees of freedom; the first converts that
        pool at its mean ``1 / K``. With ``se`` (the standard errors of the three values, from the same reduced
        statistics on every rank) a scale that grew beyond them brings the held weights to it. Values that give no
        positive scale are ignored."""
        b = max(sigma_b2, 0.0) if math.isfinite(sigma_b2) else 0.0
        if not (math.isfinite(sigma_w2) and sigma_w2 > 0):
            return
        bd = b if sigma_b2_design is None or not math.isfinite(sigma_b2_design) else max(sigma_b2_design, 0.0)
        self.flush()  # held steps are weighted by the reference in force when they came
        v = self.scalars()
        for family, ref_b in (("iid", b), ("design", bd)):
            (d, d2, num, sq), prec, (f, fd, invk) = _FAMILIES[family]
            if self._ref is None and v[prec[2]] == 0 and v[d] > 0 and v[f] > 0:
                u2 = (ref_b + sigma_w2 * v[invk] / v[d]) ** 2
                pool = (v[d], v[fd], v[f], v[num], v[sq])
                self._add(prec, [x if i == 2 else x / u2 for i, x in enumerate(pool)])
            elif se is not None and self._ref is not None and v[prec[0]] > 0 and v[d] > 0:
                # The noise scale grew beyond what the reference's own errors explain: the held estimates are of a
                # smaller quantity, not more precise ones, and join the new scale (docs/theory.md §7.10).
                kappa = v[invk] / v[d]  # the held steps' mean 1 / K
                old = self._ref[0 if family == "iid" else 2] + self._ref[1] * kappa
                new = ref_b + sigma_w2 * kappa
                rel = math.hypot(se[0 if family == "iid" else 2], kappa * se[1]) / new if new > 0 else math.inf
                if old > 0 and new > old and math.log(new / old) > _SCALE_Z * rel:
                    for name in (prec[0], prec[1], prec[3], prec[4]):
                        getattr(self, name).mul_((old / new) ** 2)
        self._ref = (b, sigma_w2, bd)

    def reset(self) -> None:
        super().reset()
        self._prev = self._prev_outer = self._ref = None

    def state_dict(self) -> dict:
        out = super().state_dict()
        # Deferred steps are saved as such: taking a checkpoint must not change when they are reduced.
        out["pending"] = [{"x": x.cpu().clone(), "w": None if w is None else w.cpu().clone(), "design": d,
                           "missed": float(self._missed[i])} for i, (x, w, d) in enumerate(self._pending)]  # fmt: skip
        out["reference"] = None if self._ref is None else list(self._ref)
        out["prev"] = None if self._prev is None else {"mean": self._prev[0].cpu().clone(), "var": self._prev[1]}
        po = self._prev_outer
        out["prev_outer"] = None if po is None else {"mean": po[0].cpu().clone(), "var": po[1], "N": po[2],
                                                     "design": po[3]}  # fmt: skip
        return out

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        prev, po, ref = state.pop("prev", None), state.pop("prev_outer", None), state.pop("reference", None)
        # A checkpoint from before outer designs were weighted holds two numbers: the design's reference is sigma_B^2.
        self._ref = None if ref is None else (float(ref[0]), float(ref[1]), float(ref[2 if len(ref) > 2 else 0]))
        pending, design = state.pop("pending", []), state.pop("pending_design", None)
        super().load_state_dict(state)
        # A checkpoint from before held steps of several kinds saved one design for all of them.
        self._pending = [(torch.as_tensor(p["x"]).clone(), None if p["w"] is None else torch.as_tensor(p["w"]).clone(),
                          p.get("design", design)) for p in pending]  # fmt: skip
        self._missed[: len(pending)] = [float(p["missed"]) for p in pending]
        self._prev = None if prev is None else (torch.as_tensor(prev["mean"]).clone(), float(prev["var"]))
        self._prev_outer = None if po is None else (torch.as_tensor(po["mean"]).clone(), float(po["var"]),
                                                    int(po["N"]), str(po["design"]))  # fmt: skip


def _pooled(v: dict[str, float], family: str) -> tuple[float, float]:
    """A family's pooled between estimate and standard error: by precision, or by degrees of freedom while fewer
    than two steps are weighted (or a checkpoint predates the weights)."""
    dof, prec, _ = _FAMILIES[family]
    est, se = precision_mean_se(*(v[k] for k in prec))
    return (est, se) if math.isfinite(se) else reliability_mean_se(*(v[k] for k in dof))

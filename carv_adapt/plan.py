"""Result values (STYLE §9): the per-step :class:`Plan` and the per-refit :class:`Refit` record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from carv_adapt.errors import ShapeError
from carv_adapt.outer import OuterLayout, check_outer_design, iid_layout, layout_of, outer_seed, outer_uniforms
from carv_adapt.proposals.base import Proposal

__all__ = ["Plan", "Refit"]


@dataclass(frozen=True)
class Plan:
    """What to run this step (docs/theory.md §8).

    Attributes:
        step: the controller step this plan belongs to.
        N: outer draws. K: inner draws per outer draw.
        t: ``N x K`` long timesteps. rho: ``N x K`` float64 weights ``pi(t) / p(t)``.
        noise_seed: seed of this step's noise stream (reuse it across items for common random numbers).
        antithetic: whether :meth:`noise` pairs ``(eps, -eps)`` along ``K``.
        stratification: how the timesteps were drawn.
        cv_beta: ``N x K`` float64 control-variate coefficients fixed before the draw (docs/theory.md §14), set by
            the controller; None: no control (:meth:`controlled` returns ``f``).
        outer: the outer-draw design of :meth:`outer_uniforms` (``"iid" | "stratified" | "antithetic"``, §15).
    """

    step: int
    N: int
    K: int
    t: Tensor
    rho: Tensor
    noise_seed: int
    antithetic: bool = False
    stratification: str = "iid"
    bins: Tensor | None = field(default=None, repr=False)
    cv_beta: Tensor | None = field(default=None, repr=False)
    outer: str = "iid"

    def outer_uniforms(self, d: int = 2) -> Tensor:
        """``N x d`` float64 uniforms in ``[0, 1)`` for the outer draws under the plan's ``outer`` design
        (docs/theory.md §15): a camera sampler maps ``u[:, 0]`` to the azimuth (stratified or antipodal pairs) and
        ``u[:, 1:]`` to the other coordinates. Every row is marginally uniform; deterministic in ``noise_seed``."""
        return outer_uniforms(self.N, d, outer_seed(self.noise_seed), self.outer)

    @property
    def outer_u(self) -> Tensor:
        """The ``N x 2`` outer uniforms (azimuth, polar) of :meth:`outer_uniforms`."""
        return self.outer_uniforms(2)

    def outer_layout(self) -> OuterLayout:
        """The design and draw order the statistics pair the outer draws by (docs/theory.md §15.2)."""
        if self.outer == "iid":  # nothing to pair: skip drawing the uniforms (observe() asks every step)
            return iid_layout(self.N)
        return layout_of(self.outer_uniforms(1), self.outer)

    def noise(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """The step's ``N x K x *shape`` Gaussian noises, deterministic in ``noise_seed``.

        Drawn on the CPU from a generator seeded with ``noise_seed`` (bit-identical on every device and
        on every call, so a plan can be replayed across items), then moved to ``device``.
        """
        g = torch.Generator().manual_seed(self.noise_seed)
        shape = tuple(shape)
        if self.antithetic:
            half = (self.K + 1) // 2
            base = torch.randn((self.N, half, *shape), generator=g, dtype=dtype)
            eps = torch.stack([base, -base], dim=2).reshape(self.N, 2 * half, *shape)[:, : self.K]
        else:
            eps = torch.randn((self.N, self.K, *shape), generator=g, dtype=dtype)
        return eps.to(device) if device is not None else eps

    def replay(self, step: int | None = None) -> Plan:
        """The same draws (``t``, ``rho``, ``noise_seed`` and every other field; tensors shared) for another item,
        as step ``step``: common random numbers (docs/theory.md §18)."""
        return replace(self, step=self.step if step is None else step)

    def weights_like(self, f: Tensor) -> Tensor:
        """``rho`` cast to ``f``'s dtype/device and shaped to broadcast over ``f`` (``N x K x ...``)."""
        if tuple(f.shape[:2]) != (self.N, self.K):
            raise ShapeError(
                f"contributions have leading shape {tuple(f.shape[:2])}, plan is N x K = {(self.N, self.K)}"
            )
        return self.rho.to(device=f.device, dtype=f.dtype).reshape(self.N, self.K, *([1] * (f.dim() - 2)))

    def check_observation(
        self, contributions: Tensor | None, sq_norms: Tensor | None, probe: tuple[Tensor, ...] | None
    ) -> None:
        """Raise :class:`ShapeError` unless what a step observed fits this plan: ``N x K x ...`` contributions,
        ``N x K`` squared norms, two ``N x P`` probe gradients (and, from a per-draw probe, ``N x K`` norms)."""
        lead = (self.N, self.K)
        if contributions is not None and (contributions.dim() < 2 or tuple(contributions.shape[:2]) != lead):
            raise ShapeError(
                f"contributions: shape {tuple(contributions.shape)}, expected N x K x ... with N x K = {lead}"
            )
        if sq_norms is not None and tuple(sq_norms.shape) != lead:
            raise ShapeError(f"sq_norms: shape {tuple(sq_norms.shape)}, expected N x K = {lead}")
        if probe is not None:
            if len(probe) not in (2, 3):
                raise ShapeError(f"probe: (g_A, g_B) or (g_A, g_B, sq_norms) expected, got {len(probe)} items")
            g_a, g_b = probe[0], probe[1]
            if g_a.shape != g_b.shape or g_a.dim() != 2 or g_a.shape[0] != self.N:
                got = f"{tuple(g_a.shape)} and {tuple(g_b.shape)}"
                raise ShapeError(f"probe: two N x P gradients with N={self.N} expected, got {got}")
            if len(probe) == 3 and tuple(probe[2].shape) != lead:
                raise ShapeError(f"probe sq_norms: shape {tuple(probe[2].shape)}, expected N x K = {lead}")

    def controlled(self, f: Tensor, g: Tensor, mu_g: Tensor) -> Tensor:
        """``f - cv_beta (g - mu_g)``: the controlled ``N x K x ...`` contributions to estimate from, with ``g`` a
        surrogate on the same draws and ``mu_g`` its exact conditional mean (docs/theory.md §14). A draw with a
        non-finite ``g`` or ``mu_g`` keeps its ``f`` (``beta = 0``)."""
        from carv_adapt.control import controlled_integrand

        return controlled_integrand(f, g, mu_g, self.cv_beta)[0]

    def weighted_mean(self, f: Tensor) -> Tensor:
        """The hierarchical estimate ``1/(N K) sum_nk rho_nk f_nk`` of ``N x K x ...`` contributions (theory §2)."""
        return (self.weights_like(f) * f).mean(dim=(0, 1))


@dataclass(frozen=True)
class Refit:
    """One refit of the controller: what it saw, what it chose and what it predicts (docs/theory.md §8, §12 R8).

    ``sigma_b2`` / ``sigma_w2`` are the estimates the decision used (in ``space``), ``sigma_w2`` under the
    proposal in force before the refit; ``predicted_sigma_w2`` is the chosen policy's. ``statistics`` and
    ``state`` hold the decision's whole input (reduced statistics and the state before), so ``carv-adapt fit``
    replays the same decision function offline.
    """

    step: int
    K: int
    N: int
    proposal: list[float]
    bin_edges: list[int]
    profile: list[float]
    profile_counts: list[float]
    sigma_b2: float
    sigma_w2: float
    c_0: float
    c_out: float
    c_in: float
    predicted_W: float
    predicted_W_baseline: float
    predicted_ecm: float
    is_gain: float
    k_changed: bool
    proposal_changed: bool
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)
    num_timesteps: int | None = None
    space: str = "proxy"
    predicted_sigma_w2: float = float("nan")
    k_interval: list[int] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def resolve_stratification(stratification: str, K: int) -> str:
    """``"auto"`` means per-draw strata when ``K >= 2`` and global strata across the batch at ``K = 1``."""
    if stratification == "auto":
        return "global" if K == 1 else "stratified"
    return stratification


@dataclass(frozen=True)
class PlanDraws:
    """The timesteps, weights, bins and noise seeds of ``S`` consecutive plans of one policy, drawn at once: a
    plan's draws are a handful of calls on a few numbers, so drawing many together pays their dispatch once."""

    N: int
    K: int
    t: Tensor  # S x N x K
    rho: Tensor
    bins: Tensor | None
    seeds: tuple[int, ...]
    stratification: str
    antithetic: bool
    outer: str
    _rows: tuple = field(default=(), repr=False, compare=False)  # per-plan views, split once

    def __post_init__(self) -> None:
        bins = (None,) * len(self.seeds) if self.bins is None else self.bins.unbind(0)
        object.__setattr__(self, "_rows", tuple(zip(self.t.unbind(0), self.rho.unbind(0), bins)))

    def __len__(self) -> int:
        return len(self.seeds)

    def plan(self, i: int, step: int) -> Plan:
        """The ``i``-th plan, for controller step ``step``."""
        t, rho, bins = self._rows[i]
        return Plan(
            step=step, N=self.N, K=self.K, t=t, rho=rho, noise_seed=self.seeds[i], antithetic=self.antithetic,
            stratification=self.stratification, bins=bins, outer=self.outer,
        )  # fmt: skip

    def to_dict(self, start: int = 0) -> dict[str, Any]:
        """The plans from ``start`` on, as plain data (a controller's checkpoint keeps the ones it has not run)."""
        return {
            "N": self.N, "K": self.K, "t": self.t[start:].clone(), "rho": self.rho[start:].clone(),
            "bins": None if self.bins is None else self.bins[start:].clone(), "seeds": list(self.seeds[start:]),
            "stratification": self.stratification, "antithetic": self.antithetic, "outer": self.outer,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanDraws:
        bins = None if d["bins"] is None else torch.as_tensor(d["bins"]).long()
        t, rho = torch.as_tensor(d["t"]).long(), torch.as_tensor(d["rho"]).double()
        return cls(int(d["N"]), int(d["K"]), t, rho, bins, tuple(int(x) for x in d["seeds"]), str(d["stratification"]),
                   bool(d["antithetic"]), str(d["outer"]))  # fmt: skip


class PlanQueue:
    """Plans drawn ahead for the policy in force (identified by an object, compared by identity), one per step."""

    def __init__(self) -> None:
        self._for: object = None
        self._draws: PlanDraws | None = None
        self._used = 0

    def next(self, policy: object, step: int, draw: Callable[[], PlanDraws]) -> Plan:
        """The next plan drawn for ``policy``; ``draw()`` refills when none is left or the policy changed."""
        if self._draws is None or self._for is not policy or self._used >= len(self._draws):
            self._for, self._draws, self._used = policy, draw(), 0
        self._used += 1
        return self._draws.plan(self._used - 1, step)

    def state_dict(self, policy: object) -> dict[str, Any] | None:
        """The plans left for ``policy`` (None when there are none)."""
        if self._draws is None or self._for is not policy or self._used >= len(self._draws):
            return None
        return self._draws.to_dict(self._used)

    def load_state_dict(self, policy: object, state: dict[str, Any] | None) -> None:
        self._for, self._draws, self._used = policy, None if state is None else PlanDraws.from_dict(state), 0


def draw_plans(
    proposal: Proposal,
    N: int,
    K: int,
    generator: torch.Generator,
    count: int = 1,
    *,
    stratification: str = "auto",
    antithetic: bool = False,
    edges: Tensor | None = None,
    outer: str = "iid",
) -> PlanDraws:
    """Draw ``count`` consecutive plans: timesteps by (stratified) inverse CDF of ``proposal``, then the noise seeds.

    The one code path every sampler (controller, fixed policy, preview) goes through; with ``count = 1`` the
    generator's stream is the same as for one :func:`make_plan`. ``outer`` is the design of each plan's outer
    uniforms; their seed derives from the noise seed, so the generator's stream is the same for every design.
    """
    check_outer_design(outer)
    strat = resolve_stratification(stratification, K)
    if strat == "global":  # strata span one step's whole batch: per step
        t, rho = (torch.stack(x) for x in zip(*(proposal.sample(N, K, generator, strat) for _ in range(count))))
    else:  # per outer draw (or per draw): the steps' rows are independent
        t, rho = (x.reshape(count, N, K) for x in proposal.sample(count * N, K, generator, strat))  # type: ignore[arg-type]
    seeds = tuple(torch.randint(0, 2**62, (count,), generator=generator).tolist())
    bins = proposal.bins(t, edges) if edges is not None else None
    return PlanDraws(N, K, t, rho, bins, seeds, strat, antithetic, outer)


def make_plan(
    proposal: Proposal,
    N: int,
    K: int,
    generator: torch.Generator,
    *,
    step: int = 0,
    stratification: str = "auto",
    antithetic: bool = False,
    edges: Tensor | None = None,
    outer: str = "iid",
) -> Plan:
    """Draw one :class:`Plan` (:func:`draw_plans` with ``count = 1``)."""
    kw = dict(stratification=stratification, antithetic=antithetic, edges=edges, outer=outer)
    return draw_plans(proposal, N, K, generator, 1, **kw).plan(0, step)  # type: ignore[arg-type]


__all__ += ["make_plan", "draw_plans", "PlanDraws", "PlanQueue", "resolve_stratification"]

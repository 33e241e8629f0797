"""Bayesian optimization (BoTorch) of the policy hyper-parameters that have no closed form (docs/theory.md §9).

A GP with the *known* noise of each measured objective (``SingleTaskGP(train_Yvar=...)``) and the
noisy log-expected-improvement acquisition (``qLogNoisyExpectedImprovement``), optimized with
``optimize_acqf`` over the unit cube; integer parameters are rounded. The objective is minimized (a
work-normalized variance); the GP models ``-log W`` so that relative noise is homoscedastic-ish.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

try:
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("policy tuning needs BoTorch: pip install 'carv_adapt[botorch]'") from e

__all__ = ["Param", "Trial", "BOResult", "bayes_optimize", "DEFAULT_SPACE"]


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: ``[low, high]``, optionally integer and/or searched on a log scale."""

    name: str
    low: float
    high: float
    integer: bool = False
    log: bool = False

    def from_unit(self, u: float) -> float:
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        v = lo + min(max(u, 0.0), 1.0) * (hi - lo)
        v = math.exp(v) if self.log else v
        return float(round(v)) if self.integer else v

    def to_unit(self, v: float) -> float:
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        return ((math.log(v) if self.log else v) - lo) / (hi - lo)


DEFAULT_SPACE = (
    Param("num_bins", 5, 50, integer=True),
    Param("alpha", 0.02, 0.5, log=True),
    Param("smoothing", 0, 3, integer=True),
    Param("forgetting", 0.9, 0.999),
    Param("refit_every", 2, 30, integer=True),
    Param("k_max", 4, 64, integer=True, log=True),
)


@dataclass(frozen=True)
class Trial:
    params: dict[str, float]
    value: float
    se: float


@dataclass(frozen=True)
class BOResult:
    trials: list[Trial]

    @property
    def best(self) -> Trial:
        return min(self.trials, key=lambda t: t.value)


def bayes_optimize(
    objective: Callable[[dict[str, float]], tuple[float, float]],
    space: Sequence[Param] = DEFAULT_SPACE,
    n_trials: int = 12,
    n_init: int = 5,
    seed: int = 0,
    on_trial: Callable[[Trial], Any] | None = None,
) -> BOResult:
    """Minimize ``objective(params) -> (value > 0, standard error)`` in ``n_trials`` evaluations.

    The first ``n_init`` points are a scrambled Sobol design (seeded); each later point maximizes
    qLogNEI under a GP fitted to ``-log value`` with per-point noise ``(se / value)^2``.
    """
    d = len(space)
    gen_seed = torch.Generator().manual_seed(seed)
    torch_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen_seed))
    X = torch.quasirandom.SobolEngine(d, scramble=True, seed=torch_seed).draw(n_init).double()
    trials: list[Trial] = []

    def evaluate(u: torch.Tensor) -> torch.Tensor:
        params = {p.name: p.from_unit(float(x)) for p, x in zip(space, u)}
        value, se = objective(params)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"objective must return a finite value > 0, got {value!r} for {params}")
        trial = Trial(params, value, se)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        # Snap the stored input to what was actually evaluated (integers rounded).
        return torch.tensor([p.to_unit(params[p.name]) for p in space], dtype=torch.float64)

    xs = [evaluate(x) for x in X]
    with torch.random.fork_rng():
        torch.manual_seed(torch_seed)
        while len(trials) < n_trials:
            train_x = torch.stack(xs)
            y = torch.tensor([-math.log(t.value) for t in trials], dtype=torch.float64)[:, None]
            yvar = torch.tensor([max((t.se / t.value) ** 2, 1e-6) for t in trials], dtype=torch.float64)[:, None]
            model = SingleTaskGP(train_x, y, train_Yvar=yvar, outcome_transform=Standardize(m=1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            acq = qLogNoisyExpectedImprovement(model, X_baseline=train_x, prune_baseline=True)
            bounds = torch.stack([torch.zeros(d), torch.ones(d)]).double()
            cand, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=4, raw_samples=64)
            xs.append(evaluate(cand[0]))
    return BOResult(trials)

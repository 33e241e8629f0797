"""The diffusion-head workload (docs/theory.md §16) behind the :class:`~carv_adapt.adapters.WorkloadAdapter`
interface the demo and the benchmarks drive."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from carv_adapt.plan import Plan

__all__ = ["diffusion_head_adapter"]


def diffusion_head_adapter(seed: int, quick: bool, **config: Any) -> Any:
    """The adapter of :class:`~carv_adapt.workloads.diffusion_head.DiffusionHeadWorkload`: gradients over both
    networks, per-draw final-space gradients for pilots, output-space norms ``||(dl/dz, dl/deps_hat)||`` as the
    cheap per-draw size, the validation loss as the curve metric and a cost clock (cheap to calibrate)."""
    from carv_adapt.adapters import WorkloadAdapter
    from carv_adapt.workloads.diffusion_head import X_DIM, DiffusionHeadConfig, DiffusionHeadWorkload

    wl = DiffusionHeadWorkload(DiffusionHeadConfig(seed=seed, **{"batch_size": 8 if quick else 16, **config}))
    g = torch.Generator().manual_seed(seed + 99)
    n_per_class = 5 if quick else 20

    def estimator(state: dict[str, Tensor]) -> Any:
        m = wl.models_from_state(state)
        return lambda p: wl.gradient(m, p, g)

    def draws(state: dict[str, Tensor]) -> Any:
        m = wl.models_from_state(state)

        def fn(plan: Plan, final: bool) -> tuple[Tensor | None, Tensor]:
            if final:
                per_draw, _ = wl.per_draw_gradients(m, plan, g)
            x0, mask, y = wl.outer_batch(plan.N, g)
            d = wl.forward(m, x0, mask, y, plan.t, plan.noise((X_DIM,)))
            gz, gp = torch.autograd.grad(d.loss.sum(), [d.z_rep, d.pred])
            norms = torch.cat([gz, gp], dim=-1).norm(dim=-1).detach()
            return (per_draw if final else None), norms

        return fn

    def views(res: Any) -> Tensor:
        m = wl.models_from_state(res.final_state)
        x = wl.sample(m, torch.arange(10), torch.Generator().manual_seed(7))
        return F.interpolate(x.reshape(-1, 1, 8, 8), size=(32, 32), mode="nearest")

    def run_to_compute(step_cost: Any, budget: float, fractions: Any, **kw: Any) -> Any:
        return wl.run_to_compute(step_cost, budget, fractions, {"quality": wl.val_loss}, **kw)

    def cost_clock(path: Any, say: Any = None) -> tuple[Any, dict[str, Any]]:
        from carv_adapt.bench.head import cached_head_calibration

        return cached_head_calibration(wl, path, reps=3 if quick else 7, say=say)

    return WorkloadAdapter(
        wl,
        wl.config.batch_size,
        torch.ones(wl.teacher.num_timesteps, dtype=torch.float64),
        wl.run,
        estimator,
        draws,
        views,
        lambda res: wl.quality(wl.models_from_state(res.final_state), n_per_class)["fd"],
        "FD (lower is better)",
        space="parameter",
        run_to_compute=run_to_compute,
        curve_metric="val loss",
        higher_is_better=False,
        cost_clock=cost_clock,
    )

"""What the demo and the benchmarks need from a shipped workload, behind one small interface.

``build_adapter(name, seed, quick)`` returns a :class:`WorkloadAdapter` for ``sds3d``, ``distill`` or
``attribution``. Every function that evaluates the workload takes a parameter ``state`` (a checkpoint's
``final_state``, ignored by attribution whose teacher is frozen) and returns a function of a
:class:`~carv_adapt.plan.Plan`, so the same frozen parameters can be estimated under many policies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from carv_adapt.plan import Plan

__all__ = ["WorkloadAdapter", "build_adapter", "WORKLOADS"]

WORKLOADS = ("sds3d", "distill", "attribution", "diffusion_head")

Estimate = Callable[[Plan], Tensor]
Draws = Callable[[Plan, bool], tuple[Tensor | None, Tensor]]


@dataclass
class WorkloadAdapter:
    """A workload as the demo and the benchmarks drive it.

    Attributes:
        wl: the workload object. batch_size: its outer draws ``N`` per step. weight: ``w(t)`` (``T``-dim).
        run: ``(steps, controller=None, compute_budget=None, on_step=None, snapshot_steps=()) -> result``.
        estimator: ``state -> (plan -> P-dim final estimate)`` (the parameter gradient or the feature).
        draws: ``state -> (plan, final) -> (N x K x P per-draw final-space contributions or None,
            N x K output-space norms ||f||)``; with ``final=False`` only the cheap norms are computed.
        views, quality: ``result -> images`` / ``result -> score`` for the demo's report.
        sds_prior: whether the workload declares an SDS-type weight (the teacher-weight prior applies).
        space: where the controller takes sigma_B^2 / sigma_W^2 from for this workload.
        controller_steps: how many controller steps ``run(steps)`` takes (attribution: one per example per
            round), so the warm-up and refit schedule can be sized to the run.
        run_to_compute: ``(step_cost, budget, fractions, controller=None, max_steps=..., on_step=None) ->``
            :class:`~carv_adapt.workloads.base.ComputeRun`, the run of :func:`~carv_adapt.workloads.base.
            drive_to_compute` (``step_cost=None``: each step charged its measured stage seconds) whose checkpoints
            carry the score ``"quality"``: the workload's quality metric ``curve_metric`` of the parameters there
            (docs/theory.md §10).
        curve_metric, higher_is_better: the name and direction of that metric.
        outer_designs: whether ``estimator`` places its outer draws by the plan's outer uniforms ``plan.outer_u``
            (docs/theory.md §15), so outer designs apply.
        cost_clock: ``(path, say) -> (CostClock, raw medians)`` when the workload has a cost clock cheap enough
            to calibrate for a demo (cached at ``path``; docs/theory.md §3), else None.
        cv_estimator, cv_draws: when the workload ships a control variate (docs/theory.md §14): an estimator like
            ``estimator`` that applies the control to plans carrying ``cv_beta`` (and runs plain otherwise), its
            upstream draws seeded by the plan (so a plan with and without coefficients is a paired comparison), and
            ``state -> (plan -> (f, g, mu_g))``, the output-space contributions, surrogate and its exact mean.
    """

    wl: Any
    batch_size: int
    weight: Tensor
    run: Callable[..., Any]
    estimator: Callable[[dict[str, Tensor]], Estimate]
    draws: Callable[[dict[str, Tensor]], Draws]
    views: Callable[[Any], Tensor] | None
    quality: Callable[[Any], float | None]
    quality_name: str
    sds_prior: bool = False
    space: str = "parameter"
    controller_steps: Callable[[int], int] = lambda steps: steps
    run_to_compute: Callable[..., Any] | None = None
    curve_metric: str = ""
    higher_is_better: bool = True
    cost_clock: Callable[[Any, Any], tuple[Any, dict[str, Any]]] | None = None
    cv_estimator: Callable[[dict[str, Tensor]], Estimate] | None = None
    cv_draws: Callable[[dict[str, Tensor]], Callable[[Plan], tuple[Tensor, Tensor, Tensor]]] | None = None
    outer_designs: bool = False


def _per_draw_vjp(output: Tensor, params: list[Tensor], f: Tensor) -> Tensor:
    """``K x P`` vector-Jacobian products of one outer draw's ``1 x ...`` output with each of ``f``'s ``K``
    rows (``1 x K x ...``): the per-draw contributions in parameter space (docs/theory.md §7)."""
    rows = []
    for k in range(f.shape[1]):
        grads = torch.autograd.grad(output, params, grad_outputs=f[:, k], retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]))
    return torch.stack(rows)


def _sds3d(seed: int, quick: bool, **config: Any) -> WorkloadAdapter:
    from carv_adapt.workloads.render import front_cameras, render, sample_cameras
    from carv_adapt.workloads.sds3d import SDS3DConfig, SDS3DWorkload

    kw: dict[str, Any] = {"grid_size": 12 if quick else 20, "samples_per_ray": 16 if quick else 32, **config}
    wl = SDS3DWorkload(SDS3DConfig(seed=seed, **kw))
    g = torch.Generator().manual_seed(seed + 99)

    def estimator(state: dict[str, Tensor]) -> Estimate:
        scene = wl.scene_from_state(state)
        return lambda p: wl.gradient(scene, p, g)

    def draws(state: dict[str, Tensor]) -> Draws:
        scene = wl.scene_from_state(state)
        params = list(scene.parameters())

        def fn(plan: Plan, final: bool) -> tuple[Tensor | None, Tensor]:
            eps: Tensor | None = None  # the latent shape is known after the first encode
            rows, norms = [], []
            for n in range(plan.N):
                _, lat = wl.upstream(scene, 1, g)
                if eps is None:
                    eps = plan.noise(lat.shape[1:])
                f = wl.integrand(lat, plan.t[n : n + 1], eps[n : n + 1])
                norms.append(f.flatten(2).norm(dim=-1)[0])
                if final:
                    rows.append(_per_draw_vjp(lat, params, f))
            return (torch.stack(rows) if final else None), torch.stack(norms)

        return fn

    def views(res: Any) -> Tensor:
        sc = wl.scene_from_state(res.final_state)
        cams = sample_cameras(4, torch.Generator().manual_seed(7), wl.config.max_angle_deg)
        with torch.no_grad():
            return torch.cat(
                [
                    render(sc, front_cameras(), wl.image_size, wl.config.samples_per_ray),
                    render(sc, cams, wl.image_size, wl.config.samples_per_ray),
                ]
            )

    def run_to_compute(step_cost: Any, budget: float, fractions: Any, **kw: Any) -> Any:
        return wl.run_to_compute(step_cost, budget, fractions, {"quality": wl.log_prob}, **kw)

    # The same workload with the Gaussian control variate, sharing the teacher (its surrogate is fitted on first use).
    cv_wl = wl if wl.config.control_variate == "gaussian" else None

    def controlled() -> Any:
        nonlocal cv_wl
        if cv_wl is None:
            # The same teacher object, already loaded from wl.config.teacher: the copy is told it is passed in.
            cfg = wl.config.model_copy(update={"control_variate": "gaussian", "teacher": "tiny-digits"})
            cv_wl = SDS3DWorkload(cfg, teacher=wl.teacher)
        _ = cv_wl.surrogate  # fitted now, outside any timed estimate
        return cv_wl

    def cv_estimator(state: dict[str, Tensor]) -> Estimate:
        w = controlled()
        scene = w.scene_from_state(state)
        # Cameras seeded by the plan's noise seed: the same plan with and without coefficients runs on identical
        # draws (a paired comparison), and independent plans on independent cameras.
        return lambda p: w.gradient(scene, p, torch.Generator().manual_seed(p.noise_seed ^ 0xCA3E))

    def cv_draws(state: dict[str, Tensor]) -> Callable[[Plan], tuple[Tensor, Tensor, Tensor]]:
        w = controlled()
        scene = w.scene_from_state(state)

        def fn(plan: Plan) -> tuple[Tensor, Tensor, Tensor]:
            with torch.no_grad():
                _, lat = w.upstream(scene, plan.N, g)
            eps = plan.noise(lat.shape[1:])
            return (w.integrand(lat, plan.t, eps), *w.control(lat, plan.t, eps))

        return fn

    def cost_clock(path: Any, say: Any = None) -> tuple[Any, dict[str, Any]]:
        from carv_adapt.bench.cost_clock import cached_calibration

        return cached_calibration(wl, path, reps=2 if quick else 3, say=say)

    return WorkloadAdapter(
        wl,
        wl.config.batch_size,
        wl.weight,
        wl.run,
        estimator,
        draws,
        views,
        lambda r: wl.score(wl.scene_from_state(r.final_state)),
        "p(digit)",
        sds_prior=True,
        run_to_compute=run_to_compute,
        curve_metric="log p(digit)",  # the mean over the 16 fixed views: it keeps resolving after p(digit) saturates
        cost_clock=cost_clock,
        cv_estimator=cv_estimator,
        cv_draws=cv_draws,
        outer_designs=True,
    )


def _distill(seed: int, quick: bool, **config: Any) -> WorkloadAdapter:
    from carv_adapt.workloads.distill import DistillConfig, DistillWorkload

    wl = DistillWorkload(DistillConfig(seed=seed, **{"batch_size": 2 if quick else 4, **config}))
    g = torch.Generator().manual_seed(seed + 99)

    def estimator(state: dict[str, Tensor]) -> Estimate:
        gen, fake = wl.models_from_state(state)
        return lambda p: wl.gradient(gen, fake, p, g)

    def draws(state: dict[str, Tensor]) -> Draws:
        gen, fake = wl.models_from_state(state)
        params = list(gen.parameters())

        def fn(plan: Plan, final: bool) -> tuple[Tensor | None, Tensor]:
            eps = plan.noise(wl.latent_shape)
            rows, norms = [], []
            for n in range(plan.N):
                x, y = wl.upstream(gen, 1, g)
                f = wl.integrand(fake, x, y, plan.t[n : n + 1], eps[n : n + 1])
                norms.append(f.flatten(2).norm(dim=-1)[0])
                if final:
                    rows.append(_per_draw_vjp(x, params, f))
            return (torch.stack(rows) if final else None), torch.stack(norms)

        return fn

    def views(res: Any) -> Tensor:
        gen, _ = wl.models_from_state(res.final_state)
        with torch.no_grad():
            z = torch.randn((5, *wl.latent_shape), generator=torch.Generator().manual_seed(7))
            return wl.teacher.decode(gen(z, torch.arange(5))).clamp(-1, 1)

    def fd(gen: Any) -> float:
        return wl.quality(gen, n_per_class=5 if quick else 20)["fd"]

    def run_to_compute(step_cost: Any, budget: float, fractions: Any, **kw: Any) -> Any:
        return wl.run_to_compute(step_cost, budget, fractions, {"quality": fd}, **kw)

    return WorkloadAdapter(
        wl,
        wl.config.batch_size,
        wl.weight,
        wl.run,
        estimator,
        draws,
        views,
        lambda res: fd(wl.models_from_state(res.final_state)[0]),
        "FD (lower is better)",
        run_to_compute=run_to_compute,
        curve_metric="FD",
        higher_is_better=False,
    )


def _attribution(seed: int, quick: bool, **config: Any) -> WorkloadAdapter:
    from carv_adapt.workloads.attribution import AttributionConfig, AttributionWorkload, mean_spearman

    defaults = {
        "num_train": 12 if quick else 48,
        "num_queries": 2 if quick else 6,
        "reference_outer": 3 if quick else 16,
        "reference_inner": 6 if quick else 32,
    }
    cfg = AttributionConfig(seed=seed, **{**defaults, **config})
    wl = AttributionWorkload(cfg)
    g = torch.Generator().manual_seed(seed + 99)
    index = int(wl.train_idx[0])
    reference: dict[str, Any] = {}

    def run(
        steps: int,
        controller: Any = None,
        compute_budget: float | None = None,
        on_step: Any = None,
        snapshot_steps: Any = (),
    ) -> Any:
        # "steps" are rounds over the examples (ten per round); the teacher is frozen, so there is nothing
        # to snapshot; equal compute comes from compute_budget.
        rounds = max(1, steps // 10)
        return wl.run(controller=controller, passes=rounds, compute_budget=compute_budget, on_step=on_step)

    def spearman(scores: Tensor) -> float:
        import warnings

        if "ref" not in reference:
            reference["ref"] = wl.reference()
        with warnings.catch_warnings():  # early checkpoints of a curve: examples not yet estimated tie (NaN)
            warnings.filterwarnings("ignore", message="An input array is constant")
            return mean_spearman(scores, reference["ref"].scores)

    def run_to_compute(step_cost: Any, budget: float, fractions: Any, **kw: Any) -> Any:
        return wl.run_to_compute(step_cost, budget, fractions, {"quality": spearman}, **kw)

    def draws(state: dict[str, Tensor]) -> Draws:
        def fn(plan: Plan, final: bool) -> tuple[Tensor | None, Tensor]:
            _, f = wl.feature(index, plan, g)  # contributions are already in the final (feature) space
            return (f if final else None), f.norm(dim=-1)

        return fn

    return WorkloadAdapter(
        wl,
        cfg.batch_size,
        torch.ones(wl.teacher.num_timesteps, dtype=torch.float64),
        run,
        lambda state: lambda p: wl.feature(index, p, g)[0],
        draws,
        None,
        lambda res: spearman(res.scores),
        "Spearman vs reference",
        space="proxy",
        controller_steps=lambda steps: max(1, steps // 10) * (cfg.num_train + cfg.num_queries),
        run_to_compute=run_to_compute,
        curve_metric="Spearman",
    )


def _diffusion_head(seed: int, quick: bool, **config: Any) -> WorkloadAdapter:
    from carv_adapt.head_adapter import diffusion_head_adapter

    return diffusion_head_adapter(seed, quick, **config)


_BUILDERS = {"sds3d": _sds3d, "distill": _distill, "attribution": _attribution, "diffusion_head": _diffusion_head}


def build_adapter(
    name: str, seed: int = 0, quick: bool = False, teacher: str | None = None, **config: Any
) -> WorkloadAdapter:
    """The adapter of shipped workload ``name`` (``sds3d``, ``distill``, ``attribution`` or ``diffusion_head``);
    ``config`` overrides fields of the workload's config (e.g. ``resolution=64`` for ``sds3d``). ``teacher``: a
    name or a diffusers folder for :func:`~carv_adapt.teachers.load.load_teacher` (``sds3d`` only; ``None``: the
    default)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown workload {name!r}; choose one of {list(WORKLOADS)}")
    if teacher is not None:
        if name != "sds3d":
            from carv_adapt.errors import ConfigError

            raise ConfigError(f"teacher={teacher!r} applies to the sds3d workload only, not {name!r}")
        config = {**config, "teacher": str(teacher)}
    return _BUILDERS[name](seed, quick, **config)

"""carv_adapt quickstart: wrap a score-distillation loop with the adaptive controller.

A tiny "scene" (a 16x16 image parameter) is seen through random cameras by a differentiable renderer
(affine warp at 64x64 plus a blur, then pooled to 8x8: the expensive upstream stage), and pulled toward
what an analytic diffusion teacher likes (a Gaussian around a ring pattern) with the SDS gradient.
Lines marked ``# carv`` are the ones the controller adds to a plain SDS loop.

    python examples/quickstart.py [--steps 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from carv_adapt import AdaptiveController, HierarchicalEstimator, UniformProposal
from carv_adapt.probe import split_half_probe
from carv_adapt.stats import Welford
from carv_adapt.teachers import GaussianMixtureTeacher, sds_integrand, sds_weight

R, OUT = 64, 8  # render resolution and teacher resolution


def patterns(size: int = OUT) -> torch.Tensor:
    """``3 x 64`` modes of the teacher's data: a ring, a cross and a bar, in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    ring = torch.exp(-(((xx**2 + yy**2).sqrt() - 0.6) ** 2) / 0.05)
    cross = torch.exp(-(torch.minimum(xx.abs(), yy.abs()) ** 2) / 0.05)
    bar = torch.exp(-(xx**2) / 0.08)
    return torch.stack([ring, cross, bar]).reshape(3, -1) * 2 - 1


def random_cameras(n: int, g: torch.Generator) -> torch.Tensor:
    """``n x 2 x 3`` affine cameras: a small rotation, zoom and shift around the front view."""
    ang = (torch.rand(n, generator=g) - 0.5) * 0.6
    zoom = 1 + (torch.rand(n, generator=g) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.2
    cos, sin = torch.cos(ang) * zoom, torch.sin(ang) * zoom
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def render(scene: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """``N x 64`` renders of the ``1 x 1 x 16 x 16`` scene, differentiable in the scene."""
    n = cams.shape[0]
    grid = F.affine_grid(cams, [n, 1, R, R], align_corners=False)
    img = F.grid_sample(torch.tanh(scene).expand(n, -1, -1, -1), grid, align_corners=False, padding_mode="border")
    kernel = torch.ones(1, 1, 5, 5) / 25
    for _ in range(6):  # a blur stack: the honest, per-draw cost of "rendering"
        img = F.conv2d(img, kernel, padding=2)
    return F.adaptive_avg_pool2d(img, OUT).reshape(n, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replications", type=int, default=200, help="for the measured ECM at the end")
    ap.add_argument("--oracle", action="store_true", help="also brute-force the best fixed policy")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    teacher = GaussianMixtureTeacher(torch.ones(3), patterns(), torch.full((3,), 0.3))
    weight = sds_weight(teacher.alphas_cumprod, "sigma2")
    scene = torch.zeros(1, 1, 16, 16, requires_grad=True)
    opt = torch.optim.Adam([scene], lr=0.02)

    ctrl = AdaptiveController(t_min=20, t_max=980, batch_size=4, k_max=32, space="parameter", seed=args.seed)  # carv
    for step in range(args.steps):
        plan = ctrl.plan()  # carv
        with ctrl.timer("upstream"):  # carv
            x = render(scene, random_cameras(plan.N, g))
        with ctrl.timer("teacher"):  # carv
            f = sds_integrand(teacher, x.detach(), plan.t, plan.noise(x.shape[1:]), weight)  # N x K x 64
        probe_now = step % 4 == 0 and plan.K >= 2  # carv: a parameter-space probe every 4 steps
        probe = split_half_probe(x, [scene], plan.weights_like(f) * f) if probe_now else None  # carv
        with ctrl.timer("backward"):  # carv
            opt.zero_grad()
            x.backward((plan.weights_like(f) * f).mean(dim=1) / plan.N)  # carv: rho-weighted mean over K
            opt.step()
        ctrl.observe(plan, f, probe=probe, grad=scene.grad)  # carv: the step gradient measures sigma_B^2 too
        ctrl.step()  # carv
        if step % 20 == 0 or step == args.steps - 1:
            views = render(scene.detach(), random_cameras(16, g))
            dist = float(torch.cdist(views, teacher.means.float()).min(dim=1).values.pow(2).mean() / views.shape[1])
            print(f"{ctrl.summary()}  |render - nearest mode|^2={dist:.3f}")  # carv

    def measured_W(proposal, K: int, strat: str = "auto") -> tuple[float, float]:
        """Parameter-space gradient variance x measured time per estimate, at the frozen final scene."""
        est = HierarchicalEstimator(proposal, N=4, K=K, stratification=strat, seed=K)
        acc, seconds = Welford(), 0.0
        for _ in range(args.replications):
            t0 = time.perf_counter()
            scene.grad = None
            e = est.estimate(
                lambda p: render(scene, random_cameras(p.N, g)),
                lambda xx, t, eps: sds_integrand(teacher, xx.detach(), t, eps, weight),
            )
            e.outer.backward((e.plan.weights_like(e.contributions) * e.contributions).mean(dim=1) / e.plan.N)
            seconds += time.perf_counter() - t0
            acc.update(scene.grad)
        return acc.variance() * seconds / args.replications, acc.relative_se()

    print("\nmeasured at the final scene (parameter-space variance x measured time per estimate):")
    base, base_se = measured_W(UniformProposal(ctrl.target), 1, "iid")
    ours, ours_se = measured_W(ctrl.proposal, ctrl.K)
    print(
        f"  baseline K=1 uniform: W={base:.3e} (±{100 * base_se:.0f}%)   controller K={ctrl.K}: W={ours:.3e} "
        f"(±{100 * ours_se:.0f}%)"
    )
    print(f"measured ECM = {base / ours:.2f}   (controller's own estimate {ctrl.estimated_ecm:.2f})")
    if args.oracle:
        grid = {
            (name, K): measured_W(prop, K)
            for name, prop in (("uniform", UniformProposal(ctrl.target)), ("learned", ctrl.proposal))
            for K in (1, 2, 4, 8, 16, 32)
        }
        (name, K), (best, _) = min(grid.items(), key=lambda kv: kv[1][0])
        print(
            f"oracle (best fixed policy by brute force): {name} K={K}, ECM = {base / best:.2f}; "
            f"adaptive / oracle = {best / ours:.2f}"
        )
    if not math.isfinite(base / ours):
        raise SystemExit("measurement failed")


if __name__ == "__main__":
    main()

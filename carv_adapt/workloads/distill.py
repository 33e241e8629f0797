"""Workload: single-step distillation with the distribution-matching gradient (DMD-style, docs/theory.md §1).

A one-step generator maps noise and a class label to a teacher latent. Its gradient is the expectation over
``(t, eps)`` of the score difference at the noised sample: ``f = w(t) (eps_real - eps_fake)`` with the real
epsilon from the frozen teacher (classifier-free guidance) and the fake one from a denoiser trained online
on generator samples (initialised from the teacher, as in DMD). Outer draw = one generator sample (forward
and backward through the generator); inner draw = one noise level and noise scored by both denoisers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from carv_adapt.controller import AdaptiveController
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan
from carv_adapt.teachers.base import Teacher
from carv_adapt.teachers.gaussian import sds_weight
from carv_adapt.workloads.base import (
    ComputeRun,
    RunResult,
    StepRecord,
    default_policy,
    descend,
    drive,
    drive_to_compute,
)

__all__ = ["DistillConfig", "DistillWorkload", "OneStepGenerator"]


class DistillConfig(BaseModel):
    """Settings of the distillation workload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    guidance_scale: float = Field(3.0, ge=0.0)
    weight: Literal["sigma2", "ones"] = "sigma2"
    batch_size: int = Field(4, ge=1, description="generator samples N per step")
    lr: float = Field(1e-3, gt=0.0)
    fake_lr: float = Field(1e-4, gt=0.0)
    fake_updates: int = Field(1, ge=0, description="denoising steps of the fake score per generator step")
    hidden: int = Field(64, ge=8)
    t_min: int = Field(20, ge=0)
    t_max: int = Field(980, le=999)
    max_inner_batch: int | None = Field(64, ge=1)
    per_draw_probe: bool = Field(
        True, description="probe every draw's generator gradient: its output-space profile misleads (theory §7.9)"
    )
    seed: int = 0


class OneStepGenerator(nn.Module):
    """``x = z + net(z, y)``: a residual conv net from noise (``C x h x w``) and a class to a latent."""

    def __init__(self, channels: int = 4, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, 16)
        self.net = nn.Sequential(
            nn.Conv2d(channels + 16, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        e = self.embed(y)[:, :, None, None].expand(-1, -1, *z.shape[2:])
        return z + self.net(torch.cat([z, e], dim=1))


class _FakeScore(Teacher):
    """The online fake denoiser as an epsilon predictor (evaluated without a graph)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor) -> None:
        self.unet, self.alphas_cumprod = unet, alphas_cumprod

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.unet(x_t, t, class_labels=cond).sample


class DistillWorkload:
    """DMD-style distillation of the shipped tiny teacher (or any class-conditional latent teacher)."""

    def __init__(self, config: DistillConfig | None = None, teacher: Any = None) -> None:
        self.config = c = config or DistillConfig()
        if teacher is None:
            from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher
            from carv_adapt.teachers.tiny import NULL_CLASS, load_tiny_teacher

            b = load_tiny_teacher()
            teacher = DiffusersTeacher(
                b.unet,
                b.scheduler,
                b.vae,
                guidance_scale=c.guidance_scale,
                null_class=NULL_CLASS,
                max_batch=c.max_inner_batch,
            )
        self.teacher = teacher
        self.weight = sds_weight(teacher.alphas_cumprod, c.weight)
        u = teacher.unet.config
        self.latent_shape = (u.in_channels, u.sample_size, u.sample_size)
        self._metric = None

    def new_models(self) -> tuple[OneStepGenerator, nn.Module]:
        torch.manual_seed(self.config.seed)
        gen = OneStepGenerator(self.latent_shape[0], self.config.hidden)
        fake = copy.deepcopy(self.teacher.unet).train().requires_grad_(True)
        return gen, fake

    def upstream(self, gen: OneStepGenerator, N: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``N`` generator samples (attached to the generator's graph) and their labels."""
        z = torch.randn((N, *self.latent_shape), generator=g)
        y = torch.randint(0, 10, (N,), generator=g)
        return gen(z, y), y

    def integrand(self, fake: nn.Module, x: Tensor, y: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``N x K x C x h x w`` distribution-matching contributions ``w(t) (eps_real - eps_fake)``."""
        k = self.config.max_inner_batch
        real = self.teacher.eps_draws(x, t, eps, cond=y, chunk_size=k)
        was_training = fake.training
        fake.eval()
        fake_eps = _FakeScore(fake, self.teacher.alphas_cumprod).eps_draws(x, t, eps, cond=y, chunk_size=k)
        fake.train(was_training)
        w = self.weight.to(x.dtype)[t].reshape(*t.shape, 1, 1, 1)
        return w * (real - fake_eps)

    def gradient(self, gen: OneStepGenerator, fake: nn.Module, plan: Plan, g: torch.Generator) -> Tensor:
        """One hierarchical estimate of the generator gradient, flattened."""
        gen.zero_grad(set_to_none=True)
        x, y = self.upstream(gen, plan.N, g)
        f = self.integrand(fake, x, y, plan.t, plan.noise(x.shape[1:]))
        x.backward((plan.weights_like(f) * f).mean(dim=1) / plan.N)
        return torch.cat([p.grad.reshape(-1) for p in gen.parameters() if p.grad is not None]).detach().clone()

    def fake_update(
        self, fake: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, g: torch.Generator
    ) -> None:
        """One denoising step of the fake score on (detached) generator samples."""
        t = torch.randint(self.config.t_min, self.config.t_max + 1, (x.shape[0],), generator=g)
        eps = torch.randn(x.shape, generator=g)
        pred = fake(self.teacher.add_noise(x.detach(), eps, t), t, class_labels=y).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # ------------------------------------------------------------------ quality
    def quality(self, gen: OneStepGenerator, n_per_class: int = 20, seed: int = 1234) -> dict[str, float]:
        """Frechet distance to the real digits in a digits-MLP feature space (an FID analogue) and the
        classifier's accuracy on class-conditional samples decoded through the VAE."""
        from carv_adapt.workloads.digits_metrics import DigitsFeatureNet

        if self._metric is None:
            self._metric = DigitsFeatureNet.train()
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(10).repeat_interleave(n_per_class)
        with torch.no_grad():
            x = gen(torch.randn((len(y), *self.latent_shape), generator=g), y)
            imgs = self.teacher.decode(x).clamp(-1, 1)
        return {"fd": self._metric.fd_to_real(imgs), "accuracy": self._metric.accuracy(imgs, y)}

    # ------------------------------------------------------------------ training
    def run(
        self,
        steps: int,
        controller: AdaptiveController | None = None,
        policy: HierarchicalEstimator | None = None,
        compute_budget: float | None = None,
        score_every: int = 0,
        on_step: Callable[[StepRecord], None] | None = None,
        probe_every: int | None = None,
        snapshot_steps: Sequence[int] = (),
    ) -> RunResult:
        """Train the generator (and the fake score) under a controller or a fixed policy (default: baseline);
        both models' parameters after each step in ``snapshot_steps`` are kept in ``RunResult.snapshots``."""
        gen, fake = self.new_models()
        policy = default_policy(self.teacher, self.config) if controller is None and policy is None else policy
        one_step, state = self._stepper(gen, fake, controller, probe_every)
        return drive(
            steps,
            controller,
            policy,
            one_step,
            compute_budget,
            on_step,
            lambda: self.quality(gen)["fd"],
            score_every,
            state=state,
            snapshot_steps=snapshot_steps,
        )

    def run_to_compute(
        self,
        step_cost: Callable[[int, int, bool], float] | None,
        budget: float,
        fractions: Sequence[float],
        scores: dict[str, Callable[[OneStepGenerator], float]] | None = None,
        controller: AdaptiveController | None = None,
        policy: HierarchicalEstimator | None = None,
        probe_every: int | None = None,
        max_steps: int = 1_000_000,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> ComputeRun:
        """Train (as :meth:`run`) until ``budget`` compute, scoring the generator at each fraction of it
        (:func:`~carv_adapt.workloads.base.drive_to_compute`). ``step_cost(N, K, probed)`` charges each step
        (``None``: its measured stage seconds); ``scores`` are functions of the generator (e.g. the FD of
        :meth:`quality`)."""
        gen, fake = self.new_models()
        policy = default_policy(self.teacher, self.config) if controller is None and policy is None else policy
        one_step, state = self._stepper(gen, fake, controller, probe_every)
        scorers = {name: (lambda st, fn=fn: fn(self.generator_from_state(st))) for name, fn in (scores or {}).items()}
        return drive_to_compute(
            controller,
            policy,
            one_step,
            step_cost,
            budget,
            fractions,
            state=state,
            scores=scorers,
            max_steps=max_steps,
            on_step=on_step,
        )

    def _stepper(
        self, gen: OneStepGenerator, fake: nn.Module, controller: AdaptiveController | None, probe_every: int | None
    ) -> tuple[Any, Callable[[], dict[str, Tensor]]]:
        """The training step of :meth:`run` on ``gen`` and ``fake`` (their own Adams and generator), and the
        function that snapshots both models' parameters."""
        c = self.config
        params = list(gen.parameters())
        opt = torch.optim.Adam(params, lr=c.lr)
        fake_opt = torch.optim.Adam(fake.parameters(), lr=c.fake_lr)
        g = torch.Generator().manual_seed(c.seed + 1)
        probing = controller is not None and controller.config.space == "parameter"

        def one_step(plan: Plan, step: int) -> tuple[Tensor, dict[str, float], Any, float]:
            t0 = time.perf_counter()
            x, y = self.upstream(gen, plan.N, g)
            t1 = time.perf_counter()
            f = self.integrand(fake, x, y, plan.t, plan.noise(x.shape[1:]))
            t2 = time.perf_counter()
            probe, t_probe, t_back, norm = descend(
                plan,
                x,
                f,
                params,
                opt,
                probing and (controller.probe_due() if probe_every is None else step % probe_every == 0),
                per_draw=c.per_draw_probe,
            )
            t3 = time.perf_counter()
            for _ in range(c.fake_updates):
                self.fake_update(fake, fake_opt, x, y, g)
            sec = {
                "upstream": t1 - t0,
                "teacher": t2 - t1,
                "probe": t_probe,
                "backward": t_back,
                "overhead": time.perf_counter() - t3,
            }
            return f, sec, probe, norm

        def state() -> dict[str, Tensor]:
            s = {f"gen.{k}": v.detach().clone() for k, v in gen.state_dict().items()}
            s.update({f"fake.{k}": v.detach().clone() for k, v in fake.state_dict().items()})
            return s

        return one_step, state

    def generator_from_state(self, state: dict[str, Tensor]) -> OneStepGenerator:
        """The generator of a run's state (without the fake score, which quality does not need)."""
        gen = OneStepGenerator(self.latent_shape[0], self.config.hidden)
        gen.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("gen.")})
        return gen

    def models_from_state(self, state: dict[str, Tensor]) -> tuple[OneStepGenerator, nn.Module]:
        gen, fake = self.new_models()
        gen.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("gen.")})
        fake.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("fake.")})
        return gen, fake

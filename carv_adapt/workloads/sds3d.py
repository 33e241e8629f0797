"""Workload: score distillation (SDS) of a 3D voxel scene from the tiny latent digits teacher (docs/theory.md §1).

Outer draw = one random camera, its render and its VAE encode (forward, and backward through both); inner
draw = one teacher call at ``(t, eps)`` on the encoded latent. The ``K`` SDS contributions of a render are
combined before a single backward through the encoder and the renderer. Render resolution and samples per
ray vary the upstream cost honestly. Costs are measured with stage timers, never assumed.

Quality: the classifier probability of the target digit on the front and random views (:meth:`SDS3DWorkload.score`),
or, on the 16 fixed views of :data:`EVAL_POSES` (the front view and rings at polar 30, 60 and 85 degrees, where the
side views leave headroom), the mean log-probability of the target digit (:meth:`SDS3DWorkload.log_prob`) and the
mean squared pixel distance to a reference scene's renders (:meth:`SDS3DWorkload.pixel_distance`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from carv_adapt.controller import AdaptiveController
from carv_adapt.estimator import HierarchicalEstimator
from carv_adapt.plan import Plan
from carv_adapt.teachers.gaussian import sds_integrand, sds_weight
from carv_adapt.teachers.surrogate import GaussianSurrogate
from carv_adapt.workloads.base import (
    ComputeRun,
    RunResult,
    StepRecord,
    default_policy,
    descend,
    drive,
    drive_to_compute,
)
from carv_adapt.workloads.render import Cameras, VoxelScene, cameras_at, front_cameras, render, sample_cameras

__all__ = ["SDS3DConfig", "SDS3DWorkload", "RunResult", "StepRecord", "EVAL_POSES", "eval_cameras"]

TEACHER_SIZE = 32

#: ``(polar_deg, azimuth_deg)`` of the fixed evaluation views: the front view, then rings at polar 30, 60 and 85
#: degrees with 5 evenly spaced azimuths each (16 views).
EVAL_POSES: tuple[tuple[float, float], ...] = ((0.0, 0.0),) + tuple(
    (polar, 72.0 * i) for polar in (30.0, 60.0, 85.0) for i in range(5)
)


def digits_surrogate(teacher: Any, weight: Tensor, guidance_scale: float) -> GaussianSurrogate:
    """The Gaussian latent surrogate of the digits teacher: per-class (and, for ``guidance_scale != 1``, unconditional)
    diagonal Gaussians fitted to the VAE encodings of scikit-learn's digits (docs/theory.md §14)."""
    from carv_adapt.teachers.tiny import digits_dataset

    images, labels = digits_dataset(TEACHER_SIZE)
    with torch.no_grad():
        lat = torch.cat([teacher.encode(images[i : i + 256]) for i in range(0, len(images), 256)])
    gs = None if guidance_scale == 1.0 else guidance_scale
    return GaussianSurrogate.fit(lat, labels, teacher.alphas_cumprod, num_classes=10, weight=weight, guidance_scale=gs)


def _outer_u(plan: Plan) -> Tensor | None:
    """The plan's outer uniforms under a stratified or antithetic design; None under ``"iid"``, where the workload
    keeps drawing cameras from its own generator (bit-identical to runs before outer designs)."""
    return None if plan.outer == "iid" else plan.outer_u


def eval_cameras(poses: tuple[tuple[float, float], ...] = EVAL_POSES) -> Cameras:
    """The fixed evaluation cameras (default: the 16 :data:`EVAL_POSES`)."""
    return cameras_at(poses)


@lru_cache(maxsize=1)
def digit_classifier() -> Any:
    """The real-digits classifier of the quality metrics (trained once per process, read-only afterwards), trained
    with one BLAS thread: on shared cores the default thread pool can make its fit 30x slower."""
    from carv_adapt.teachers.tiny import train_digit_classifier

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        return train_digit_classifier()
    with threadpool_limits(1):
        return train_digit_classifier()


class SDS3DConfig(BaseModel):
    """Settings of the SDS-3D workload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    digit: int = Field(3, ge=0, le=9, description="the class the views should look like")
    resolution: int = Field(32, ge=8, description="render resolution (resized to the VAE's sample size)")
    samples_per_ray: int = Field(32, ge=2)
    grid_size: int = Field(20, ge=4)
    max_angle_deg: float = Field(
        25.0, ge=0.0, le=180.0, description="half-angle of the camera cone around the front view (180: whole sphere)"
    )
    min_angle_deg: float = Field(0.0, ge=0.0, le=180.0, description="inner polar angle of the camera zone (0: a cone)")
    camera_axis: Literal["front", "up"] = Field(
        "front", description="axis of the camera zone; 'up' with 60-120 degrees: 360 degree cameras about the vertical"
    )
    guidance_scale: float = Field(3.0, ge=0.0)
    weight: Literal["sigma2", "ones"] = "sigma2"
    lr: float = Field(0.05, gt=0.0)
    batch_size: int = Field(2, ge=1, description="outer draws N per step")
    t_min: int = Field(20, ge=0)
    t_max: int = Field(980, le=999)
    max_inner_batch: int | None = Field(64, ge=1, description="teacher batch cap (memory)")
    init_noise: float = Field(
        0.0, ge=0.0, description="std of seeded Gaussian noise added to the scene's raw grids at initialization"
    )
    seed: int = 0
    control_variate: Literal["none", "gaussian"] = Field(
        "none", description="'gaussian': subtract the per-class Gaussian latent surrogate (docs/theory.md §14)"
    )
    teacher: str = Field(
        "tiny-digits", description="'tiny-digits', 'sd-tiny' or a diffusers folder with a VAE (teachers.load)"
    )


class SDS3DWorkload:
    """The SDS-3D pipeline around a :class:`~carv_adapt.teachers.diffusers_teacher.DiffusersTeacher`.

    Args:
        config: workload settings.
        teacher: a teacher with a VAE whose ``cond`` is a class label; default: ``config.teacher`` loaded with the
            config's ``guidance_scale`` and ``max_inner_batch``. The scene's channels and the render size follow
            the teacher's VAE (``in_channels``, ``sample_size``).
    """

    def __init__(self, config: SDS3DConfig | None = None, teacher: Any = None) -> None:
        self.config = config or SDS3DConfig()
        if teacher is None:
            from carv_adapt.teachers.load import load_teacher

            teacher = load_teacher(
                self.config.teacher, guidance_scale=self.config.guidance_scale, max_batch=self.config.max_inner_batch
            )
        else:
            _check_passed_teacher(teacher, self.config)
        self.teacher = teacher
        vae = getattr(teacher, "vae", None)
        size = TEACHER_SIZE if vae is None else vae.config.sample_size
        self.image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.channels = 1 if vae is None else int(vae.config.in_channels)
        self.weight = sds_weight(teacher.alphas_cumprod, self.config.weight)
        self._classifier = None
        self._surrogate: GaussianSurrogate | None = None

    @property
    def surrogate(self) -> GaussianSurrogate | None:
        """The control variate when ``control_variate="gaussian"`` (fitted once, on first use, to the encoded
        digits: per class, and unconditionally for the guidance), else None."""
        if self.config.control_variate == "gaussian" and self._surrogate is None:
            self._surrogate = digits_surrogate(self.teacher, self.weight, self.config.guidance_scale)
        return self._surrogate

    def control(self, latents: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``(g, mu_g)``, ``N x K x C x h x w``: the surrogate on the integrand's draws and its exact mean."""
        labels = torch.full((latents.shape[0],), self.config.digit, dtype=torch.long)
        return self.surrogate.evaluate(latents.detach(), t, eps, cond=labels)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ the pipeline
    def new_scene(self) -> VoxelScene:
        """The initial scene: a grey blob, plus ``init_noise`` Gaussian noise on its raw grids drawn from the seed."""
        torch.manual_seed(self.config.seed)
        scene = VoxelScene(self.config.grid_size, channels=self.channels)
        if self.config.init_noise > 0:
            g = torch.Generator().manual_seed(self.config.seed)
            with torch.no_grad():
                for p in scene.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * self.config.init_noise)
        return scene

    def cameras(self, N: int, generator: torch.Generator | None, u: Tensor | None = None) -> Cameras:
        """``N`` cameras in the configured zone, from ``generator`` or from ``N x 2`` outer uniforms ``u``."""
        c = self.config
        return sample_cameras(
            N, generator, c.max_angle_deg, u=u, min_angle_deg=c.min_angle_deg, axis=c.camera_axis
        )  # fmt: skip

    def upstream(
        self, scene: VoxelScene, N: int, generator: torch.Generator, u: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``N`` renders and their latents (both attached to the scene's graph), from random cameras or the cameras
        of ``N x 2`` outer uniforms ``u`` (a plan's ``outer_u``, docs/theory.md §15)."""
        c = self.config
        img = render(scene, self.cameras(N, generator, u), c.resolution, c.samples_per_ray)
        if c.resolution != self.image_size:
            img = F.interpolate(img, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return img, self.teacher.encode(img)

    def integrand(self, latents: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``N x K x C x h x w`` SDS contributions ``w(t) (eps_hat - eps)`` (no graph through the teacher)."""
        labels = torch.full((latents.shape[0],), self.config.digit, dtype=torch.long)
        return sds_integrand(
            self.teacher, latents.detach(), t, eps, self.weight, cond=labels, chunk_size=self.config.max_inner_batch
        )

    def gradient(self, scene: VoxelScene, plan: Plan, generator: torch.Generator) -> Tensor:
        """One hierarchical estimate of the SDS gradient w.r.t. the scene, flattened (``P``-dim)."""
        scene.zero_grad(set_to_none=True)
        _, lat = self.upstream(scene, plan.N, generator, _outer_u(plan))
        eps = plan.noise(lat.shape[1:])
        f = self.integrand(lat, plan.t, eps)
        if self.surrogate is not None and plan.cv_beta is not None:
            f = plan.controlled(f, *self.control(lat, plan.t, eps))
        lat.backward((plan.weights_like(f) * f).mean(dim=1) / plan.N)
        return torch.cat([p.grad.reshape(-1) for p in scene.parameters()]).detach().clone()

    # ------------------------------------------------------------------ quality
    def score(self, scene: VoxelScene, views: int = 8, generator: torch.Generator | None = None) -> float:
        """Mean probability a real-digits classifier gives the target digit on the front view and random views."""
        g = generator or torch.Generator().manual_seed(1234)
        c = self.config
        with torch.no_grad():
            cams = self.cameras(views, g)
            imgs = torch.cat(
                [
                    render(scene, front_cameras(), self.image_size, c.samples_per_ray),
                    render(scene, cams, self.image_size, c.samples_per_ray),
                ]
            )
        proba = self.classifier.predict_proba(_as_digits(imgs).reshape(len(imgs), -1).numpy())
        return float(proba[:, c.digit].mean())

    @property
    def classifier(self) -> Any:
        """The real-digits classifier the quality metrics use (trained on first use)."""
        if self._classifier is None:
            self._classifier = digit_classifier()
        return self._classifier

    def view_images(self, scene: VoxelScene, cameras: Cameras | None = None) -> Tensor:
        """``n x C x S x S`` renders (the VAE's channels and size) of ``scene`` from ``cameras`` (default:
        :func:`eval_cameras`), no graph."""
        with torch.no_grad():
            return render(scene, cameras or eval_cameras(), self.image_size, self.config.samples_per_ray)

    def log_prob(self, scene: VoxelScene, cameras: Cameras | None = None) -> float:
        """Mean log-probability the real-digits classifier gives the target digit over the fixed views (higher is
        better; unlike the probability it keeps resolving once a view is already recognised)."""
        imgs = self.view_images(scene, cameras)
        logp = self.classifier.predict_log_proba(_as_digits(imgs).reshape(len(imgs), -1).numpy())
        return float(logp[:, self.config.digit].mean())

    def pixel_distance(self, scene: VoxelScene, reference: Tensor, cameras: Cameras | None = None) -> float:
        """Mean squared pixel difference between the renders of ``scene`` and ``reference`` (renders of a reference
        scene from the same cameras, e.g. ``view_images(reference_scene)``); lower is better."""
        imgs = self.view_images(scene, cameras)
        if imgs.shape != reference.shape:
            raise ValueError(f"reference renders have shape {tuple(reference.shape)}, expected {tuple(imgs.shape)}")
        return float(((imgs - reference) ** 2).mean())

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
        """Train for ``steps`` steps (or until ``compute_budget`` measured seconds) under a controller or a
        fixed policy (default: the baseline ``K = 1``, uniform, i.i.d.).

        A controller with ``space="parameter"`` gets a split-half probe (2N extra vector-Jacobian products
        through the encoder and the renderer, timed as the ``probe`` stage) when ``controller.probe_due()`` says so
        (or every ``probe_every`` steps when given). The scene's parameters after each step in ``snapshot_steps``
        are kept in ``RunResult.snapshots``."""
        scene = self.new_scene()
        policy = default_policy(self.teacher, self.config) if controller is None and policy is None else policy
        one_step = self._stepper(scene, controller, probe_every)
        return drive(
            steps,
            controller,
            policy,
            one_step,
            compute_budget,
            on_step,
            lambda: self.score(scene),
            score_every,
            state=lambda: {k: v.detach().clone() for k, v in scene.state_dict().items()},
            snapshot_steps=snapshot_steps,
        )

    def _stepper(self, scene: VoxelScene, controller: AdaptiveController | None, probe_every: int | None) -> Any:
        """The training step of :meth:`run` on ``scene`` (its own Adam and camera generator)."""
        c = self.config
        params = list(scene.parameters())
        opt = torch.optim.Adam(params, lr=c.lr)
        g = torch.Generator().manual_seed(c.seed + 1)
        probing = controller is not None and controller.config.space == "parameter"

        def one_step(plan: Plan, step: int) -> tuple[Tensor, dict[str, float], Any, float, Any]:
            t0 = time.perf_counter()
            _, lat = self.upstream(scene, plan.N, g, _outer_u(plan))
            t1 = time.perf_counter()
            eps = plan.noise(lat.shape[1:])
            f = self.integrand(lat, plan.t, eps)
            t2 = time.perf_counter()
            control = None if self.surrogate is None else self.control(lat, plan.t, eps)
            used = f if control is None else plan.controlled(f, *control)
            t3 = time.perf_counter()
            probe, t_probe, t_back, norm = descend(
                plan,
                lat,
                used,
                params,
                opt,
                probing and (controller.probe_due() if probe_every is None else step % probe_every == 0),
            )
            sec = {"upstream": t1 - t0, "teacher": t2 - t1, "probe": t_probe, "backward": t_back}
            if control is not None:
                sec["surrogate"] = t3 - t2
            return f, sec, probe, norm, control

        return one_step

    def run_to_compute(
        self,
        step_cost: Callable[[int, int, bool], float] | None,
        budget: float,
        fractions: Sequence[float],
        scores: dict[str, Callable[[VoxelScene], float]] | None = None,
        controller: AdaptiveController | None = None,
        policy: HierarchicalEstimator | None = None,
        probe_every: int | None = None,
        max_steps: int = 1_000_000,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> ComputeRun:
        """Train (as :meth:`run`) until ``budget`` cost-clock compute, scoring the scene at each fraction of it
        (:func:`~carv_adapt.workloads.base.drive_to_compute`). ``step_cost(N, K, probed)`` charges each step
        (``None``: its measured stage seconds); ``scores`` are functions of the scene (e.g. :meth:`log_prob`)."""
        scene = self.new_scene()
        policy = default_policy(self.teacher, self.config) if controller is None and policy is None else policy
        scorers = {name: (lambda st, fn=fn: fn(self.scene_from_state(st))) for name, fn in (scores or {}).items()}
        return drive_to_compute(
            controller,
            policy,
            self._stepper(scene, controller, probe_every),
            step_cost,
            budget,
            fractions,
            state=lambda: {k: v.detach().clone() for k, v in scene.state_dict().items()},
            scores=scorers,
            max_steps=max_steps,
            on_step=on_step,
        )

    def scene_from_state(self, state: dict[str, Tensor]) -> VoxelScene:
        scene = VoxelScene(self.config.grid_size, channels=self.channels)
        scene.load_state_dict(state)
        return scene


def _check_passed_teacher(teacher: Any, config: SDS3DConfig) -> None:
    """A passed teacher must agree with the config, which would otherwise be silently ignored."""
    from carv_adapt.errors import ConfigError

    scale = getattr(teacher, "guidance_scale", None)
    if scale is not None and float(scale) != config.guidance_scale:
        raise ConfigError(
            f"the passed teacher has guidance_scale={scale} but SDS3DConfig.guidance_scale={config.guidance_scale}; "
            "make them equal, or pass no teacher and set SDS3DConfig.teacher"
        )
    if config.teacher != "tiny-digits":
        raise ConfigError(f"pass either a teacher object or SDS3DConfig.teacher={config.teacher!r}, not both")


def _as_digits(images: Tensor) -> Tensor:
    """The real-digits classifier's input: ``n x 1 x 32 x 32`` (channels averaged, resized) from any renders."""
    if images.shape[1:] == (1, TEACHER_SIZE, TEACHER_SIZE):
        return images
    gray = images.mean(dim=1, keepdim=True)
    return F.interpolate(gray, size=(TEACHER_SIZE, TEACHER_SIZE), mode="bilinear", align_corners=False)

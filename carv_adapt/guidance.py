"""Score distillation with a text-to-image diffusers pipeline, driven by a :class:`~carv_adapt.plan.Plan`
(docs/theory.md §17).

:class:`ScoreDistillation` is the guidance object of a user's own render loop: renders (or latents) of ``N`` outer
draws in, the ``N x K`` per-draw SDS contributions (for ``controller.observe``) and a surrogate loss whose gradient
is the ``rho``-weighted hierarchical estimate out. The teacher side is a
:class:`~carv_adapt.teachers.diffusers_teacher.DiffusersTeacher` (its epsilon / v / sample conversion, one batched
CFG call and its batch cap); this module adds prompts, the weighting ``w(t)`` and the plan bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError, ShapeError
from carv_adapt.plan import Plan

__all__ = ["ScoreDistillation", "SDSOutput", "Weighting", "sds_weighting"]

Weighting = Literal["sds", "uniform", "sigma"]
_WEIGHTINGS = ("sds", "uniform", "sigma")


def sds_weighting(alphas_cumprod: Tensor, weighting: Weighting | Callable[[Tensor], Tensor] | Tensor) -> Tensor:
    """``T``-dim float64 ``w(t)`` (docs/theory.md §17).

    Args:
        alphas_cumprod: ``T``-dim ``alphabar_t``.
        weighting: ``"sds"`` (``sigma_t^2 = 1 - alphabar_t``, DreamFusion's), ``"uniform"`` (1), ``"sigma"``
            (``sigma_t``), a callable mapping ``alphabar`` (``T``-dim float64) to ``w``, or a ``T``-dim Tensor.
    """
    abar = alphas_cumprod.double().cpu()
    if isinstance(weighting, Tensor):
        w = weighting
    elif callable(weighting):
        w = weighting(abar)
    elif weighting == "sds":
        w = 1.0 - abar
    elif weighting == "uniform":
        w = torch.ones_like(abar)
    elif weighting == "sigma":
        w = (1.0 - abar).sqrt()
    else:
        raise ConfigError(f"weighting={weighting!r} is not one of {_WEIGHTINGS}, a callable or a T-dim Tensor")
    w = torch.as_tensor(w).detach().double().cpu()
    if w.shape != abar.shape or not bool(torch.isfinite(w).all()):
        raise ShapeError(f"weighting gives shape {tuple(w.shape)}; expected {abar.numel()} finite values, one per t")
    return w


@dataclass(frozen=True)
class SDSOutput:
    """What one :meth:`ScoreDistillation.__call__` produced.

    Attributes:
        latents: ``N x c x h x w`` latents (attached to the renders' graph when images were given).
        contributions: ``N x K x c x h x w`` float32 ``w(t) (eps_hat - eps)``, rho-free, no graph: pass them to
            ``controller.observe(plan, contributions)``.
        grad: ``N x c x h x w`` ``(1 / N K) sum_k rho_nk f_nk``, the estimate's gradient w.r.t. each latent.
        loss: scalar surrogate ``sum(latents * grad)``: ``loss.backward()`` sends ``grad`` into the renderer.
        control: with a control variate, ``(g, mu_g)`` on the same draws, for ``observe(plan, f, control=...)``.
    """

    latents: Tensor
    contributions: Tensor
    grad: Tensor
    loss: Tensor
    control: tuple[Tensor, Tensor] | None = None


class ScoreDistillation:
    """SDS guidance from a frozen text-to-image UNet for the ``N x K`` plan of a controller (docs/theory.md §17).

    Args:
        unet: a ``UNet2DConditionModel`` (any dtype and device; the device follows it).
        scheduler: a scheduler with ``alphas_cumprod``; its ``prediction_type`` (epsilon, v, sample) is honoured.
        vae: optional ``AutoencoderKL``: needed to pass ``images`` (encoded, differentiably, to latents).
        text_encoder, tokenizer: encode ``prompt`` / ``negative_prompt`` (when embeddings are not given).
        prompt: the text; or ``prompt_embeds`` (``L x C``, ``1 x L x C``, or ``N x L x C`` per outer draw).
        negative_prompt: the unconditional text (default ``""``); or ``negative_prompt_embeds`` (``L x C``).
        guidance_scale: CFG scale ``s >= 0``: ``eps_u + s (eps_c - eps_u)`` in one batched call (cond and uncond
            concatenated); ``s = 1`` runs the conditional model alone.
        weighting: ``w(t)``, see :func:`sds_weighting`.
        max_teacher_batch: at most this many rows per UNet call, counting the doubled CFG batch.
        encode_mode: ``"mean"`` (deterministic posterior mean) or ``"sample"`` of the VAE (then pass
            ``generator=`` to the call).
        control_variate: optional :class:`~carv_adapt.control_variate.ControlVariate` on the latents (e.g. a
            :class:`~carv_adapt.teachers.surrogate.GaussianSurrogate` fitted with this ``weight``), evaluated on the
            same ``(t, eps)``; ``control_cond`` is its per-outer-draw conditioning (e.g. the prompt's class index).
            The gradient then uses ``plan.controlled(f, g, mu_g)`` (docs/theory.md §14).
    """

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        *,
        vae: Any = None,
        text_encoder: Any = None,
        tokenizer: Any = None,
        prompt: str | None = None,
        negative_prompt: str = "",
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        guidance_scale: float = 7.5,
        weighting: Weighting | Callable[[Tensor], Tensor] | Tensor = "sds",
        max_teacher_batch: int | None = None,
        encode_mode: Literal["mean", "sample"] = "mean",
        control_variate: Any = None,
        control_cond: Any = None,
    ) -> None:
        from diffusers import UNet2DConditionModel

        from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher

        if not isinstance(unet, UNet2DConditionModel):
            raise ConfigError(f"unet must be a text-conditioned UNet2DConditionModel, got {type(unet).__name__}")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ConfigError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if encode_mode not in ("mean", "sample"):
            raise ConfigError(f"encode_mode={encode_mode!r} is not one of ('mean', 'sample')")
        self.encode_mode = encode_mode
        dim = int(unet.config.cross_attention_dim)
        if prompt_embeds is None:
            prompt_embeds = self._encode_text(text_encoder, tokenizer, prompt, "prompt")
        if negative_prompt_embeds is None and guidance_scale != 1.0:
            negative_prompt_embeds = self._encode_text(text_encoder, tokenizer, negative_prompt, "negative_prompt")
        self.prompt_embeds = _embeds(prompt_embeds, "prompt_embeds", dim, allow_batch=True)
        neg = None if negative_prompt_embeds is None else _embeds(negative_prompt_embeds, "negative_prompt_embeds", dim)
        if neg is not None and neg.shape[1:] != self.prompt_embeds.shape[1:]:
            got = f"{tuple(neg.shape)} but prompt_embeds {tuple(self.prompt_embeds.shape)}"
            raise ShapeError(f"negative_prompt_embeds has shape {got}; both need the same L x C")
        self.teacher = DiffusersTeacher(
            unet, scheduler, vae, guidance_scale=float(guidance_scale), null_embedding=neg, max_batch=max_teacher_batch
        )
        self.prompt_embeds = self.prompt_embeds.to(device=unet.device, dtype=unet.dtype)
        self.weight = sds_weighting(self.teacher.alphas_cumprod, weighting)
        self.control_variate, self.control_cond = control_variate, control_cond

    @classmethod
    def from_pipeline(cls, pipe: Any, prompt: str | None = None, **kwargs: Any) -> ScoreDistillation:
        """From a ``StableDiffusionPipeline`` (or anything with ``unet``, ``scheduler`` and optionally ``vae``,
        ``text_encoder``, ``tokenizer``); ``kwargs`` as in the constructor."""
        parts = {k: getattr(pipe, k, None) for k in ("vae", "text_encoder", "tokenizer")}
        for k in ("unet", "scheduler"):
            if getattr(pipe, k, None) is None:
                raise ConfigError(f"pipeline {type(pipe).__name__} has no {k}; pass a Stable-Diffusion-style pipeline")
        return cls(pipe.unet, pipe.scheduler, prompt=prompt, **{**parts, **kwargs})

    @staticmethod
    def _encode_text(text_encoder: Any, tokenizer: Any, text: str | None, name: str) -> Tensor:
        if text_encoder is None or tokenizer is None:
            missing = "text_encoder" if text_encoder is None else "tokenizer"
            raise ConfigError(
                f"{name}: no {missing} to encode the text; pass {name}_embeds= (or a pipeline with a text encoder)"
            )
        if text is None:
            raise ConfigError(f"{name}=None: pass the text or {name}_embeds=")
        from carv_adapt.teachers.text import encode_text

        return encode_text(tokenizer, text_encoder, [text])

    @property
    def unet(self) -> Any:
        return self.teacher.unet

    @property
    def guidance_scale(self) -> float:
        return self.teacher.guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self.teacher.num_timesteps

    # ----------------------------------------------------------------- the estimate
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``N x c x h x w`` scaled VAE latents of ``N x C x H x W`` renders in ``[-1, 1]``, differentiable."""
        vae = self.teacher.vae
        if vae is None:
            raise ConfigError("images= needs a VAE: pass vae= (or a pipeline with one), or call with latents=")
        if images.dim() != 4 or images.shape[1] != vae.config.in_channels:
            raise ShapeError(
                f"images have shape {tuple(images.shape)}; the VAE expects N x {vae.config.in_channels} x H x W"
            )
        return self.teacher.encode(images, mode=self.encode_mode, generator=generator)

    def contributions(self, latents: Tensor, plan: Plan) -> Tensor:
        """``N x K x c x h x w`` float32 contributions ``w(t) (eps_hat - eps)`` at the plan's ``(t, eps)``, no graph.

        The noises are ``plan.noise(latents.shape[1:])`` (common random numbers across calls of one plan); the
        teacher runs in its own dtype, the noising and the statistics in float32.
        """
        from carv_adapt.teachers.gaussian import sds_integrand

        n = latents.shape[0]
        if tuple(plan.t.shape) != (n, plan.K):
            raise ShapeError(f"latents have N={n} rows but the plan is N x K = {tuple(plan.t.shape)}")
        if int(plan.t.max()) >= self.num_timesteps:
            raise ConfigError(f"plan timestep {int(plan.t.max())} >= the scheduler's {self.num_timesteps} steps")
        dev = self.unet.device
        x = latents.detach().to(device=dev, dtype=torch.float32)
        eps = plan.noise(x.shape[1:], device=dev, dtype=torch.float32)
        cond = self.prompt_embeds
        if cond.shape[0] == 1:
            cond = cond.expand(n, *cond.shape[1:])
        elif cond.shape[0] != n:
            raise ShapeError(f"prompt_embeds has {cond.shape[0]} rows; expected 1 or N={n} (one per outer draw)")
        return sds_integrand(self.teacher, x, plan.t.to(dev), eps, self.weight, cond=cond)

    def __call__(
        self,
        plan: Plan,
        *,
        images: Tensor | None = None,
        latents: Tensor | None = None,
        generator: torch.Generator | None = None,
        timer: Callable[[str], AbstractContextManager[Any]] | None = None,
    ) -> SDSOutput:
        """One SDS estimate for ``plan`` from ``N`` renders (``images``, encoded by the VAE) or ``latents``.

        ``timer``: e.g. ``controller.timer``; the VAE encode is timed as stage ``"upstream"`` and the UNet calls
        as ``"teacher"`` (docs/theory.md §3's ``c_out`` and ``c_in``). Returns an :class:`SDSOutput`;
        ``loss.backward()`` adds ``(1 / N K) sum_nk rho_nk f_nk`` (pulled back through the VAE and the renderer)
        to the scene's gradients; with a control variate, of the controlled ``f`` (coefficients ``plan.cv_beta``,
        the surrogate timed as stage ``"surrogate"``), and ``out.control`` goes to ``observe(..., control=)``.
        """
        if (images is None) == (latents is None):
            raise ConfigError("pass exactly one of images= or latents=")
        dev = self.unet.device
        with timer("upstream", dev) if timer is not None else nullcontext():
            lat = self.encode(images, generator) if images is not None else latents
        with timer("teacher", dev) if timer is not None else nullcontext():
            f = self.contributions(lat, plan)
        used, control = f, None
        if self.control_variate is not None:
            with timer("surrogate", dev) if timer is not None else nullcontext():
                eps = plan.noise(lat.shape[1:], device=f.device, dtype=torch.float32)  # the draws f was taken on
                g, mu = self.control_variate.evaluate(lat.detach().float(), plan.t.to(f.device), eps, self.control_cond)
                control = (g.float(), mu.float())
                used = plan.controlled(f, *control)
        grad = (plan.weights_like(used) * used).mean(dim=1) / plan.N
        grad = grad.to(device=lat.device, dtype=lat.dtype)
        return SDSOutput(latents=lat, contributions=f, grad=grad, loss=(lat * grad).sum(), control=control)


def _embeds(e: Tensor, name: str, dim: int, allow_batch: bool = False) -> Tensor:
    """Check an embedding is ``L x C`` or ``B x L x C`` with ``C = dim`` (``B = 1`` unless ``allow_batch``)."""
    e = torch.as_tensor(e).detach()
    if e.dim() == 2:
        e = e.unsqueeze(0)
    if e.dim() != 3 or e.shape[-1] != dim or (not allow_batch and e.shape[0] != 1):
        lead = "B x " if allow_batch else ""
        raise ShapeError(f"{name} has shape {tuple(e.shape)}; expected L x {dim} or {lead or '1 x '}L x {dim}")
    return e

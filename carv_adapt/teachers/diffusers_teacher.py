"""Adapter for any diffusers UNet + scheduler as a :class:`~carv_adapt.teachers.base.Teacher`.

Supports ``UNet2DModel`` (optionally class-conditional) and ``UNet2DConditionModel`` (cross-attention
conditioning), epsilon / v / sample prediction read from the scheduler's config, classifier-free
guidance in one batched call, a memory cap on the UNet batch, and an optional ``AutoencoderKL`` whose
encode is an *upstream* stage (differentiable, as the gradient flows back through it in SDS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError
from carv_adapt.teachers.base import Teacher

try:
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
    from diffusers.schedulers import DDPMScheduler
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the diffusers teacher needs diffusers: pip install 'carv_adapt[diffusers]'") from e

__all__ = ["DiffusersTeacher", "diffusers_alphas_cumprod"]


def diffusers_alphas_cumprod(scheduler: Any) -> Tensor:
    """``alphabar_t`` (float64) of any scheduler exposing ``alphas_cumprod``."""
    a = getattr(scheduler, "alphas_cumprod", None)
    if a is None:
        raise ConfigError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod (need a VP/DDPM-type one)")
    return torch.as_tensor(a).double().cpu()


class DiffusersTeacher(Teacher):
    """A frozen diffusers UNet as an epsilon predictor.

    Args:
        unet: ``UNet2DModel`` or ``UNet2DConditionModel`` (frozen here: eval mode, no grad).
        scheduler: any scheduler with ``alphas_cumprod``; its ``prediction_type`` is honoured.
        vae: optional ``AutoencoderKL``; :meth:`encode` / :meth:`decode` use its ``scaling_factor``.
        guidance_scale: classifier-free guidance scale (1 = plain conditional prediction).
        null_class: the unconditional class label (class-conditional ``UNet2DModel``).
        null_embedding: unconditional ``encoder_hidden_states`` (``1 x L x C``) for ``UNet2DConditionModel``.
        max_batch: at most this many samples per UNet call, counting the doubled CFG batch.
    """

    def __init__(
        self,
        unet: UNet2DModel | UNet2DConditionModel,
        scheduler: Any,
        vae: AutoencoderKL | None = None,
        *,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
        null_embedding: Tensor | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.scheduler = scheduler
        self.alphas_cumprod = diffusers_alphas_cumprod(scheduler)
        self.prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(f"unsupported prediction_type {self.prediction_type!r}")
        self.guidance_scale = float(guidance_scale)
        self.null_class = null_class
        self.null_embedding = null_embedding
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.is_cross_attention = isinstance(unet, UNet2DConditionModel)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> DiffusersTeacher:
        """Load a Stable-Diffusion-style folder (``unet/``, ``scheduler/``, optional ``vae/``) from a local path."""
        root = Path(path)
        if not (root / "unet" / "config.json").is_file():
            raise FileNotFoundError(f"{root} has no unet/config.json (expected a save_pretrained folder)")
        cfg = (root / "unet" / "config.json").read_text()
        unet_cls = UNet2DConditionModel if '"UNet2DConditionModel"' in cfg else UNet2DModel
        unet = unet_cls.from_pretrained(root / "unet", local_files_only=True, torch_dtype=torch_dtype).to(device)
        scheduler = DDPMScheduler.from_pretrained(root / "scheduler", local_files_only=True)
        vae = None
        if (root / "vae" / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(root / "vae", local_files_only=True, torch_dtype=torch_dtype).to(device)
        return cls(unet, scheduler, vae, **kwargs)

    # ----------------------------------------------------------------- upstream helpers
    def encode(self, images: Tensor, generator: torch.Generator | None = None, sample: bool = False) -> Tensor:
        """VAE latents ``scaling_factor * E[z | x]`` (or a sample), differentiable w.r.t. ``images``."""
        if self.vae is None:
            raise ConfigError("this teacher has no VAE; pass vae= to encode images")
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mean
        return z * float(self.vae.config.scaling_factor)

    def decode(self, latents: Tensor) -> Tensor:
        """Images from latents (inverse of :meth:`encode`'s scaling)."""
        if self.vae is None:
            raise ConfigError("this teacher has no VAE; pass vae= to decode latents")
        return self.vae.decode(latents / float(self.vae.config.scaling_factor)).sample

    # ----------------------------------------------------------------- prediction
    def _unet(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        dtype = self.unet.dtype
        if self.is_cross_attention:
            if cond is None:
                raise ConfigError("UNet2DConditionModel needs encoder_hidden_states as cond")
            return self.unet(x.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
        return self.unet(x.to(dtype), t, class_labels=cond).sample

    def _null_like(self, cond: Any, n: int) -> Any:
        if self.is_cross_attention:
            if self.null_embedding is None:
                raise ConfigError("classifier-free guidance on a UNet2DConditionModel needs null_embedding")
            return self.null_embedding.to(cond.device).expand(n, *self.null_embedding.shape[1:])
        if self.null_class is None:
            raise ConfigError("classifier-free guidance on a class-conditional UNet needs null_class")
        return torch.full((n,), self.null_class, dtype=torch.long, device=cond.device)

    def _eps_from_output(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return out
        a, s = self.alpha_sigma(t, x_t.dtype, x_t.device)
        view = (-1,) + (1,) * (x_t.dim() - 1)
        a, s = a.view(view), s.view(view)
        if self.prediction_type == "v_prediction":
            return a * out + s * x_t  # v = a eps - s x0 and x_t = a x0 + s eps
        return (x_t - a * out) / s.clamp_min(1e-8)  # "sample": out is the predicted x0

    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Epsilon prediction (``B x ...``) with CFG when ``guidance_scale != 1`` and a condition is given."""
        cfg = cond is not None and self.guidance_scale != 1.0
        per_call = self.max_batch if self.max_batch is not None else x_t.shape[0] * (2 if cfg else 1)
        step = max(1, per_call // 2) if cfg else max(1, per_call)
        outs = []
        t = t.to(x_t.device)
        for lo in range(0, x_t.shape[0], step):
            x, tt = x_t[lo : lo + step], t[lo : lo + step]
            c = None if cond is None else cond[lo : lo + step]
            if cfg:
                both = self._unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([c, self._null_like(c, len(x))]))
                out_c, out_u = both.float().chunk(2)
                eps_c, eps_u = self._eps_from_output(out_c, x.float(), tt), self._eps_from_output(out_u, x.float(), tt)
                outs.append(eps_u + self.guidance_scale * (eps_c - eps_u))
            else:
                outs.append(self._eps_from_output(self._unet(x, tt, c).float(), x.float(), tt))
        return torch.cat(outs).to(x_t.dtype)

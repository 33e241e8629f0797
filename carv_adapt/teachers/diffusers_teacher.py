"""Adapter for any diffusers UNet + scheduler as a :class:`~carv_adapt.teachers.base.Teacher`.

Supports ``UNet2DModel`` (unconditional or class-conditional) and ``UNet2DConditionModel``
(cross-attention on ``encoder_hidden_states``), epsilon / v / sample prediction read from the scheduler's
config, classifier-free guidance with cond and uncond in one batched call, a memory cap on the actual
UNet batch, and an optional ``AutoencoderKL`` whose encode is an *upstream* stage (docs/theory.md §1: differentiable,
since in SDS the gradient flows back through it into the renderer). The teacher itself never builds an
autograd graph.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from carv_adapt.errors import ConfigError, ShapeError
from carv_adapt.teachers.base import Teacher

try:
    import diffusers
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel, UNet2DModel
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the diffusers teacher needs diffusers: pip install 'carv_adapt[diffusers]'") from e

__all__ = ["DiffusersTeacher", "PredictionType", "diffusers_alphas_cumprod", "eps_from_model_output"]

PredictionType = Literal["epsilon", "v_prediction", "sample"]
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def diffusers_alphas_cumprod(scheduler: Any) -> Tensor:
    """``alphabar_t`` of any scheduler exposing ``alphas_cumprod``, as a ``T``-dim float64 CPU Tensor."""
    a = getattr(scheduler, "alphas_cumprod", None)
    if a is None:
        raise ConfigError(
            f"scheduler {type(scheduler).__name__} has no alphas_cumprod; use a VP (DDPM-type) scheduler "
            "such as DDPMScheduler, DDIMScheduler or PNDMScheduler"
        )
    return torch.as_tensor(a).detach().to(device="cpu", dtype=torch.float64)


def eps_from_model_output(
    output: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: PredictionType
) -> Tensor:
    """Convert a UNet output to an epsilon prediction on the VP schedule ``x_t = alpha_t x0 + sigma_t eps``.

    Args:
        output: ``B x ...`` model output (epsilon, velocity or predicted ``x0``).
        x_t: ``B x ...`` the noisy input the model saw.
        t: ``B``-dim long timesteps.
        alphas_cumprod: ``T``-dim ``alphabar_t``.
        prediction_type: ``"epsilon"`` (returned as is), ``"v_prediction"`` (``v = alpha eps - sigma x0``,
            so ``eps = alpha v + sigma x_t``) or ``"sample"`` (``eps = (x_t - alpha x0) / sigma``).

    Returns:
        ``B x ...`` epsilon in ``output``'s dtype.
    """
    if prediction_type == "epsilon":
        return output
    abar = alphas_cumprod.to(output.device)[t.to(output.device)]
    view = (-1,) + (1,) * (output.dim() - 1)
    a = abar.sqrt().to(output.dtype).view(view)
    s = (1.0 - abar).sqrt().to(output.dtype).view(view)
    x_t = x_t.to(output.dtype)
    if prediction_type == "v_prediction":
        return a * output + s * x_t
    if prediction_type == "sample":
        return (x_t - a * output) / s.clamp_min(1e-12)
    raise ConfigError(f"prediction_type={prediction_type!r} is not one of {_PREDICTION_TYPES}")


class DiffusersTeacher(Teacher):
    """A frozen diffusers UNet as an epsilon predictor (docs/theory.md §1's ``eps_hat``).

    The UNet (and VAE) are frozen in place: eval mode, ``requires_grad_(False)``. Inputs are moved to the
    UNet's device and dtype; predictions come back in the input's device and dtype (the conversion to
    epsilon and the guidance mix run in float32 or better).

    Args:
        unet: ``UNet2DModel`` (conditioning: ``B``-dim long class labels, or none) or
            ``UNet2DConditionModel`` (conditioning: ``B x L x C`` ``encoder_hidden_states``).
        scheduler: any scheduler with ``alphas_cumprod``; its config's ``prediction_type`` is honoured.
        vae: optional ``AutoencoderKL`` for :meth:`encode` / :meth:`decode`.
        guidance_scale: classifier-free guidance scale ``s``: ``eps_u + s (eps_c - eps_u)``; 1 = plain
            conditional prediction (one UNet pass, no null condition needed).
        null_class: unconditional class index of a class-conditional ``UNet2DModel``.
        null_embedding: unconditional ``encoder_hidden_states`` (``L x C`` or ``1 x L x C``) of a
            ``UNet2DConditionModel``.
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
        if not isinstance(unet, (UNet2DModel, UNet2DConditionModel)):
            raise ConfigError(f"unet must be a UNet2DModel or UNet2DConditionModel, got {type(unet).__name__}")
        if vae is not None and not isinstance(vae, AutoencoderKL):
            raise ConfigError(f"vae must be an AutoencoderKL, got {type(vae).__name__}")
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.scheduler = scheduler
        self.alphas_cumprod = diffusers_alphas_cumprod(scheduler)
        self.prediction_type: PredictionType = getattr(scheduler.config, "prediction_type", "epsilon")
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ConfigError(
                f"scheduler prediction_type={self.prediction_type!r} is not supported; use one of {_PREDICTION_TYPES}"
            )
        if not math.isfinite(guidance_scale):
            raise ConfigError(f"guidance_scale must be finite, got {guidance_scale!r}")
        self.guidance_scale = float(guidance_scale)
        if max_batch is not None and int(max_batch) < 1:
            raise ConfigError(f"max_batch must be >= 1 (or None for no cap), got {max_batch!r}")
        self.max_batch = None if max_batch is None else int(max_batch)
        self.is_cross_attention = isinstance(unet, UNet2DConditionModel)
        self.is_conditional = self.is_cross_attention or unet.class_embedding is not None
        self.null_class = None if null_class is None else int(null_class)
        self.null_embedding = self._check_null_embedding(null_embedding)
        if null_class is not None and (self.is_cross_attention or not self.is_conditional):
            raise ConfigError("null_class is only for a class-conditional UNet2DModel; leave it None")
        n_cls = None if self.is_cross_attention else unet.config.num_class_embeds
        if self.null_class is not None and n_cls is not None and not 0 <= self.null_class < n_cls:
            raise ConfigError(f"null_class={self.null_class} is outside the UNet's {n_cls} class embeddings")
        if self.guidance_scale != 1.0:
            if not self.is_conditional:
                raise ConfigError(f"guidance_scale={guidance_scale} needs a conditional UNet; use 1.0")
            if (self.null_embedding if self.is_cross_attention else self.null_class) is None:
                hint = "null_embedding=" if self.is_cross_attention else "null_class="
                raise ConfigError(f"guidance_scale={guidance_scale} needs the unconditional input: pass {hint}")

    def _check_null_embedding(self, null: Tensor | None) -> Tensor | None:
        if null is None:
            return None
        if not self.is_cross_attention:
            raise ConfigError("null_embedding is only for a UNet2DConditionModel; use null_class for UNet2DModel")
        null = null.detach()
        if null.dim() == 2:
            null = null.unsqueeze(0)
        dim = self.unet.config.cross_attention_dim
        if null.dim() != 3 or null.shape[0] != 1 or null.shape[-1] != dim:
            raise ShapeError(f"null_embedding has shape {tuple(null.shape)}; expected L x {dim} or 1 x L x {dim}")
        return null.to(device=self.unet.device, dtype=self.unet.dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        subfolders: tuple[str, str] | tuple[str, str, str | None] = ("unet", "scheduler", "vae"),
        guidance_scale: float = 1.0,
        null_class: int | None = None,
        null_embedding: Tensor | None = None,
        max_batch: int | None = None,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
    ) -> DiffusersTeacher:
        """Load a Stable-Diffusion-style folder written by ``save_pretrained``, from a local path only.

        Args:
            path: the root folder.
            subfolders: ``(unet, scheduler[, vae])`` folder names; the VAE is optional (``None`` or a
                missing folder means no VAE). The UNet, scheduler and VAE classes come from each
                config's ``_class_name`` (e.g. a saved ``DDIMScheduler`` loads as one).
            device, torch_dtype: where and in what dtype the models are loaded.
            guidance_scale, null_class, null_embedding, max_batch: as in the constructor.
        """
        root = Path(path)
        unet_dir, sched_dir = root / subfolders[0], root / subfolders[1]
        vae_dir = root / subfolders[2] if len(subfolders) > 2 and subfolders[2] is not None else None
        kw: dict[str, Any] = {"local_files_only": True}
        unet_cls = _saved_class(unet_dir / "config.json", (UNet2DModel, UNet2DConditionModel))
        unet = unet_cls.from_pretrained(unet_dir, torch_dtype=torch_dtype, **kw).to(device)
        scheduler = _saved_class(sched_dir / "scheduler_config.json", (SchedulerMixin,)).from_pretrained(
            sched_dir, **kw
        )
        vae = None
        if vae_dir is not None and (vae_dir / "config.json").is_file():
            vae_cls = _saved_class(vae_dir / "config.json", (AutoencoderKL,))
            vae = vae_cls.from_pretrained(vae_dir, torch_dtype=torch_dtype, **kw).to(device)
        return cls(
            unet,
            scheduler,
            vae,
            guidance_scale=guidance_scale,
            null_class=null_class,
            null_embedding=null_embedding,
            max_batch=max_batch,
        )

    # ----------------------------------------------------------------- upstream stage (differentiable)
    def encode(
        self,
        images: Tensor,
        *,
        mode: Literal["mean", "sample"] = "mean",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """VAE latents ``scaling_factor * (z - shift_factor)``, differentiable w.r.t. ``images``.

        Args:
            images: ``N x C x H x W`` images in the VAE's range (usually ``[-1, 1]``).
            mode: ``"mean"`` (the posterior mean, deterministic) or ``"sample"`` (reparameterised draw).
            generator: required for ``mode="sample"`` (randomness is explicit).

        Returns:
            ``N x c x h x w`` latents in ``images``' dtype.
        """
        vae = self._need_vae("encode images")
        dist = vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist
        if mode == "mean":
            z = dist.mean
        elif mode == "sample":
            if generator is None:
                raise ConfigError("encode(mode='sample') needs generator=torch.Generator(...)")
            z = dist.sample(generator=generator)
        else:
            raise ConfigError(f"encode mode={mode!r} is not one of ('mean', 'sample')")
        shift, scale = self._vae_affine()
        return ((z - shift) * scale).to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """Images (``N x C x H x W``, ``latents``' dtype) from latents; the inverse of :meth:`encode`'s
        scaling. Not wrapped in ``no_grad``: it is differentiable w.r.t. ``latents``."""
        vae = self._need_vae("decode latents")
        shift, scale = self._vae_affine()
        z = latents.to(device=vae.device, dtype=vae.dtype) / scale + shift
        return vae.decode(z).sample.to(latents.dtype)

    def _need_vae(self, what: str) -> AutoencoderKL:
        if self.vae is None:
            raise ConfigError(f"this teacher has no VAE; pass vae= (or a vae/ folder) to {what}")
        return self.vae

    def _vae_affine(self) -> tuple[float, float]:
        cfg = self.vae.config
        return float(cfg.get("shift_factor") or 0.0), float(cfg.get("scaling_factor") or 1.0)

    # ----------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_eps(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Epsilon prediction, guided when ``guidance_scale != 1`` and ``cond`` is given.

        Args:
            x_t: ``B x C x H x W`` noisy samples (or latents).
            t: ``B``-dim long timesteps.
            cond: ``B``-dim class labels (``UNet2DModel``), ``B x L x C`` encoder hidden states
                (``UNet2DConditionModel``), or ``None``: the unconditional prediction (null condition).

        Returns:
            ``B x C x H x W`` epsilon in ``x_t``'s dtype and device; never part of an autograd graph.
        """
        b = x_t.shape[0]
        if t.shape != (b,):
            raise ShapeError(f"predict_eps: t has shape {tuple(t.shape)}; expected ({b},) for x_t {tuple(x_t.shape)}")
        dev = self.unet.device
        x, tt = x_t.detach().to(dev), t.to(device=dev, dtype=torch.long)
        c = self._cond(cond, b)
        cfg = cond is not None and self.guidance_scale != 1.0
        if cfg:
            x, tt, c = torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([c, self._null(b)])
        elif c is None:
            c = self._null(b)
        work = torch.promote_types(x_t.dtype, torch.float32)
        eps = eps_from_model_output(self._run(x, tt, c).to(work), x, tt, self.alphas_cumprod, self.prediction_type)
        if cfg:
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + self.guidance_scale * (eps_c - eps_u)
        return eps.to(device=x_t.device, dtype=x_t.dtype)

    def _run(self, x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        """The UNet on at most ``max_batch`` rows per call."""
        step = self.max_batch or x.shape[0]
        dtype = self.unet.dtype
        outs = []
        for lo in range(0, x.shape[0], step):
            xs, ts = x[lo : lo + step].to(dtype), t[lo : lo + step]
            cs = None if c is None else c[lo : lo + step]
            if self.is_cross_attention:
                outs.append(self.unet(xs, ts, encoder_hidden_states=cs).sample)
            else:
                outs.append(self.unet(xs, ts, class_labels=cs).sample)
        return torch.cat(outs)

    def _cond(self, cond: Any, b: int) -> Tensor | None:
        if cond is None:
            return None
        if not self.is_conditional:
            raise ConfigError("this UNet2DModel is unconditional; call predict_eps with cond=None")
        dev = self.unet.device
        if self.is_cross_attention:
            c = torch.as_tensor(cond).detach().to(device=dev, dtype=self.unet.dtype)
            dim = self.unet.config.cross_attention_dim
            if c.dim() != 3 or c.shape[0] != b or c.shape[-1] != dim:
                raise ShapeError(f"cond (encoder_hidden_states) has shape {tuple(c.shape)}; expected {b} x L x {dim}")
            return c
        c = torch.as_tensor(cond).detach().to(dev)
        if c.shape != (b,):
            raise ShapeError(f"cond (class labels) has shape {tuple(c.shape)}; expected ({b},)")
        if self.unet.config.class_embed_type is None and c.is_floating_point():
            raise ConfigError(f"class labels must be integers (long), got dtype {c.dtype}")
        return c.long() if self.unet.config.class_embed_type is None else c

    def _null(self, b: int) -> Tensor | None:
        """The unconditional input for ``b`` rows (``None`` for an unconditional UNet)."""
        if not self.is_conditional:
            return None
        if self.is_cross_attention:
            if self.null_embedding is None:
                raise ConfigError("an unconditional prediction on a UNet2DConditionModel needs null_embedding=")
            return self.null_embedding.expand(b, *self.null_embedding.shape[1:])
        if self.null_class is None:
            raise ConfigError("an unconditional prediction on a class-conditional UNet2DModel needs null_class=")
        return torch.full((b,), self.null_class, dtype=torch.long, device=self.unet.device)


def _saved_class(config_file: Path, allowed: tuple[type, ...]) -> type:
    """The diffusers class named by a saved config's ``_class_name``, checked against ``allowed``."""
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; expected a folder written by save_pretrained")
    name = json.loads(config_file.read_text()).get("_class_name")
    klass = getattr(diffusers, str(name), None)
    if not (isinstance(klass, type) and issubclass(klass, allowed)):
        want = " or ".join(a.__name__ for a in allowed)
        raise ConfigError(f"{config_file} names _class_name={name!r}; expected a diffusers {want}")
    return klass

"""The shipped tiny latent teacher: a small ``AutoencoderKL`` and a class-conditional ``UNet2DModel`` on its
8x8x4 latents, trained on scikit-learn's bundled digits (upsampled to 32x32) by
``scripts/train_tiny_teacher.py``. Weights are package data, loaded offline with ``from_pretrained``.
Class 10 is the null class used for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

try:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the tiny teacher needs diffusers: pip install 'carv_adapt[diffusers]'") from e

__all__ = [
    "TINY_TEACHER_PATH",
    "NULL_CLASS",
    "TinyTeacherBundle",
    "load_tiny_teacher",
    "digits_dataset",
    "augment_digits",
    "train_digit_classifier",
    "sample_digits",
]

TINY_TEACHER_PATH = Path(__file__).resolve().parent / "tiny_digits"
NULL_CLASS = 10
IMAGE_SIZE = 32


@dataclass(frozen=True)
class TinyTeacherBundle:
    """The frozen parts of the tiny teacher."""

    vae: AutoencoderKL
    unet: UNet2DModel
    scheduler: DDPMScheduler

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def load_tiny_teacher(path: str | Path | None = None, device: str | torch.device = "cpu") -> TinyTeacherBundle:
    """Load the shipped weights (or a folder with the same layout) offline; models frozen in eval mode."""
    root = Path(path) if path is not None else TINY_TEACHER_PATH
    if not (root / "unet").is_dir():
        raise FileNotFoundError(f"no tiny teacher at {root}; run scripts/train_tiny_teacher.py --out {root}")
    kw = {"local_files_only": True, "torch_dtype": torch.float32, "low_cpu_mem_usage": False}
    vae = AutoencoderKL.from_pretrained(root / "vae", **kw).to(device).eval().requires_grad_(False)
    unet = UNet2DModel.from_pretrained(root / "unet", **kw).to(device).eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_pretrained(root / "scheduler", local_files_only=True)
    return TinyTeacherBundle(vae=vae, unet=unet, scheduler=scheduler)


def digits_dataset(size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits, upsampled: ``(images [n, 1, size, size] in [-1, 1], labels [n])``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1) * 2 - 1, torch.tensor(d.target, dtype=torch.long)


def augment_digits(x: Tensor, g: torch.Generator) -> Tensor:
    """Random shifts of up to 2 pixels and small scalings of ``n x c x h x w`` digits in ``[-1, 1]`` (keeps them
    recognisable); the teachers' training scripts use it."""
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3)
    s = 1 + (torch.rand(n, generator=g) - 0.5) * 0.15
    theta[:, 0, 0], theta[:, 1, 1] = s, s
    theta[:, :, 2] = (torch.rand(n, 2, generator=g) - 0.5) * 0.25
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def train_digit_classifier(seed: int = 0):  # -> sklearn LogisticRegression
    """A logistic-regression digit classifier on the real 32x32 digits (flattened), for quality checks."""
    from sklearn.linear_model import LogisticRegression

    x, y = digits_dataset()
    clf = LogisticRegression(max_iter=2000, C=0.05, random_state=seed)
    clf.fit(x.reshape(len(x), -1).numpy(), y.numpy())
    return clf


@torch.no_grad()
def sample_digits(
    bundle: TinyTeacherBundle,
    labels: Tensor,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Class-conditional DDIM samples decoded through the VAE: ``[n, 1, 32, 32]`` in about ``[-1, 1]``.

    DDIM runs with ``clip_sample=False``: clipping the predicted ``x0`` to [-1, 1] would ruin unit-variance
    latents.
    """
    sched = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False)
    sched.set_timesteps(num_inference_steps)
    device = bundle.unet.device
    labels = labels.to(device)
    n = labels.numel()
    lat_shape = (n, bundle.unet.config.in_channels, bundle.unet.config.sample_size, bundle.unet.config.sample_size)
    # Noise is drawn on the generator's device so a CPU generator gives the same samples on any device.
    z = torch.randn(lat_shape, generator=generator, device=generator.device if generator else "cpu").to(device)
    null = torch.full_like(labels, NULL_CLASS)
    for t in sched.timesteps:
        tt = torch.full((2 * n,), int(t), dtype=torch.long, device=device)
        out = bundle.unet(torch.cat([z, z]), tt, class_labels=torch.cat([labels, null])).sample
        cond, uncond = out.chunk(2)
        z = sched.step(uncond + guidance_scale * (cond - uncond), t, z).prev_sample
    return bundle.vae.decode(z / bundle.scaling_factor).sample.clamp(-1, 1)

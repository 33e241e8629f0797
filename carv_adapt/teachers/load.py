"""Teachers by name or folder, for the workloads, the demo and the benchmarks (``--teacher``).

``"tiny-digits"`` (the shipped class-conditional digits teacher), ``"sd-tiny"`` (the shipped Stable-Diffusion-shaped
pipeline, prompted ``"a photo of the digit <label>"``), or any local diffusers folder with a VAE: a
``StableDiffusionPipeline`` folder (``model_index.json``; prompted like sd-tiny) or a ``unet/ scheduler/ vae/``
folder with a ``UNet2DModel`` (like tiny-digits; a class-conditional one uses its last class as the null class).
Loading is offline and prints nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from carv_adapt.errors import ConfigError

__all__ = ["SHIPPED_TEACHERS", "load_teacher", "quiet_loading"]

SHIPPED_TEACHERS = ("tiny-digits", "sd-tiny")


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence diffusers' (and transformers', when installed) info logs and progress bars, restored after.

    Loading a local folder otherwise prints progress bars, an ``accelerate`` hint and a notice that torchvision is
    missing (for an image processor a Stable Diffusion pipeline imports but SDS never uses).
    """
    import diffusers

    libs = [diffusers.utils.logging]
    try:
        import transformers

        libs.append(transformers.utils.logging)
    except ImportError:  # pragma: no cover - transformers is only needed for text-conditioned teachers
        pass
    levels = [lib.get_verbosity() for lib in libs]
    bars = [lib.is_progress_bar_enabled() for lib in libs]
    for lib in libs:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bar in zip(libs, levels, bars):
            lib.set_verbosity(level)
            (lib.enable_progress_bar if bar else lib.disable_progress_bar)()


def load_teacher(
    source: str | Path = "tiny-digits",
    *,
    guidance_scale: float = 3.0,
    max_batch: int | None = None,
    device: str | torch.device = "cpu",
) -> Any:
    """A frozen teacher with a VAE (``encode`` / ``decode``) whose ``cond`` is a class label (``B``-dim long).

    Args:
        source: a name in :data:`SHIPPED_TEACHERS` or a local folder.
        guidance_scale: classifier-free guidance scale applied to the teacher.
        max_batch: at most this many rows per UNet call (counting the doubled CFG batch).
        device: where the models live.
    """
    if str(source) == "tiny-digits":
        from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher
        from carv_adapt.teachers.tiny import NULL_CLASS, load_tiny_teacher

        b = load_tiny_teacher(device=device)
        return DiffusersTeacher(
            b.unet, b.scheduler, b.vae, guidance_scale=guidance_scale, null_class=NULL_CLASS, max_batch=max_batch
        )
    if str(source) == "sd-tiny":
        from carv_adapt.teachers.sd_tiny import SD_TINY_PATH

        return _pipeline_folder(SD_TINY_PATH, guidance_scale, max_batch, device)
    root = Path(source)
    if not root.is_dir():
        raise ConfigError(f"teacher {str(source)!r} is neither one of {SHIPPED_TEACHERS} nor a folder")
    if (root / "model_index.json").is_file():
        return _pipeline_folder(root, guidance_scale, max_batch, device)
    if (root / "unet" / "config.json").is_file():
        return _unet_folder(root, guidance_scale, max_batch, device)
    raise ConfigError(f"teacher folder {str(root)!r} has neither model_index.json nor unet/config.json")


def _unet_folder(root: Path, guidance_scale: float, max_batch: int | None, device: Any) -> Any:
    from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher

    if not (root / "vae" / "config.json").is_file():
        raise ConfigError(f"teacher folder {str(root)!r} has no vae/: SDS on renders needs a VAE")
    unet_cfg = json.loads((root / "unet" / "config.json").read_text())
    if unet_cfg.get("_class_name") != "UNet2DModel":
        raise ConfigError(
            f"{root}/unet is a {unet_cfg.get('_class_name')!r}; a unet/ scheduler/ vae/ folder must hold a UNet2DModel "
            "(save a text-conditioned model as a StableDiffusionPipeline folder)"
        )
    n_cls = unet_cfg.get("num_class_embeds")
    null = None if not n_cls else int(n_cls) - 1
    if null is None and guidance_scale != 1.0:
        raise ConfigError(f"{root}/unet is unconditional: guidance_scale={guidance_scale} needs 1.0")
    with quiet_loading():
        return DiffusersTeacher.from_pretrained(
            root, guidance_scale=guidance_scale, null_class=null, max_batch=max_batch, device=device
        )


def _pipeline_folder(root: Path, guidance_scale: float, max_batch: int | None, device: Any) -> Any:
    from carv_adapt.teachers.sd_tiny import digit_prompt, load_sd_tiny
    from carv_adapt.teachers.text import TextConditionedTeacher

    pipe = load_sd_tiny(root, device=device)
    if getattr(pipe, "vae", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise ConfigError(f"pipeline folder {str(root)!r} needs a vae and a text_encoder")
    return TextConditionedTeacher(
        pipe.unet,
        pipe.scheduler,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        label_prompt=digit_prompt,
        guidance_scale=guidance_scale,
        max_batch=max_batch,
    )

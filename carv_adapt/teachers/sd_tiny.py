"""The shipped Stable-Diffusion-shaped tiny pipeline ("sd-tiny"), built in code with no downloads.

A ``CLIPTextModel`` with a tiny config and a ``CLIPTokenizer`` over the words of the captions (``vocab.json`` and
``merges.txt`` written here), a ``UNet2DConditionModel`` with cross-attention on 8x8x4 latents, an ``AutoencoderKL``
(32x32x1 digits) and a ``DDPMScheduler`` with ``scaled_linear`` betas and ``v_prediction`` -- the parts and the
folder layout of a real Stable Diffusion checkpoint, trained by ``scripts/train_sd_tiny.py`` on scikit-learn's
digits with captions such as ``"a photo of the digit three"`` (the empty caption is the CFG null condition).
Loaded the way a user loads a real checkpoint: ``StableDiffusionPipeline.from_pretrained(folder)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from carv_adapt.teachers.load import quiet_loading
from carv_adapt.teachers.text import encode_text

try:
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the sd-tiny pipeline needs diffusers and transformers: pip install 'carv_adapt[diffusers]'"
    ) from e

with quiet_loading():
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = [
    "SD_TINY_PATH",
    "DIGIT_WORDS",
    "digit_prompt",
    "build_tokenizer",
    "make_text_encoder",
    "make_unet",
    "make_scheduler",
    "make_pipeline",
    "load_sd_tiny",
    "encode_prompts",
    "sample_sd_tiny",
]

SD_TINY_PATH = Path(__file__).resolve().parent / "sd_tiny"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CAPTION_WORDS = ("a", "photo", "of", "the", "digit", *DIGIT_WORDS)
MAX_LENGTH = 8  # "<bos> a photo of the digit three <eos>" is 8 tokens
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def digit_prompt(label: int) -> str:
    """The caption of digit ``label``: ``"a photo of the digit three"``."""
    return f"a photo of the digit {DIGIT_WORDS[int(label)]}"


def build_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Write ``vocab.json`` / ``merges.txt`` for the caption words into ``folder`` and load a ``CLIPTokenizer``.

    Each word is one token: the merges join its letters left to right (``t h``, ``th r``, ...), and every
    letter and partial word is in the vocabulary, so any text in lowercase letters still tokenizes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[str] = []
    for word in _CAPTION_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if f"{left} {right}" not in merges:
                merges.append(f"{left} {right}")
            left = left + right
            vocab.setdefault(left, len(vocab))
    vocab[_BOS] = len(vocab)
    vocab[_EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH, local_files_only=True)


def make_text_encoder(tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPTextModel:
    """A 2-layer, 32-wide ``CLIPTextModel`` over ``tokenizer``'s vocabulary (seeded initialisation)."""
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(cfg)


def make_unet(cross_attention_dim: int = 32) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` on 8x8x4 latents with cross-attention at the two coarse levels."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )


def make_scheduler() -> DDPMScheduler:
    """Stable Diffusion 2.1's training schedule: ``scaled_linear`` betas, ``v_prediction``."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        steps_offset=1,
    )


def make_pipeline(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel, scheduler
) -> StableDiffusionPipeline:
    """The parts as a ``StableDiffusionPipeline`` without safety checker (what ``save_pretrained`` writes)."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def load_sd_tiny(
    path: str | Path | None = None, device: str | torch.device = "cpu", torch_dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """``StableDiffusionPipeline.from_pretrained`` on the shipped folder (or ``path``), offline, models frozen."""
    root = Path(path) if path is not None else SD_TINY_PATH
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(f"no pipeline at {root}; run scripts/train_sd_tiny.py --out {root}")
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder must never reach the network
    try:
        with quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(
                root, safety_checker=None, local_files_only=True, low_cpu_mem_usage=False
            ).to(device=device, dtype=torch_dtype)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval().requires_grad_(False)
    return pipe


def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> Tensor:
    """``B x L x C`` ``encoder_hidden_states`` of ``prompts`` (padded to the tokenizer's max length)."""
    return encode_text(tokenizer, text_encoder, prompts)


@torch.no_grad()
def sample_sd_tiny(
    pipe: Any,
    labels: Tensor,
    guidance_scale: float = 3.0,
    num_inference_steps: int = 25,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Prompted DDIM samples decoded through the VAE: ``[n, 1, 32, 32]`` in about ``[-1, 1]``.

    The loop is written out (cond + uncond in one batch) rather than calling ``pipe(...)``: the pipeline's
    image post-processing assumes RGB, and the digits are one channel.
    """
    sched = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    sched.set_timesteps(num_inference_steps)
    unet, dev = pipe.unet, pipe.unet.device
    n = labels.numel()
    cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [digit_prompt(int(y)) for y in labels])
    uncond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""] * n)
    c = torch.cat([cond, uncond]).to(unet.dtype)
    shape = (n, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    z = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu").to(dev)
    for t in sched.timesteps:
        tt = torch.full((2 * n,), int(t), dtype=torch.long, device=dev)
        out = unet(torch.cat([z, z]).to(unet.dtype), tt, encoder_hidden_states=c).sample.float()
        o_c, o_u = out.chunk(2)
        z = sched.step(o_u + guidance_scale * (o_c - o_u), t, z).prev_sample
    vae = pipe.vae
    return vae.decode((z / vae.config.scaling_factor).to(vae.dtype)).sample.float().clamp(-1, 1)

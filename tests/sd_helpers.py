"""Tiny random Stable-Diffusion-shaped parts built in code (seeded, no downloads) for the guidance tests."""

from pathlib import Path

import torch


def tiny_sd_parts(folder: Path, image_channels: int = 1, image_size: int = 16) -> dict:
    """``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler`` (``make_pipeline``'s arguments): a 2-level
    cross-attention UNet on 4 x (image_size / 2)^2 latents, a one-level VAE and sd-tiny's text side."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from carv_adapt.teachers.sd_tiny import build_tokenizer, make_scheduler, make_text_encoder

    torch.manual_seed(0)
    tok = build_tokenizer(folder)
    te = make_text_encoder(tok, seed=0).eval()
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=image_channels,
        out_channels=image_channels,
        latent_channels=4,
        sample_size=image_size,
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
    ).eval()
    return dict(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=make_scheduler())


def tiny_unet_folder(folder: Path, image_channels: int = 3, image_size: int = 16) -> Path:
    """A ``unet/ scheduler/ vae/`` folder (like tiny-digits): a class-conditional ``UNet2DModel`` (class 10 null)."""
    from diffusers import DDPMScheduler, UNet2DModel

    parts = tiny_sd_parts(folder / "tok", image_channels, image_size)
    torch.manual_seed(1)
    unet = UNet2DModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=11,
    )
    unet.save_pretrained(folder / "unet")
    parts["vae"].save_pretrained(folder / "vae")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return folder

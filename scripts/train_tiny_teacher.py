"""Train the shipped tiny latent teacher on scikit-learn's digits (no downloads).

    python scripts/train_tiny_teacher.py --out carv_adapt/teachers/tiny_digits

Stage 1: a small AutoencoderKL (32x32x1 -> 8x8x4). Stage 2: a class-conditional UNet2DModel on the VAE's
latents (scaled to unit variance, the factor stored as the VAE's ``scaling_factor``), epsilon prediction on
a 1000-step DDPM schedule, labels dropped to the null class 10 for classifier-free guidance.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

from carv_adapt.teachers.tiny import NULL_CLASS, digits_dataset
from carv_adapt.teachers.tiny import augment_digits as augment


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        sample_size=32,
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64),
    )


def make_unet() -> UNet2DModel:
    return UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(48, 96, 128),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        num_class_embeds=NULL_CLASS + 1,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("carv_adapt/teachers/tiny_digits"))
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--unet-steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x_all, y_all = digits_dataset()
    n = len(x_all)
    t0 = time.perf_counter()

    vae = make_vae()
    print(f"VAE params: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M")
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.vae_steps)
    for step in range(args.vae_steps):
        idx = torch.randint(0, n, (args.vae_batch,), generator=g)
        x = augment(x_all[idx], g)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.mse_loss(rec, x) + 1e-5 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.vae_steps - 1:
            print(f"vae {step:5d} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i : i + 256]).latent_dist.mean for i in range(0, n, 256)])
    scaling = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling)
    print(f"latent std {lat.std():.3f} -> scaling_factor {scaling:.4f}")

    unet = make_unet()
    print(f"UNet params: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M")
    noise_sched = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon", clip_sample=False
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.unet_steps, pct_start=0.05)
    for step in range(args.unet_steps):
        idx = torch.randint(0, n, (args.batch,), generator=g)
        with torch.no_grad():
            z0 = vae.encode(augment(x_all[idx], g)).latent_dist.sample(generator=g) * scaling
        y = y_all[idx].clone()
        y[torch.rand(args.batch, generator=g) < 0.1] = NULL_CLASS
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        pred = unet(noise_sched.add_noise(z0, eps, t), t, class_labels=y).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0 or step == args.unet_steps - 1:
            print(f"unet {step:5d} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    # Half precision on disk keeps the package small; load_tiny_teacher casts back to float32.
    vae.half().save_pretrained(args.out / "vae", safe_serialization=True)
    unet.half().save_pretrained(args.out / "unet", safe_serialization=True)
    noise_sched.save_pretrained(args.out / "scheduler")
    print(f"saved to {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

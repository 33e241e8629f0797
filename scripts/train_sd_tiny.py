"""Train the shipped Stable-Diffusion-shaped tiny pipeline on scikit-learn's digits (no downloads).

    OMP_NUM_THREADS=1 python scripts/train_sd_tiny.py --out carv_adapt/teachers/sd_tiny

The VAE is the shipped digits teacher's AutoencoderKL (32x32x1 -> 8x8x4, ``scaling_factor`` already fitted), so
only the text side and the denoiser are trained: a tiny ``CLIPTextModel`` and a cross-attention
``UNet2DConditionModel``, jointly, with the v-prediction loss on a ``scaled_linear`` DDPM schedule and 10% of the
captions replaced by the empty caption for classifier-free guidance. The result is written with
``StableDiffusionPipeline.save_pretrained`` (half precision on disk, loaded back as float32).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from carv_adapt.teachers.sd_tiny import (
    build_tokenizer,
    digit_prompt,
    make_pipeline,
    make_scheduler,
    make_text_encoder,
    make_unet,
)
from carv_adapt.teachers.tiny import TINY_TEACHER_PATH, digits_dataset
from carv_adapt.teachers.tiny import augment_digits as augment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("carv_adapt/teachers/sd_tiny"))
    ap.add_argument("--vae", type=Path, default=TINY_TEACHER_PATH / "vae")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=6, help="augmented copies of the digits encoded up front")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32, local_files_only=True)
    vae.eval().requires_grad_(False)
    scaling = float(vae.config.scaling_factor)
    x_all, y_all = digits_dataset()
    n = len(x_all)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    text_encoder = make_text_encoder(tokenizer, seed=args.seed)
    unet = make_unet(cross_attention_dim=text_encoder.config.hidden_size)
    scheduler = make_scheduler()
    print(
        f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.3f} M params",
        flush=True,
    )
    captions = [digit_prompt(y) for y in range(10)] + [""]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    ids = ids.input_ids  # 11 x L: row 10 is the empty (null) caption

    # The VAE is frozen: encode a few augmented copies of the digits once (posterior mean and std) and draw
    # latents from them per step, instead of re-encoding every batch (about a third of a step's compute).
    with torch.no_grad():
        mean, std, labels = [], [], []
        for _ in range(args.copies):
            for lo in range(0, n, 256):
                post = vae.encode(augment(x_all[lo : lo + 256], g)).latent_dist
                mean.append(post.mean)
                std.append(post.std)
                labels.append(y_all[lo : lo + 256])
        mean, std, labels = torch.cat(mean), torch.cat(std), torch.cat(labels)
    print(f"encoded {len(mean)} augmented digits ({time.perf_counter() - t0:.0f} s)", flush=True)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    unet.train()
    text_encoder.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(mean), (args.batch,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling
        y = labels[idx].clone()
        y[torch.rand(args.batch, generator=g) < 0.1] = 10
        # Encode the 11 distinct captions once per step, then gather: same gradient, 1/9 of the work.
        hidden = text_encoder(ids)[0][y]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        pred = unet(scheduler.add_noise(z0, eps, t), t, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(pred, scheduler.get_velocity(z0, eps, t))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    # Half precision on disk keeps the package small; load_sd_tiny casts back to float32.
    pipe = make_pipeline(vae.half(), text_encoder.eval().half(), tokenizer, unet.eval().half(), scheduler)
    pipe.save_pretrained(args.out, safe_serialization=True)
    # The slow-tokenizer files too, so transformers versions that load CLIPTokenizer from them read the folder.
    build_tokenizer(args.out / "tokenizer")
    print(f"saved to {args.out} in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""Classifier check of the shipped sd-tiny pipeline, written to a JSON file (the figures the README may quote).

    OMP_NUM_THREADS=1 python scripts/check_sd_tiny.py --out docs/bench/sd_tiny.json

Samples 5 images per digit with prompted DDIM (20 steps, seed 0) at several CFG scales and reports the accuracy of
the logistic-regression real-digits classifier of ``carv_adapt.teachers.tiny.train_digit_classifier``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from carv_adapt.teachers.sd_tiny import SD_TINY_PATH, load_sd_tiny, sample_sd_tiny
from carv_adapt.teachers.tiny import train_digit_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/sd_tiny.json"))
    ap.add_argument("--per-digit", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_sd_tiny()
    clf = train_digit_classifier()
    labels = torch.arange(10).repeat_interleave(args.per_digit)
    acc = {}
    for cfg in (1.0, 3.0, 5.0):
        g = torch.Generator().manual_seed(args.seed)
        imgs = sample_sd_tiny(pipe, labels, guidance_scale=cfg, num_inference_steps=args.steps, generator=g)
        pred = torch.as_tensor(clf.predict(imgs.reshape(len(labels), -1).numpy()))
        acc[f"{cfg:g}"] = float((pred == labels).float().mean())
    params = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("unet", "vae", "text_encoder")}
    result = {
        "command": "python scripts/check_sd_tiny.py "
        f"--per-digit {args.per_digit} --steps {args.steps} --seed {args.seed}",
        "samples": len(labels),
        "ddim_steps": args.steps,
        "accuracy_by_cfg": acc,
        "parameters": params,
        "weights_bytes": sum(f.stat().st_size for f in SD_TINY_PATH.rglob("*.safetensors")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Costs at real scale: c_0, c_out, c_in of an SD-2.1-sized UNet (random weights) over a 512 x 512 render + VAE
encode, fitted over an (N, K) grid, and where they fall on the predicted-ECM curve (docs/theory.md §3-§4).

    python benchmarks/real_scale_costs.py --out docs/bench/real_scale.json              # CPU, widths / 8
    python benchmarks/real_scale_costs.py --device cuda --dtype float16 --width-scale 1 # the real 866 M UNet
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from carv_adapt.bench.real_scale import RealScaleSettings, real_scale, real_scale_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: float16 on cuda, float32 on cpu")
    ap.add_argument("--width-scale", type=int, default=None, help="divide SD's widths by this (default: 1 cuda, 8 cpu)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--samples-per-ray", type=int, default=None, help="default: 64 on cuda, 32 on cpu")
    ap.add_argument("--Ns", default=None, help="comma-separated outer batch sizes (default 1,2 cpu; 1,2,4 cuda)")
    ap.add_argument("--Ks", default=None, help="comma-separated K (default 1,2,4 cpu; 1,4,16 cuda)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--bench", default="docs/bench/bench.json", help="the sigma ratios of the shipped teachers")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    ints = lambda text, default: tuple(int(x) for x in text.split(",")) if text else default  # noqa: E731
    s = RealScaleSettings(
        device=a.device,
        dtype=a.dtype or ("float16" if cuda else "float32"),
        width_scale=a.width_scale or (1 if cuda else 8),
        resolution=a.resolution,
        samples_per_ray=a.samples_per_ray or (64 if cuda else 32),
        Ns=ints(a.Ns, (1, 2, 4) if cuda else (1, 2)),
        Ks=ints(a.Ks, (1, 4, 16) if cuda else (1, 2, 4)),
        reps=a.reps,
        max_inner_batch=16 if cuda else 8,
    )
    t0 = time.perf_counter()
    result = real_scale(s, json.loads(Path(a.bench).read_text()), say=lambda m: print(m, flush=True))
    result["wall_seconds"] = time.perf_counter() - t0
    result["loadavg_1_5_15"] = list(os.getloadavg())  # a loaded machine inflates every stage's seconds
    result["bench"] = a.bench
    print(real_scale_markdown(result))
    fl = result["flops"]["full_width"]
    print(
        f"full width: UNet {fl['unet_params'] / 1e6:.0f} M parameters, {fl['unet_cfg'] / 1e12:.2f} TFLOP per CFG draw; "
        f"VAE encode fwd + input bwd {fl['vae_encode_fwd_bwd'] / 1e12:.2f} TFLOP per view "
        f"(ratio {result['full_width_flop_ratio_vae_over_unet']:.2f}); {result['wall_seconds']:.0f} s"
    )
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

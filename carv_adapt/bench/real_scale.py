"""Costs at real scale: ``c_0``, ``c_out``, ``c_in`` of an SD-2.1-sized teacher over a render + VAE encode.

The shipped teachers are 3.4 M parameters; a Stable Diffusion 2.1 UNet is 866 M. This benchmark builds SD 2.1's
``UNet2DConditionModel`` (block widths 320/640/1280/1280, 5/10/20/20 heads, cross-attention 1024, linear
projections) and its ``AutoencoderKL`` from configs with random weights (no downloads: only time matters) and
times SDS steps the way a user's loop runs them (docs/theory.md §3, §7.1):

- outer draw: render a ``512 x 512`` view of a voxel scene (:func:`~carv_adapt.workloads.render.render`), encode
  it to a ``4 x 64 x 64`` latent, and back-propagate a latent gradient through the encoder and the renderer (the
  VAE and the UNet are frozen: only input gradients);
- inner draw: one classifier-free-guided teacher call (conditional and unconditional in one batch of 2).

Steps run over a grid of ``(N, K)``; each step's stage seconds feed a :class:`~carv_adapt.stats.costs.CostTracker`,
the controller's own least-squares fit of ``T_out = a_out + c_out N`` and ``T_in = a_in + c_in N K`` (never a
single batch size). On a GPU the teacher and VAE run in fp16 and stages are timed by CUDA events; on a CPU the
networks are built at ``1 / width_scale`` of SD's channel widths (GroupNorm groups scaled to keep 10 channels per
group, heads kept) and the full-width costs are **extrapolated** by each network's FLOP ratio (full / reduced,
counted by ``torch.utils.flop_counter`` on the meta device), the renderer's cost kept as measured. Where those
ratios fall on the variance model's ECM curve (§3-§4) is :func:`ecm_points`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from carv_adapt.stats.costs import CostTracker, StageTimer

__all__ = [
    "RealScaleSettings",
    "sd21_unet_config",
    "sd_vae_config",
    "network_flops",
    "measure_costs",
    "ecm_points",
    "extrapolate",
    "shipped_sigmas",
    "real_scale",
    "real_scale_markdown",
]

_WIDTHS = (1, 2, 4, 8, 16)
_OUTER = {"render": "outer", "encode": "outer", "encode_backward": "outer", "render_backward": "outer"}


def _check_width(width_scale: int) -> None:
    if width_scale not in _WIDTHS:
        raise ValueError(f"width_scale must be one of {_WIDTHS}, got {width_scale!r}")


def sd21_unet_config(width_scale: int = 1) -> dict[str, Any]:
    """``UNet2DConditionModel`` kwargs of Stable Diffusion 2.1 (866 M parameters at ``width_scale=1``), every
    channel width (and the text-embedding width) divided by ``width_scale``."""
    _check_width(width_scale)
    return {
        "sample_size": 96,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": tuple(c // width_scale for c in (320, 640, 1280, 1280)),
        "layers_per_block": 2,
        "cross_attention_dim": 1024 // width_scale,
        "attention_head_dim": (5, 10, 20, 20),  # diffusers' name for SD 2.x's number of heads per block
        "use_linear_projection": True,
        "upcast_attention": True,
        "norm_num_groups": 32 // width_scale,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def sd_vae_config(width_scale: int = 1) -> dict[str, Any]:
    """``AutoencoderKL`` kwargs of Stable Diffusion's VAE (8x downsampling to 4 latent channels), widths divided by
    ``width_scale``."""
    _check_width(width_scale)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": tuple(c // width_scale for c in (128, 256, 512, 512)),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32 // width_scale,
        "sample_size": 768,
    }


def _networks(width_scale: int, device: Any = None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """The frozen UNet and VAE (random weights, seeded) on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**sd21_unet_config(width_scale))
        vae = AutoencoderKL(**sd_vae_config(width_scale))
    if device is not None and torch.device(device).type == "meta":
        return unet.eval().requires_grad_(False), vae.eval().requires_grad_(False)
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # a cast of random weights has no "modules to keep in float32" to warn about
    try:
        unet, vae = unet.to(device=device, dtype=dtype), vae.to(device=device, dtype=dtype)
    finally:
        dlog.set_verbosity(level)
    return unet.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def network_flops(width_scale: int, resolution: int = 512) -> dict[str, float]:
    """FLOPs (counted on the meta device) of one inner draw (the UNet on a CFG batch of 2 at ``resolution / 8``
    latents) and of one outer draw's VAE encode forward + input backward at ``resolution``; plus parameters."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet, vae = _networks(width_scale, "meta")
        lat = resolution // 8
        x, emb = torch.zeros(2, 4, lat, lat), torch.zeros(2, 77, unet.config.cross_attention_dim)
        img = torch.zeros(1, 3, resolution, resolution, requires_grad=True)
        with FlopCounterMode(display=False) as fu:
            unet(x, torch.zeros(2, dtype=torch.long), encoder_hidden_states=emb)
        with FlopCounterMode(display=False) as fv:
            z = vae.encode(img).latent_dist.mean
            z.backward(torch.ones_like(z))  # frozen weights: only the input gradient
    return {
        "unet_cfg": float(fu.get_total_flops()),
        "vae_encode_fwd_bwd": float(fv.get_total_flops()),
        "unet_params": float(sum(p.numel() for p in unet.parameters())),
        "vae_params": float(sum(p.numel() for p in vae.parameters())),
    }


@dataclass(frozen=True)
class RealScaleSettings:
    """What :func:`measure_costs` runs.

    Attributes:
        device, dtype: where the networks run (``"cuda"`` with ``"float16"`` for the real scale).
        width_scale: divide SD's channel widths by this (1: the real 866 M UNet).
        resolution: render size (512: 64 x 64 latents); samples_per_ray, grid_size: the renderer's.
        Ns, Ks: the ``(N, K)`` grid of steps fitted; reps: passes over the grid (after one warm-up pass).
        max_inner_batch: teacher batch cap in draws (each draw is a CFG pair).
    """

    device: str = "cpu"
    dtype: str = "float32"
    width_scale: int = 8
    resolution: int = 512
    samples_per_ray: int = 32
    grid_size: int = 64
    Ns: tuple[int, ...] = (1, 2)
    Ks: tuple[int, ...] = (1, 2, 4)
    reps: int = 2
    max_inner_batch: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _check_width(self.width_scale)
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE downsamples 8x), got {self.resolution!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if len(set(self.Ns)) < 2 or len({n * k for n in self.Ns for k in self.Ks}) < 2:
            raise ValueError(f"the cost fit needs two N and two N K values, got Ns={self.Ns!r}, Ks={self.Ks!r}")


def _trackers() -> dict[str, CostTracker]:
    """The whole-step fit and one per component (the other stages declared ``measurement``: fitted out)."""
    stages = [*_OUTER, "teacher"]

    def only(keep: Sequence[str]) -> dict[str, Any]:
        return {s: (("inner" if s == "teacher" else "outer") if s in keep else "measurement") for s in stages}

    return {
        "all": CostTracker({**_OUTER, "teacher": "inner"}),
        "render": CostTracker(only(["render", "render_backward"])),
        "vae": CostTracker(only(["encode", "encode_backward"])),
        "unet": CostTracker(only(["teacher"])),
    }


def measure_costs(s: RealScaleSettings, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run SDS steps over ``s.Ns x s.Ks`` and fit the costs; returns the fits (all stages and per component), the
    per-step stage seconds and the settings."""
    from carv_adapt.workloads.render import VoxelScene, render, sample_cameras

    dev, dtype = torch.device(s.device), getattr(torch, s.dtype)
    unet, vae = _networks(s.width_scale, dev, dtype)
    scene = VoxelScene(s.grid_size, channels=3).to(dev)
    g = torch.Generator().manual_seed(s.seed)
    emb = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(dev, dtype)
    scale = float(vae.config.scaling_factor)

    def step(N: int, K: int) -> dict[str, float]:
        timers = {name: StageTimer(dev) for name in [*_OUTER, "teacher"]}
        scene.zero_grad(set_to_none=True)
        with timers["render"]:
            img = render(scene, sample_cameras(N, g), s.resolution, s.samples_per_ray)
        with timers["encode"]:
            x = img.to(dtype).detach().requires_grad_(True)
            lat = vae.encode(x).latent_dist.mean * scale
        with timers["teacher"], torch.no_grad():
            # N x K noised latents, each scored by one CFG pair (cond + uncond in one batch), in capped chunks.
            noisy = (lat.detach()[:, None] + torch.randn((N, K, *lat.shape[1:]), generator=g).to(dev, dtype)).flatten(
                0, 1
            )
            t = torch.randint(20, 980, (N * K,), generator=g).to(dev)
            grads = []
            for i in range(0, N * K, s.max_inner_batch):
                xi, ti = noisy[i : i + s.max_inner_batch], t[i : i + s.max_inner_batch]
                n = xi.shape[0]
                e = unet(
                    torch.cat([xi, xi]), torch.cat([ti, ti]), encoder_hidden_states=emb.repeat_interleave(n, 0)
                ).sample
                grads.append(e[n:] + 7.5 * (e[:n] - e[n:]))
            grad = torch.cat(grads).reshape(N, K, *lat.shape[1:]).mean(1)
        with timers["encode_backward"]:
            (g_img,) = torch.autograd.grad(lat, x, grad.to(lat.dtype))
        with timers["render_backward"]:
            img.backward(g_img.to(img.dtype))
        return {name: t.seconds() for name, t in timers.items()}

    grid = [(N, K) for N in s.Ns for K in s.Ks]
    if say:
        say(f"warm-up pass over {grid}")
    for N, K in grid:
        step(N, K)
    trackers, rows = _trackers(), []
    for r in range(s.reps):
        for N, K in grid:
            t0 = time.perf_counter()
            sec = step(N, K)
            rows.append({"N": N, "K": K, "rep": r, "stages": sec, "wall": time.perf_counter() - t0})
            for tr in trackers.values():
                tr.update(N, K, sec)
            if say:
                say(f"N={N} K={K}: " + ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in sec.items()))
    fits = {name: asdict(tr.compute()) for name, tr in trackers.items()}
    return {"settings": asdict(s), "fits": fits, "steps": rows}


def extrapolate(measured: dict[str, Any], flops_measured: dict[str, float], flops_full: dict[str, float]) -> dict:
    """Full-width costs from reduced-width fits: the VAE's and the UNet's per-draw slopes scaled by their FLOP
    ratios (throughput per FLOP held fixed; wider layers usually run at a higher one, so this leans high), the
    renderer's kept. The intercept ``c_0`` is kept as measured: at reduced width it is mostly per-call overhead,
    which does not grow with the FLOPs."""
    f = measured["fits"]
    rv = flops_full["vae_encode_fwd_bwd"] / flops_measured["vae_encode_fwd_bwd"]
    ru = flops_full["unet_cfg"] / flops_measured["unet_cfg"]
    return {
        "c_0": f["all"]["c_0"],
        "c_out": f["render"]["c_out"] + rv * f["vae"]["c_out"],
        "c_in": ru * f["unet"]["c_in"],
        "vae_flop_ratio": rv,
        "unet_flop_ratio": ru,
    }


def ecm_points(
    c_out: float, c_in: float, sigma: dict[str, dict[str, float]], k_max: int = 64, c_0: float = 0.0, N: int = 1
) -> dict[str, dict[str, float]]:
    """Per set of statistics (``{name: {"sigma_b2", "sigma_w2", "sigma_w2_is"}}``): the predicted ECM of reuse only
    and of CARV (IS within variance) at ``c_out / c_in`` (the README curve's axis, :func:`~carv_adapt.bench.sweep.
    predicted_ecm_curve`), the continuous ``K*`` and the integer ``K`` at ``(c_out + c_0 / N) / c_in``
    (docs/theory.md §4: the fixed cost counts as outer cost at fixed batch)."""
    from carv_adapt.allocation import k_star_continuous, optimal_k
    from carv_adapt.bench.sweep import predicted_ecm_curve

    r = c_out / c_in
    r_step = (c_out + c_0 / N) / c_in
    out = {}
    for name, st in sigma.items():
        sb, sw, sw_is = st["sigma_b2"], st["sigma_w2"], st["sigma_w2_is"]
        e_reuse, k_reuse = predicted_ecm_curve(sb, sw, sw, r, k_max)
        e_carv, k_carv = predicted_ecm_curve(sb, sw, sw_is, r, k_max)
        out[name] = {
            "ratio_w_b": sw / sb,
            "cost_ratio": r,
            "ecm_reuse": e_reuse,
            "ecm_carv": e_carv,
            "K_reuse": k_reuse,
            "K_carv": k_carv,
            "k_star_continuous": k_star_continuous(sb, sw, r_step, 1.0),
            "K_with_c0": optimal_k(sb, sw, r_step, 1.0, 1, k_max),
        }
    return out


def shipped_sigmas(bench: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The statistics of ``docs/bench/bench.json``: the cost sweep's pooled SDS-3D statistics (the README curve's)
    and each ablation workload's pilot at its last checkpoint (the shipped 3.4 M digits teacher)."""
    out = {"sds3d_sweep_pooled": dict(bench["sweep"]["curve"]["pooled"])}
    for w in bench.get("ablation", []):
        p = w["checkpoints"][-1]["pilot"]
        out[f"{w['workload']}_pilot"] = {k: p[k] for k in ("sigma_b2", "sigma_w2", "sigma_w2_is")}
    return out


def real_scale(s: RealScaleSettings, bench: dict[str, Any], say: Callable[[str], None] | None = None) -> dict:
    """Measure, extrapolate to full width (when reduced), and place the costs on the ECM curve."""
    measured = measure_costs(s, say)
    fl_m = network_flops(s.width_scale, s.resolution)
    fl_1 = fl_m if s.width_scale == 1 else network_flops(1, s.resolution)
    fit = measured["fits"]["all"]
    sig = shipped_sigmas(bench)
    result: dict[str, Any] = {**measured, "flops": {"measured_width": fl_m, "full_width": fl_1}}
    result["measured"] = {**{k: fit[k] for k in ("c_0", "c_out", "c_in")}, "cost_ratio": fit["c_out"] / fit["c_in"]}
    result["ecm_measured"] = ecm_points(fit["c_out"], fit["c_in"], sig, c_0=fit["c_0"])
    if s.width_scale != 1:
        ex = extrapolate(measured, fl_m, fl_1)
        result["extrapolated"] = {**ex, "cost_ratio": ex["c_out"] / ex["c_in"]}
        result["ecm_extrapolated"] = ecm_points(ex["c_out"], ex["c_in"], sig, c_0=ex["c_0"])
    # Hardware-free reference: the networks' FLOP ratio at full width (render excluded).
    result["full_width_flop_ratio_vae_over_unet"] = fl_1["vae_encode_fwd_bwd"] / fl_1["unet_cfg"]
    return result


def real_scale_markdown(result: dict[str, Any]) -> str:
    """One table row per cost fit (measured, extrapolated) and set of statistics: costs, ratio, ECM and K."""
    s = result["settings"]
    rows = [
        "| costs | c_0 ms | c_out ms | c_in ms | c_out/c_in | statistics (σ_W²/σ_B²) | ECM reuse / CARV | K* (K) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = [("measured", f"measured, width 1/{s['width_scale']}, {s['device']} {s['dtype']}")]
    if "extrapolated" in result:
        kinds.append(("extrapolated", "extrapolated to full width by FLOPs"))
    for key, label in kinds:
        c = result[key]
        for name, p in result[f"ecm_{key}"].items():
            rows.append(
                f"| {label} | {1e3 * c['c_0']:.0f} | {1e3 * c['c_out']:.0f} | {1e3 * c['c_in']:.0f} | "
                f"{c['cost_ratio']:.2f} | {name} ({p['ratio_w_b']:.0f}) | {p['ecm_reuse']:.2f} / {p['ecm_carv']:.2f} | "
                f"{p['k_star_continuous']:.1f} ({p['K_with_c0']}) |"
            )
    return "\n".join(rows)

"""Costs at real scale: the SD-2.1-sized configs, the cost fit over an (N, K) grid, extrapolation, ECM points."""

import math

import pytest
import torch

from carv_adapt.bench.real_scale import (
    RealScaleSettings,
    ecm_points,
    extrapolate,
    measure_costs,
    sd21_unet_config,
    shipped_sigmas,
)


def test_unet_config_is_stable_diffusion_2_1_sized():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config(1))
    # SD 2.1's published UNet has 865,910,724 parameters.
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    with torch.device("meta"):
        small = UNet2DConditionModel(**sd21_unet_config(8))
    assert small.config.block_out_channels == (40, 80, 160, 160) and small.config.norm_num_groups == 4


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="width_scale"):
        RealScaleSettings(width_scale=3)
    with pytest.raises(ValueError, match="resolution"):
        RealScaleSettings(resolution=100)
    with pytest.raises(ValueError, match="two N"):
        RealScaleSettings(Ns=(2,), Ks=(1, 2))


def test_ecm_points_match_the_variance_model():
    # sigma_b2 = 1, sigma_w2 = 4, c_out / c_in = 4: K* = sqrt(4 * 4) = 4, reuse ECM = (1 + 4)(4 + 1) / ((1 + 1)(4 + 4)).
    p = ecm_points(4.0, 1.0, {"s": {"sigma_b2": 1.0, "sigma_w2": 4.0, "sigma_w2_is": 1.0}})["s"]
    assert p["K_reuse"] == 4 and p["k_star_continuous"] == pytest.approx(4.0)
    assert p["ecm_reuse"] == pytest.approx(25 / 16)
    # IS within variance 1: K* = 2, W = (1 + 1/2)(4 + 2) = 9 against the baseline's 25.
    assert p["K_carv"] == 2 and p["ecm_carv"] == pytest.approx(25 / 9)
    # c_0 at fixed batch N = 1 adds to the outer cost: K* = sqrt(4 * (4 + 5))
    assert ecm_points(4.0, 1.0, {"s": {"sigma_b2": 1.0, "sigma_w2": 4.0, "sigma_w2_is": 1.0}}, c_0=5.0)["s"][
        "k_star_continuous"
    ] == pytest.approx(6.0)


def test_extrapolation_scales_the_network_slopes_by_their_flop_ratios():
    fits = {
        "all": {"c_0": 0.5, "c_out": 3.0, "c_in": 2.0},
        "render": {"c_0": 0.1, "c_out": 1.0, "c_in": 0.0},
        "vae": {"c_0": 0.2, "c_out": 2.0, "c_in": 0.0},
        "unet": {"c_0": 0.2, "c_out": 0.0, "c_in": 2.0},
    }
    ex = extrapolate(
        {"fits": fits}, {"vae_encode_fwd_bwd": 1.0, "unet_cfg": 2.0}, {"vae_encode_fwd_bwd": 10.0, "unet_cfg": 100.0}
    )
    assert ex["c_out"] == pytest.approx(1.0 + 10 * 2.0) and ex["c_in"] == pytest.approx(50 * 2.0)
    assert ex["c_0"] == 0.5


def test_shipped_sigmas_read_bench_json():
    bench = {
        "sweep": {"curve": {"pooled": {"sigma_b2": 1.0, "sigma_w2": 2.0, "sigma_w2_is": 1.5}}},
        "ablation": [
            {
                "workload": "w",
                "checkpoints": [{"pilot": {"sigma_b2": 3.0, "sigma_w2": 4.0, "sigma_w2_is": 5.0, "x": 0}}],
            }
        ],
    }
    assert shipped_sigmas(bench) == {
        "sds3d_sweep_pooled": {"sigma_b2": 1.0, "sigma_w2": 2.0, "sigma_w2_is": 1.5},
        "w_pilot": {"sigma_b2": 3.0, "sigma_w2": 4.0, "sigma_w2_is": 5.0},
    }


@pytest.mark.slow
def test_measure_costs_fits_positive_costs_on_a_tiny_grid():
    s = RealScaleSettings(width_scale=16, resolution=64, samples_per_ray=4, grid_size=8, Ns=(1, 2), Ks=(1, 2), reps=1)
    r = measure_costs(s)
    assert len(r["steps"]) == 4
    for name in ("all", "render", "vae", "unet"):
        assert all(math.isfinite(v) and v >= 0 for v in r["fits"][name].values())
    # A step costs something; each slope's sign is timing, which a loaded machine can flatten to 0.
    assert sum(r["fits"]["all"].values()) > 0
    assert r["fits"]["render"]["c_in"] == 0 and r["fits"]["unet"]["c_out"] == 0  # other stages fitted out

"""CUDA paths: run only where a GPU is present (CI has none; the device machine runs them)."""

import pytest
import torch

from carv_adapt import AdaptiveController
from carv_adapt.memory import measure_inner_bytes
from carv_adapt.stats.costs import StageTimer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _controller(**kw):
    return AdaptiveController(num_timesteps=100, num_bins=10, batch_size=3, warmup_steps=2, refit_every=2, **kw)


def test_plan_noise_is_bit_identical_on_cuda():
    plan = _controller().plan()
    cpu = plan.noise((4, 5))
    assert torch.equal(plan.noise((4, 5), device="cuda").cpu(), cpu)


def test_observe_on_cuda_matches_cpu_statistics():
    a, b = _controller(seed=3), _controller(seed=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        pa, pb = a.plan(), b.plan()
        f = torch.randn(pa.N, pa.K, 7, generator=g)
        a.observe(pa, f, costs={"upstream": 0.01, "teacher": 0.002})
        b.observe(pb, f.cuda(), costs={"upstream": 0.01, "teacher": 0.002})
        a.step()
        b.step()
    sa, sb = a.state_dict(), b.state_dict()
    for name in ("profile", "grouped"):
        for k, v in sa[name].items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(sb[name][k].cpu(), v, rtol=1e-5, atol=1e-6)
    assert a.K == b.K
    torch.testing.assert_close(a.proposal.pmf(), b.proposal.pmf(), rtol=1e-5, atol=1e-9)


def test_measure_inner_bytes_differences_out_fixed_buffers():
    fixed = torch.empty(1 << 20, device="cuda")  # noqa: F841 - a buffer that must not count
    per_draw = 256 * 1024  # float32 elements: 1 MiB per inner draw

    def run_inner(k: int) -> float:
        x = torch.ones(k, per_draw, device="cuda")
        return float(x.sum())

    b = measure_inner_bytes(run_inner, "cuda")
    assert abs(b - 4 * per_draw) <= 4096


def test_stage_timer_cuda_events_match_wall_time():
    import time

    t = StageTimer("cuda")
    assert t.uses_cuda_events
    x = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with t:
        for _ in range(20):
            x = x @ x / 4096
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    assert 0 < t.seconds() <= wall * 1.05


def test_tiny_teacher_runs_on_cuda_like_cpu():
    from carv_adapt.teachers.diffusers_teacher import DiffusersTeacher
    from carv_adapt.teachers.tiny import NULL_CLASS, load_tiny_teacher

    # cuDNN convolutions default to TF32 (10-bit mantissa); compare in full float32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for dev in ("cpu", "cuda"):
        b = load_tiny_teacher(device=dev)
        teacher = DiffusersTeacher(b.unet, b.scheduler, b.vae, guidance_scale=3.0, null_class=NULL_CLASS)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([100, 700])
        out[dev] = teacher.predict_eps(x.to(dev), t, cond=torch.tensor([3, 5]))
        assert out[dev].device.type == dev
    try:
        torch.testing.assert_close(out["cuda"].cpu(), out["cpu"], rtol=1e-4, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_real_scale_costs_fp16_on_cuda():
    from carv_adapt.bench.real_scale import RealScaleSettings, measure_costs

    s = RealScaleSettings(
        device="cuda", dtype="float16", width_scale=1, samples_per_ray=16, Ns=(1, 2), Ks=(1, 2), reps=1
    )
    r = measure_costs(s)
    fit = r["fits"]["all"]
    assert fit["c_out"] > 0 and fit["c_in"] > 0
    assert all(v > 0 for row in r["steps"] for v in row["stages"].values())

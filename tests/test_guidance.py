"""ScoreDistillation on a tiny random Stable-Diffusion-shaped pipeline (built in code; CPU, seconds)."""

import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402

from carv_adapt.errors import ConfigError, ShapeError  # noqa: E402
from carv_adapt.guidance import ScoreDistillation, sds_weighting  # noqa: E402
from carv_adapt.plan import Plan, make_plan  # noqa: E402
from carv_adapt.proposals import TargetMeasure, UniformProposal, WeightedProposal  # noqa: E402
from carv_adapt.teachers.sd_tiny import make_pipeline  # noqa: E402
from tests.sd_helpers import tiny_sd_parts  # noqa: E402

PROMPT = "a photo of the digit three"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_sd_parts(tmp_path_factory.mktemp("tok"))


def _plan(N, K, t, seed=3, rho=None):
    t = torch.as_tensor(t, dtype=torch.long).reshape(N, K)
    rho = torch.ones(N, K, dtype=torch.float64) if rho is None else rho
    return Plan(step=0, N=N, K=K, t=t, rho=rho, noise_seed=seed)


def _latents(n, seed=1):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_matches_the_schedulers_own_step(parts, prediction_type):
    sched = DDPMScheduler.from_config(parts["scheduler"].config, prediction_type=prediction_type)
    sds = ScoreDistillation(
        parts["unet"], sched, text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], prompt=PROMPT,
        guidance_scale=1.0, weighting="uniform",
    )  # fmt: skip
    plan = _plan(2, 3, [[10, 400, 990], [250, 600, 999]])
    x0 = _latents(2)
    f = sds.contributions(x0, plan)
    eps = plan.noise(x0.shape[1:])
    # Reference: the scheduler noises, the raw UNet output goes through DDPMScheduler.step's own x0 formula,
    # and epsilon follows from x_t = alpha x0 + sigma eps.
    for n in range(2):
        for k in range(3):
            t = int(plan.t[n, k])
            x_t = sched.add_noise(x0[n : n + 1], eps[n, k : k + 1], torch.tensor([t]))
            with torch.no_grad():
                raw = parts["unet"](x_t, t, encoder_hidden_states=sds.prompt_embeds).sample
            x0_hat = sched.step(raw, t, x_t).pred_original_sample
            abar = sched.alphas_cumprod[t]
            eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
            torch.testing.assert_close(f[n, k], (eps_hat - eps[n, k : k + 1])[0], rtol=1e-4, atol=2e-4)
    if prediction_type == "v_prediction":  # and the velocity target is the scheduler's get_velocity
        t = plan.t[0]
        x_t = sched.add_noise(x0[:1].expand(3, -1, -1, -1), eps[0], t)
        a, s = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1), (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        v = sched.get_velocity(x0[:1].expand(3, -1, -1, -1), eps[0], t)
        torch.testing.assert_close(a * v + s * x_t, eps[0], rtol=1e-4, atol=1e-5)


def test_cfg_is_cond_plus_scale_times_difference_in_one_batched_call(parts):
    kw = dict(text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], prompt=PROMPT, weighting="sds")
    plan = _plan(2, 2, [[30, 500], [700, 950]])
    x0 = _latents(2)
    f_u = ScoreDistillation(parts["unet"], parts["scheduler"], guidance_scale=0.0, **kw).contributions(x0, plan)
    f_c = ScoreDistillation(parts["unet"], parts["scheduler"], guidance_scale=1.0, **kw).contributions(x0, plan)
    sds = ScoreDistillation(parts["unet"], parts["scheduler"], guidance_scale=7.5, **kw)
    calls = []
    hook = parts["unet"].register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    try:
        f_s = sds.contributions(x0, plan)
        assert calls == [2 * 2 * 2]  # N K rows, doubled for cond + uncond, in one UNet call
        calls.clear()
        capped = ScoreDistillation(parts["unet"], parts["scheduler"], guidance_scale=7.5, max_teacher_batch=3, **kw)
        f_capped = capped.contributions(x0, plan)
        assert calls == [3, 3, 2]
    finally:
        hook.remove()
    assert not torch.equal(f_u, f_c)
    torch.testing.assert_close(f_s, f_u + 7.5 * (f_c - f_u), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f_capped, f_s, rtol=1e-5, atol=1e-5)


def test_weighting_options(parts):
    abar = parts["scheduler"].alphas_cumprod.double()
    torch.testing.assert_close(sds_weighting(abar, "sds"), 1 - abar)
    torch.testing.assert_close(sds_weighting(abar, "uniform"), torch.ones_like(abar))
    torch.testing.assert_close(sds_weighting(abar, "sigma"), (1 - abar).sqrt())
    torch.testing.assert_close(sds_weighting(abar, lambda a: a), abar)
    with pytest.raises(ConfigError, match="'snr'"):
        sds_weighting(abar, "snr")
    with pytest.raises(ShapeError, match=r"\(3,\)"):
        sds_weighting(abar, torch.ones(3))


def test_loss_gradient_is_the_rho_weighted_estimate_through_the_vae(parts):
    sds = ScoreDistillation.from_pipeline(make_pipeline(**parts), PROMPT, guidance_scale=5.0)
    plan = _plan(2, 2, [[100, 800], [300, 999]], rho=torch.tensor([[0.5, 2.0], [1.5, 0.25]], dtype=torch.float64))
    images = torch.rand(2, 1, 16, 16, requires_grad=True)
    out = sds(plan, images=images)
    assert out.contributions.shape == (2, 2, 4, 8, 8) and out.contributions.dtype == torch.float32
    expect = (plan.rho.float()[..., None, None, None] * out.contributions).sum(1) / 4
    torch.testing.assert_close(out.grad, expect)
    out.loss.backward()
    x = images.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(sds.encode(x), x, out.grad)
    torch.testing.assert_close(images.grad, ref)
    with pytest.raises(ShapeError, match=r"N x 1 x H x W"):
        sds(plan, images=torch.rand(2, 3, 16, 16))
    with pytest.raises(ConfigError, match="exactly one"):
        sds(plan)


@pytest.mark.slow
def test_sds_gradient_is_unbiased_against_a_k1_reference(parts):
    """K = 4 under a skewed IS proposal with stratified timesteps vs. K = 1 uniform i.i.d.: the same mean
    (|z| < 4); the estimate without rho is visibly biased (the test has power)."""
    sds = ScoreDistillation(
        parts["unet"], parts["scheduler"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        prompt=PROMPT, guidance_scale=3.0,
    )  # fmt: skip
    target = TargetMeasure(1000, t_min=20, t_max=980)
    t_axis = torch.arange(1000, dtype=torch.float64)
    skewed = WeightedProposal(target, (1 + t_axis / 25) ** 3)
    x = _latents(1, seed=7)

    def rows(proposal, R, K, seed, stratification):
        # R replicates as R outer draws of the same latent: each row is one K-draw estimate.
        plan = make_plan(proposal, R, K, torch.Generator().manual_seed(seed), stratification=stratification)
        return plan, sds.contributions(x.expand(R, -1, -1, -1), plan).double()

    # Project on the mean contribution of a pilot (another seed): a direction along which E[f | t] moves with t.
    _, pilot = rows(UniformProposal(target), 200, 1, 99, "iid")
    u = pilot.mean(dim=(0, 1))

    def z_to_reference(plan, f, rho):
        est = ((rho[..., None, None, None] * f).mean(1) * u).sum(dim=(1, 2, 3))
        return float((est.mean() - ref.mean()) / math.sqrt(est.var() / len(est) + ref.var() / len(ref)))

    plan, f = rows(UniformProposal(target), 1500, 1, 0, "iid")
    ref = (f[:, 0] * u).sum(dim=(1, 2, 3))
    plan, f = rows(skewed, 300, 4, 1, "stratified")
    z = z_to_reference(plan, f, plan.rho)
    assert abs(z) < 4, z
    z_bias = z_to_reference(plan, f, torch.ones_like(plan.rho))
    assert abs(z_bias) > 4, z_bias


def test_half_precision_teacher_keeps_float32_statistics(parts):
    kw = dict(text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], prompt=PROMPT, guidance_scale=4.0)
    plan = _plan(1, 3, [[50, 500, 900]])
    x0 = _latents(1)
    f32 = ScoreDistillation(parts["unet"], parts["scheduler"], **kw).contributions(x0, plan)
    unet16 = UNet2DConditionModel.from_config(parts["unet"].config)
    unet16.load_state_dict(parts["unet"].state_dict())
    sds16 = ScoreDistillation(unet16.to(torch.bfloat16), parts["scheduler"], **kw)
    assert sds16.prompt_embeds.dtype == torch.bfloat16
    f16 = sds16.contributions(x0, plan)
    assert f16.dtype == torch.float32
    assert float((f16 - f32).norm() / f32.norm()) < 0.05


def test_loads_through_stable_diffusion_pipeline_from_a_local_folder_offline(parts, tmp_path, monkeypatch):
    make_pipeline(**parts).save_pretrained(tmp_path / "pipe")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe", safety_checker=None, local_files_only=True)
    plan = _plan(1, 2, [[100, 900]])
    f_disk = ScoreDistillation.from_pipeline(pipe, PROMPT).contributions(_latents(1), plan)
    f_mem = ScoreDistillation.from_pipeline(make_pipeline(**parts), PROMPT).contributions(_latents(1), plan)
    torch.testing.assert_close(f_disk, f_mem)


def test_bad_inputs_are_one_line_errors_naming_the_value(parts):
    unet, sched, te, tok = parts["unet"], parts["scheduler"], parts["text_encoder"], parts["tokenizer"]
    no_text = make_pipeline(**{**parts, "text_encoder": None})
    with pytest.raises(ConfigError, match="no text_encoder.*prompt_embeds=") as e1:
        ScoreDistillation.from_pipeline(no_text, PROMPT)
    with pytest.raises(ShapeError, match=r"\(1, 5, 32\).*\(1, 8, 32\)") as e2:
        ScoreDistillation(unet, sched, prompt_embeds=torch.zeros(8, 32), negative_prompt_embeds=torch.zeros(5, 32))
    with pytest.raises(ShapeError, match=r"\(1, 8, 16\).*L x 32") as e3:
        ScoreDistillation(unet, sched, prompt_embeds=torch.zeros(8, 16), guidance_scale=1.0)
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ConfigError, match="FlowMatchEulerDiscreteScheduler has no alphas_cumprod") as e4:
        ScoreDistillation(unet, FlowMatchEulerDiscreteScheduler(), text_encoder=te, tokenizer=tok, prompt=PROMPT)
    with pytest.raises(ConfigError, match="guidance_scale.*-1.0") as e5:
        ScoreDistillation(unet, sched, text_encoder=te, tokenizer=tok, prompt=PROMPT, guidance_scale=-1.0)
    with pytest.raises(ShapeError, match="3 rows") as e6:
        s = ScoreDistillation(unet, sched, prompt_embeds=torch.zeros(3, 8, 32), guidance_scale=1.0)
        s.contributions(_latents(2), _plan(2, 1, [[5], [6]]))
    for e in (e1, e2, e3, e4, e5, e6):
        assert "\n" not in str(e.value)
    # Per-outer-draw prompts (e.g. view-dependent text) are one row each.
    s = ScoreDistillation(unet, sched, prompt_embeds=torch.zeros(2, 8, 32), guidance_scale=1.0)
    assert s.contributions(_latents(2), _plan(2, 1, [[5], [6]])).shape == (2, 1, 4, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_teacher_matches_cpu(parts):
    kw = dict(text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], prompt=PROMPT, guidance_scale=4.0)
    plan = _plan(2, 2, [[50, 500], [700, 900]])
    f_cpu = ScoreDistillation(parts["unet"], parts["scheduler"], **kw).contributions(_latents(2), plan)
    unet = UNet2DConditionModel.from_config(parts["unet"].config)
    unet.load_state_dict(parts["unet"].state_dict())
    sds = ScoreDistillation(unet.to("cuda", torch.float16), parts["scheduler"], **kw)
    f = sds.contributions(_latents(2).cuda(), plan)
    assert f.device.type == "cuda" and f.dtype == torch.float32
    assert float((f.cpu() - f_cpu).norm() / f_cpu.norm()) < 0.02


def test_a_control_variate_rides_along_on_the_same_draws(parts):
    from carv_adapt import AdaptiveController
    from carv_adapt.control_variate import with_coefficients
    from carv_adapt.teachers.surrogate import GaussianSurrogate

    base = ScoreDistillation(
        parts["unet"], parts["scheduler"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        prompt=PROMPT, guidance_scale=1.0,
    )  # fmt: skip
    cv = GaussianSurrogate.fit(_latents(64, seed=5), None, base.teacher.alphas_cumprod, weight=base.weight)
    sds = ScoreDistillation(
        parts["unet"], parts["scheduler"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        prompt=PROMPT, guidance_scale=1.0, control_variate=cv,
    )  # fmt: skip
    edges = torch.tensor([0, 500, 1000])
    plan = with_coefficients(_plan(2, 3, [[10, 400, 990], [250, 600, 999]]), torch.tensor([0.5, 0.9]), edges)
    x = _latents(2)
    out = sds(plan, latents=x)
    f = base.contributions(x, plan)
    torch.testing.assert_close(out.contributions, f)  # observe() gets the raw f and applies the control itself
    g, mu = cv.evaluate(x, plan.t, plan.noise(x.shape[1:]))
    torch.testing.assert_close(out.control[0], g.float())
    beta = torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.9, 0.9]]).reshape(2, 3, 1, 1, 1)
    torch.testing.assert_close(out.grad, (f - beta * (g - mu)).mean(dim=1) / 2, rtol=1e-5, atol=1e-6)
    assert sds(_plan(2, 3, [[10, 400, 990], [250, 600, 999]]), latents=x).grad.allclose(f.mean(dim=1) / 2)

    ctrl = AdaptiveController(batch_size=2, t_min=20, t_max=980, warmup_steps=2, refit_every=2, seed=0)
    for _ in range(4):
        p = ctrl.plan()
        o = sds(p, latents=_latents(2, seed=p.step), timer=ctrl.timer)
        ctrl.observe(p, o.contributions, control=o.control)
        ctrl.step()
    assert "surrogate" in ctrl.costs.roles and "cv_beta" in ctrl.history[-1].extra
